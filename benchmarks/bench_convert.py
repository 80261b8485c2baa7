"""Benchmark of the middle-slice conversion (issue 3): a naive reference against `lsdc convert`.

    python benchmarks/bench_convert.py [--data DIR] [--n-train 60] [--image-size 512] [--workers N]
    python benchmarks/bench_convert.py --rerun [--data DIR] [--n-train 2000] [--image-size 64] [--workers N]

On a synthetic data set (`lsdc.synth.make_synthetic`, 60 studies x 2 sagittal series of 15-20 slices of 512 x 512
by default; written to a temporary folder unless --data names one, which is created if needed and reused after)
it times, with every file already in the OS page cache:
  (a) the naive reference: one series after another, read every slice with its pixels, sort by InstanceNumber,
      take the middle, normalise it (the method's 8-bit conversion), resize and write the PNG;
  (b) `lsdc.dicom.convert_dataset`, the function behind `lsdc convert` (fresh output each time),
      with process workers (the default) and with thread workers;
  (c) the lower bound: decoding only the middle file of each series, one after another;
  (d) the running step alone on the same planned jobs: `lsdc.dicom.run_jobs` (fastcore.parallel.parallel) against the
      concurrent.futures pool it replaced (`former_pool_run` below), with processes and with threads;
  (e) the header readers on every file: `read_header` (the hand-written raw-byte reader) against
      `pydicom.dcmread(stop_before_pixels=True, specific_tags=...)` (`lsdc.dicom._pydicom_header`), in headers/s, and a
      serial conversion end to end with each;
(a) and (b) run interleaved, best of --repeats (naive: of --naive-repeats), so a burst of load from other programs on a
shared machine does not favour one of them; (d) and (e) interleave their variants the same way, best of --repeats;
and the `lsdc convert` command end to end (including Python start-up and imports), for information.
It checks that (a) and (b) write the same pixels wherever they pick the same slice, prints series per second and,
as its last line, `convert speedup vs naive: <ratio>x` (processes against the naive reference).

With --rerun it times instead what resuming costs (issue 13): the first conversion of the data set, then a rerun of
that complete conversion (nothing to convert; every PNG is read and its CRCs checked, every source folder
fingerprinted), best of --repeats, through `convert_dataset` and through `lsdc convert` end to end; for comparison
the same rerun with the resume check before fingerprints (same options and the same number of files), and the parts
on their own: reading the PNG descriptions, fingerprinting every series, and only listing the series folders.
The page cache is warm (the first conversion read the files); a cold cache after a reboot costs more.
"""
import argparse, multiprocessing, os, shutil, subprocess, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pydicom

from lsdc.core import SAGITTAL
from lsdc.data import load_rsna, series_table
import lsdc.dicom
from lsdc.dicom import (ConvertOptions, _convert_job, _pydicom_header, convert_dataset, plan_conversion, read_header, run_jobs,
                        source_fingerprint)
from lsdc.png import png_info


def naive_convert(folder: Path, dest: Path, size: int = 256):
    "The reference way: decode every slice, sort by InstanceNumber, keep the middle one"
    dss = [pydicom.dcmread(f) for f in sorted(folder.glob('*.dcm'))]
    slices = sorted(((int(d.InstanceNumber), d.pixel_array, d) for d in dss), key=lambda t: t[0])
    inst, img, ds = slices[len(slices) // 2]
    img = img.astype(np.float64) * float(ds.get('RescaleSlope', 1)) + float(ds.get('RescaleIntercept', 0))
    img = np.clip(img, np.percentile(img, 1), np.percentile(img, 99))
    img = img - img.min()
    img = (img / img.max() * 255).astype(np.uint8) if img.max() > 0 else np.zeros(img.shape, np.uint8)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    dest.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dest), img)
    return inst


def former_pool_run(jobs, n_workers, parallel):
    "The running step before fastcore.parallel: a concurrent.futures pool (fork) over chunks of jobs"
    if n_workers <= 1 or len(jobs) < 4: return [_convert_job(j) for j in jobs]
    chunk = max(1, min(8, len(jobs) // (4 * n_workers)))
    ctx = multiprocessing.get_context('fork') if 'fork' in multiprocessing.get_all_start_methods() else None
    ex = ThreadPoolExecutor(n_workers) if parallel == 'thread' else ProcessPoolExecutor(n_workers, mp_context=ctx)
    try: return [r for batch in ex.map(_convert_batch, [jobs[i:i+chunk] for i in range(0, len(jobs), chunk)]) for r in batch]
    finally: ex.shutdown(cancel_futures=True)

def _convert_batch(jobs): return [_convert_job(j) for j in jobs]


def timed(f):
    t0 = time.perf_counter(); res = f(); return time.perf_counter() - t0, res


def count_only_why(png, folder, params):
    "The resume check before source fingerprints (`lsdc.dicom._why` up to issue 13): same options, same number of files"
    info = png_info(png)
    if info is None or info.get('params') != params: return 'damaged', None
    try: n = sum(1 for e in os.scandir(folder) if e.is_file() and not e.name.startswith('.'))
    except OSError: return 'source', None
    return (None, info) if n == info.get('n_files') else ('source', None)


def bench_rerun(d, data: Path, tmp: Path, workers: int, repeats: int):
    "Time a first conversion, then reruns of the complete conversion with and without source fingerprints"
    table = series_table(d, 'train', SAGITTAL)
    n_files = sum(len(os.listdir(f)) for f in table.folder)
    print(f'data: {table.study_id.nunique()} studies, {len(table)} sagittal series, {n_files} DICOM files in them; '
          f'{workers} workers, load average {os.getloadavg()[0]:.1f} at start')
    out = tmp/'out'
    t, idx = timed(lambda: convert_dataset(d, out, progress=False, n_workers=workers))
    assert idx.attrs['converted'] == len(table) and idx.attrs['failed'] == 0, idx.attrs
    print(f'first conversion:                              {t:7.2f} s  ({len(table) / t:.0f} series/s)')
    def rerun():
        idx = convert_dataset(d, out, progress=False, n_workers=workers)
        assert idx.attrs['skipped'] == len(table) and idx.attrs['converted'] == 0, idx.attrs
    times = {'fingerprints': [], 'count only': []}
    for _ in range(repeats):
        times['fingerprints'].append(timed(rerun)[0])
        with mock.patch.object(lsdc.dicom, '_why', count_only_why): times['count only'].append(timed(rerun)[0])
    (a, b) = min(times['fingerprints']), min(times['count only'])
    print(f'complete rerun, with source fingerprints:      {a:7.2f} s  (best of {repeats}: {", ".join(f"{x:.2f}" for x in times["fingerprints"])})')
    print(f'complete rerun, file counts only (before):     {b:7.2f} s  (best of {repeats}: {", ".join(f"{x:.2f}" for x in times["count only"])})')
    print(f'  the fingerprints add {a - b:.2f} s ({(a - b) / n_files * 1e6:.1f} us per DICOM file)')
    pngs = [out/f'{r.study_id}/{r.series_id}.png' for r in table.itertuples()]
    t_png = min(timed(lambda: [png_info(p) for p in pngs])[0] for _ in range(repeats))
    t_fp = min(timed(lambda: [source_fingerprint(f) for f in table.folder])[0] for _ in range(repeats))
    t_ls = min(timed(lambda: [os.listdir(f) for f in table.folder])[0] for _ in range(repeats))
    mb = sum(p.stat().st_size for p in pngs) / 2**20
    print(f'  parts: reading and CRC-checking {len(pngs)} PNGs ({mb:.1f} MiB) {t_png:.2f} s, fingerprinting {len(table)} '
          f'series {t_fp:.2f} s, listing their folders only {t_ls:.2f} s')
    t_cli, r = timed(lambda: subprocess.run(['lsdc', 'convert', str(data), str(out), '--quiet'], capture_output=True, text=True))
    print(f'`lsdc convert` complete rerun end to end (with start-up, imports, reading the CSVs): {t_cli:.2f} s  [{r.stdout.strip()}]')
    print(f'load average {os.getloadavg()[0]:.1f} at the end')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', help='synthetic data folder to (create and) use; default: a temporary folder')
    ap.add_argument('--n-train', type=int, default=60)
    ap.add_argument('--image-size', type=int, default=512)
    ap.add_argument('--workers', type=int, default=None, help='workers for convert_dataset (default: one per core)')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--naive-repeats', type=int, default=2)
    ap.add_argument('--rerun', action='store_true', help='time the rerun of a complete conversion instead (issue 13)')
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix='bench_convert_'))
    data = Path(args.data) if args.data else tmp/'data'
    try:
        if not (data/'train.csv').exists():
            from lsdc.synth import make_synthetic
            t, _ = timed(lambda: make_synthetic(data, n_train=args.n_train, n_test=0, image_size=args.image_size))
            print(f'generated {args.n_train} synthetic studies ({args.image_size} px) in {t:.1f} s -> {data}')
        d = load_rsna(data, splits=('train',), check_images=False)
        if args.rerun:
            return bench_rerun(d, data, tmp, workers=args.workers or len(os.sched_getaffinity(0)), repeats=args.repeats)
        table = series_table(d, 'train', SAGITTAL)
        files = [f for folder in table.folder for f in sorted(Path(folder).glob('*.dcm'))]
        mb = sum(f.stat().st_size for f in files) / 2**20
        for f in files: f.read_bytes()  # everyone starts from the page cache
        n = len(table)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
        workers = args.workers or cores
        print(f'data: {table.study_id.nunique()} studies, {n} sagittal series, {len(files)} DICOM files ({mb:.1f} MiB), '
              f'{min(len(list(Path(f).glob("*.dcm"))) for f in table.folder)}-{max(len(list(Path(f).glob("*.dcm"))) for f in table.folder)} slices per series; '
              f'{cores} CPU cores, {workers} workers, load average {os.getloadavg()[0]:.1f} at start')

        # (a) naive reference and (b) convert_dataset with processes and threads, interleaved so that a burst of load
        # from other programs on a shared machine hits all of them; best of `repeats` (naive: of `naive_repeats`)
        times = {'naive': [], 'process': [], 'thread': []}
        for i in range(args.repeats):
            if i < args.naive_repeats:
                t, naive_inst = timed(lambda: [naive_convert(Path(r.folder), tmp/f'naive{i}'/f'{r.study_id}/{r.series_id}.png') for r in table.itertuples()])
                times['naive'].append(t)
            for parallel in ('process', 'thread'):
                t, idx = timed(lambda: convert_dataset(d, tmp/f'{parallel}{i}', progress=False, n_workers=workers, parallel=parallel, resume=False))
                assert idx.attrs['failed'] == 0 and len(idx) == n, idx.attrs
                times[parallel].append(t)
        best = {k: min(v) for k, v in times.items()}
        t_naive = best['naive']
        runs = lambda k: f'(best of {len(times[k])}: {", ".join(f"{x:.2f}" for x in times[k])} s)'
        print(f'naive reference (every slice decoded, serial): {t_naive:6.2f} s  {n / t_naive:7.1f} series/s {runs("naive")}')
        for parallel in ('process', 'thread'):
            print(f'convert_dataset, {workers} {parallel} workers: {best[parallel]:6.2f} s  {n / best[parallel]:7.1f} series/s {runs(parallel)}')
        print(f'processes vs threads: processes are {best["thread"] / best["process"]:.2f}x as fast as threads')
        t_serial, _ = timed(lambda: convert_dataset(d, tmp/'serial', progress=False, n_workers=1, resume=False))
        print(f'convert_dataset, serial (1 worker):       {t_serial:6.2f} s  {n / t_serial:7.1f} series/s')

        # (d) the running step alone, same planned jobs: fastcore.parallel (run_jobs) against the former pool
        runners = {'fastcore.parallel': lambda jobs, p: run_jobs(jobs, n_workers=workers, parallel=p),
                   'former pool': lambda jobs, p: former_pool_run(jobs, workers, p)}
        run_times = {(k, p): [] for k in runners for p in ('process', 'thread')}
        for i in range(args.repeats):
            for (k, p) in run_times:
                jobs = plan_conversion(table, tmp/f'run_{k}_{p}{i}'.replace(' ', '_'), opts=ConvertOptions(), resume=False).jobs
                t, res = timed(lambda: runners[k](jobs, p))
                assert len(res) == n and all(r.failure is None for r in res)
                run_times[(k, p)].append(t)
        for p in ('process', 'thread'):
            a, b = min(run_times[('fastcore.parallel', p)]), min(run_times[('former pool', p)])
            print(f'running step, {workers} {p} workers: fastcore.parallel {a:6.2f} s ({n / a:6.1f} series/s), '
                  f'former pool {b:6.2f} s ({n / b:6.1f} series/s): fastcore.parallel is {b / a:.2f}x as fast')

        # (e) header readers: the raw-byte reader (`read_header`) against pydicom with specific_tags, on the same files
        assert all(read_header(f) == _pydicom_header(f) for f in files)
        hdr = {'raw-byte read_header': [], 'pydicom specific_tags': []}
        conv = {'raw-byte read_header': [], 'pydicom specific_tags': []}
        for i in range(args.repeats):
            for k, reader in (('raw-byte read_header', read_header), ('pydicom specific_tags', _pydicom_header)):
                hdr[k].append(timed(lambda: [reader(f) for f in files])[0])
                with mock.patch.object(lsdc.dicom, 'read_header', reader):
                    conv[k].append(timed(lambda: convert_dataset(d, tmp/f'hdr{i}', progress=False, n_workers=1, resume=False))[0])
        (fa, pa), (fc, pc) = [(min(x['raw-byte read_header']), min(x['pydicom specific_tags'])) for x in (hdr, conv)]
        print(f'headers, {len(files)} files: raw-byte read_header {len(files) / fa:7.0f} headers/s, '
              f'pydicom specific_tags {len(files) / pa:7.0f} headers/s: raw-byte is {pa / fa:.1f}x as fast')
        print(f'serial conversion (1 worker) with each reader: raw-byte {n / fc:6.1f} series/s, pydicom specific_tags '
              f'{n / pc:6.1f} series/s: raw-byte is {pc / fc:.2f}x as fast end to end')

        # (c) lower bound: decode the middle files only
        side = [png_info(tmp/'process0'/f'{r.study_id}/{r.series_id}.png') for r in table.itertuples()]
        mids = [Path(r.folder)/s['file'] for r, s in zip(table.itertuples(), side)]
        t_low, _ = timed(lambda: [pydicom.dcmread(f).pixel_array for f in mids])
        print(f'lower bound, decode the middle files only (serial): {t_low:6.2f} s  {n / t_low:7.1f} series/s')

        # the command line, end to end
        t_cli, r = timed(lambda: subprocess.run(['lsdc', 'convert', str(data), str(tmp/'cli'), '--quiet'] +
                                                 (['--workers', str(args.workers)] if args.workers else []), capture_output=True, text=True))
        print(f'`lsdc convert` end to end (with start-up and imports): {t_cli:6.2f} s  {n / t_cli:7.1f} series/s  [{r.stdout.strip()}]')

        # same PNGs where the slice orders agree
        same = differ = other = 0
        for r, s, inst in zip(table.itertuples(), side, naive_inst):
            if s['instance_number'] != inst: other += 1; continue
            a = cv2.imread(str(tmp/'naive0'/f'{r.study_id}/{r.series_id}.png'), cv2.IMREAD_UNCHANGED)
            b = cv2.imread(str(tmp/'process0'/f'{r.study_id}/{r.series_id}.png'), cv2.IMREAD_UNCHANGED)
            if np.array_equal(a, b): same += 1
            else: differ += 1
        print(f'PNG check: {same} identical, {differ} different where both pick the same slice; '
              f'{other} series where InstanceNumber order and spatial order pick different slices')
        if differ: print('PNG CHECK FAILED'); sys.exit(1)
        print(f'load average {os.getloadavg()[0]:.1f} at the end')
        print(f'convert speedup vs naive: {t_naive / best["process"]:.1f}x')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
