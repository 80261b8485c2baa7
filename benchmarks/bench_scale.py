"""The levels method at RSNA size on the machine at hand (issue 23): time, memory and disk per stage, and projections.

    python benchmarks/bench_scale.py [--n-train 2000] [--sample 12] [--size 256] [--image-size 384] [--bs 64]
                                     [--batches 4] [--jobs 2] [--reports RUN] [--root DIR] [--only STAGES]

No machine of ours can run the whole method at the `FULL` sizes (2,000 studies, ResNet34 on 256 px crops) on its
CPUs, so each stage runs on as much as it needs to be measured, in a fresh process of its own, and the full run is
projected from the measured rates:
  - synth, convert, levels (the localizer, the axial slice selector and the training crops, each for one epoch) run
    on --sample studies at the `FULL` image and crop sizes; a stage's time at --n-train studies is its time per study
    times --n-train (the localizer and slice selector also times their `FULL` epochs, 15 and 12). These stages are
    linear in the studies; the projection ignores what is fixed per run (imports, model set-up), so it errs high for
    small samples.
  - cache: the image cache of --n-train studies' crops (25 columns, an annotated and a located crop each, --size px,
    3 channels) laid out as `lsdc.cache` lays it out. Only the rows of the columns trained below are written (with
    the sample's crops, repeated); the rest of the file is a hole (a sparse file), so its size on disk is what was
    written, not the 20 GB that the full cache takes. Its full size is printed.
  - train: --jobs columns trained at once, each in a worker process of its own (as `train_columns(jobs=...)` does),
    each learner reading its batches from that cache, with `FULL`'s architecture, size and batch size: lr_find of 3
    iterations, then one epoch of --batches training batches and the whole validation (the first model kept), then
    the validation of the model kept. Each worker reports its peak resident memory (the CPU also holds the activations that a GPU run keeps on
    the GPU: the figure errs high for a GPU run) and the measured seconds per training batch; a full column is
    projected as that rate times the batches of its 4-epoch first model and its validation.
  - reports (with --reports RUN, a finished `lsdc demo` output folder): the reports of up to 10 of its test studies,
    written twice in the same process, and the time per study of the second, split into reading the inputs, Grad-CAM
    and writing the pages.
Each stage prints its time (and its wall time with the process's start and imports), the peak resident memory of its main process and of its largest worker process, and
the disk it wrote. The last lines are `peak worker memory at RSNA size: <GB>` and `reports: <s> per study`.
"""
import argparse, json, os, platform, resource, shutil, subprocess, sys, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)

COLUMNS = ('spinal_canal_stenosis_l4_l5', 'left_neural_foraminal_narrowing_l4_l5', 'right_subarticular_stenosis_l4_l5',
           'spinal_canal_stenosis_l3_l4')   # the columns trained (one per worker)
FULL_LOC_EPOCHS, FULL_AXIAL_EPOCHS, FULL_FOLDS, FULL_FIRST_EPOCHS = 15, 12, 5, 4


def du(p:Path) -> int:
    "Bytes a folder takes on disk (allocated blocks: a sparse file counts what was written)"
    return sum(f.stat().st_blocks * 512 for f in Path(p).rglob('*') if f.is_file()) if Path(p).exists() else 0


def peaks() -> dict:
    "Peak resident memory (GiB) of this process and of its largest finished child process"
    return dict(main_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                worker_gb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20)


# --- the stages, each run in a fresh process (`--stage NAME`) -----------------------------------------------------

def stage_synth(a, root):
    from lsdc.synth import make_synthetic
    make_synthetic(root/'data', n_train=a.sample, n_test=min(a.sample, 4), image_size=a.image_size, seed=0, n_workers=a.workers)
    return dict(per_study=True, written=du(root/'data'))


def stage_convert(a, root):
    from lsdc.dicom import convert_dataset
    from lsdc.levels import LevelSettings
    convert_dataset(root/'data', root/'converted'/'train', split='train', size=LevelSettings().loc_size, n_workers=a.workers,
                    progress=False)
    return dict(per_study=True, written=du(root/'converted'))


def stage_levels(a, root):
    "The localizer, the slice selector and the training crops at one epoch each; their split from the lines printed"
    import contextlib, io, re
    from lsdc.levels import LevelSettings, prepare_levels
    s = LevelSettings(crop_size=a.size, loc_epochs=1, axial_epochs=1)
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        prepare_levels(root/'data', root/'converted'/'train', root/'models', root/'crops', s, n_workers=a.workers, pretrained=False)
    total, text = time.perf_counter() - t0, buf.getvalue()
    loc = float(re.search(r'^localizer: .*\((\d+) s\)$', text, re.M).group(1))
    crops = float(re.search(r'^crops: .* in (\d+) s;', text, re.M).group(1))
    return dict(per_study=True, written=du(root/'crops') + du(root/'models'),
                parts=dict(localizer=loc, axial=max(total - loc - crops, 0.), crops=crops))


def crop_index(n:int, root:Path):
    "The crop index of `n` studies (ids 1..n): 25 columns, an annotated and a located crop each (files under `root/rsna`)"
    import pandas as pd
    from lsdc.core import LABEL_COLUMNS, series_for_condition
    rows = [(s, c, src, str(root/'rsna'/str(s)/f'{src}_{c}.png'), s * 10 + 1, series_for_condition(c))
            for s in range(1, n + 1) for c in LABEL_COLUMNS for src in ('annotated', 'located')]
    return pd.DataFrame(rows, columns=['study_id', 'column', 'source', 'image', 'series_id', 'series_description'])


def rsna_labels(n:int, seed:int=0):
    "Grades for `n` studies drawn with shares near the competition's (Normal/Mild 0.8-0.9, Severe 0.03-0.08)"
    import numpy as np, pandas as pd
    from lsdc.core import LABEL_COLUMNS, GRADES
    rng = np.random.default_rng(seed)
    return pd.DataFrame({'study_id': np.arange(1, n + 1),
                         **{c: rng.choice(GRADES, n, p=(.82, .12, .06)) for c in LABEL_COLUMNS}})


def stage_cache(a, root):
    "The cache of the full index as `lsdc.cache` lays it out; only the trained columns' rows written"
    import numpy as np
    from lsdc.cache import CACHE_FORMAT, cache_key, decode_image
    from lsdc.files import read_index, write_json
    ix = crop_index(a.n_train, root)
    images, size = ix.image.tolist(), a.size
    key = cache_key(images, size)
    folder = root/'rsna_cache'; shutil.rmtree(folder, ignore_errors=True); folder.mkdir(parents=True)
    shutil.rmtree(root/'rsna', ignore_errors=True)
    fn = folder/f'{size}px-{key[:20]}.npy'
    arr = np.lib.format.open_memmap(fn, mode='w+', dtype=np.uint8, shape=(len(images), 3, size, size))
    pngs = read_index(root/'crops').image.tolist()[:200]
    crops = [decode_image(p, size) for p in pngs]
    rows = np.flatnonzero(ix.column.isin(COLUMNS[:a.jobs]).values)
    for k, r in enumerate(rows):   # the trained columns' images: a sample crop each, in the cache and as a file (a link)
        arr[r] = crops[k % len(crops)]
        f = Path(images[r]); f.parent.mkdir(parents=True, exist_ok=True); f.symlink_to(Path(pngs[k % len(pngs)]).resolve())
    arr.flush(); del arr
    write_json(dict(format=CACHE_FORMAT, key=key, size=size, channels=3, images=images, bad={}), fn.with_suffix('.json'))
    return dict(written=du(folder), full_gb=len(images) * 3 * size * size / 2**30, file=str(fn), rows_written=len(rows))


def _train_worker(col, root, size, bs, arch, batches, n_train):
    "Train one column in this worker process from the RSNA-size cache; its peak memory and batch rate"
    import resource, time, torch
    from fastai.callback.core import Callback, CancelTrainException
    from lsdc.workers import torch_worker_init, resident_gb
    from lsdc.learners import Compute, LearnerSettings, Schedule, train_column
    from lsdc.sampling import training_table
    torch_worker_init(1)
    class Bounded(Callback):
        "At most `batches` training batches per epoch, timed (the validation runs whole: the epoch's records need it)"
        order = 0
        def __init__(self): self.n, self.seconds, self.timed = 0, 0., 0
        def before_train(self): self.n = 0
        def before_batch(self): self.t = time.perf_counter()
        def after_batch(self):
            if not self.training: return
            self.seconds += time.perf_counter() - self.t; self.n += 1; self.timed += 1
            if self.n >= batches: raise CancelTrainException()
    cb = Bounded()
    ix, lab = crop_index(n_train, root), rsna_labels(n_train)
    table, info = training_table(lab, ix, col, valid_pct=0.2, seed=0)
    fn = next((root/'rsna_cache').glob('*.npy'))
    r0, t0 = resident_gb(), time.perf_counter()
    s = LearnerSettings(arch=arch, pretrained=False, size=size, bs=bs, aug=True, lr_find_iters=3, schedule=Schedule(first=1, keep_above=-1.))
    rec = train_column(table, info, root/'rsna_models', s, Compute(cache=str(fn), device='cpu'), progress=False, cbs=[cb])
    n_up, n_valid, n_images = int((~table.is_valid).sum()), int(table.is_valid.sum()), table.image.nunique()
    return dict(column=col, seconds=time.perf_counter() - t0, start_gb=r0, peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                batch_s=cb.seconds / max(cb.timed, 1), n_train_rows=n_up, n_valid=n_valid, images_gb=n_images * 3 * size * size / 2**30,
                status=rec.get('status', 'ok'))


def stage_train(a, root):
    from loky import ProcessPoolExecutor
    with ProcessPoolExecutor(a.jobs) as ex:
        futs = [ex.submit(_train_worker, c, root, a.size, a.bs, a.arch, a.batches, a.n_train) for c in COLUMNS[:a.jobs]]
        res = [f.result() for f in futs]
    return dict(written=du(root/'rsna_models'), workers=res)


def stage_reports(a, root):
    "The reports of a finished demo run's test studies, twice; the second's time per study, split"
    import pandas as pd
    import lsdc.report as R
    from lsdc.data import load_rsna
    from lsdc.files import read_manifest
    from lsdc.pipeline import fold_dir, manifest_series
    run = Path(a.reports)
    split = dict(read=0., gradcam=0., write=0.)
    def timed(name, fn):
        def f(*args, **kw):
            t = time.perf_counter()
            try: return fn(*args, **kw)
            finally: split[name] += time.perf_counter() - t
        return f
    R._StudyParts.read = classmethod(timed('read', R._StudyParts.read.__func__))
    R._run_cams, R._write_study = timed('gradcam', R._run_cams), timed('write', R._write_study)
    t0 = time.perf_counter(); learners = R.load_learners(run/'models'); load = time.perf_counter() - t0
    sub = pd.read_csv(run/'submission_posterior.csv')
    ids = R.submission_studies(sub)[:10]
    d = load_rsna(run/'data', splits=('train',), check_images=False)
    lab = pd.read_csv(run/'data'/'test_labels.csv') if (run/'data'/'test_labels.csv').exists() else None
    crops = run/'submission_crops'
    kw = dict(studies=ids, truth=R.Truth(labels=lab, coords=d.coords), series=manifest_series(read_manifest(fold_dir(run/'models', 0))),
              crops=crops, points=crops/'points.csv')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        R.write_reports(sub, run/'converted', root/'reports_warm', learners, **kw)   # the first also warms the caches
        split.update(read=0., gradcam=0., write=0.)
        t1 = time.perf_counter(); R.write_reports(sub, run/'converted', root/'reports', learners, **kw); total = time.perf_counter() - t1
    return dict(written=du(root/'reports'), n=len(ids), load=load, total=total, split=split)


STAGES = dict(synth=stage_synth, convert=stage_convert, levels=stage_levels, cache=stage_cache, train=stage_train,
              reports=stage_reports)


def run_stage(name, a) -> dict:
    "Run one stage in a fresh process; its figures"
    cmd = [sys.executable, __file__, '--stage', name] + [x for k, v in vars(a).items() if k != 'stage' and v is not None
                                                          for x in (f"--{k.replace('_', '-')}", str(v))]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode: sys.exit(f"stage {name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), 'wall': time.perf_counter() - t0}


def hms(s:float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n-train', type=int, default=2000)
    p.add_argument('--sample', type=int, default=12, help='studies synthesised, converted and cut (the rates come from them)')
    p.add_argument('--size', type=int, default=256, help='crop side (FULL: 256)')
    p.add_argument('--image-size', type=int, default=384, help='side of the synthetic slices (FULL: 384)')
    p.add_argument('--arch', default='resnet34')
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--batches', type=int, default=4, help='training batches per epoch')
    p.add_argument('--jobs', type=int, default=2, help='columns trained at once, a worker process each')
    p.add_argument('--workers', type=int, default=os.cpu_count())
    p.add_argument('--reports', default=None, help='a finished `lsdc demo` output folder to time the reports on')
    p.add_argument('--root', default='runs/scale')
    p.add_argument('--only', default=None, help="comma-separated stages to run again in ROOT (the earlier stages' files kept)")
    p.add_argument('--stage', default=None)
    a = p.parse_args()
    root = Path(a.root).resolve()
    if a.stage:   # one stage, in this fresh process: its figures as the last line
        t0 = time.perf_counter(); out = STAGES[a.stage](a, root)
        print(json.dumps({'seconds': time.perf_counter() - t0, **out, **peaks()}, default=str)); return
    if not a.only: shutil.rmtree(root, ignore_errors=True); root.mkdir(parents=True)
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
          f"sample {a.sample} studies at {a.image_size} px, crops {a.size} px, {a.arch}, bs {a.bs}; projected to {a.n_train} studies",
          flush=True)
    scale, rows, proj = a.n_train / a.sample, [], {}
    names = ('synth', 'convert', 'levels', 'cache', 'train') + (('reports',) if a.reports else ())
    for name in (a.only.split(',') if a.only else names):
        r = run_stage(name, a)
        rows.append((name, r['wall'], r['main_gb'], r['worker_gb'], r['written'] / 2**30))
        print(f"{name:8s} {r['seconds']:8.1f} s ({r['wall']:.0f} s with its start)   main {r['main_gb']:.2f} GB   largest worker {r['worker_gb']:.2f} GB   "
              f"disk written {r['written'] / 2**30:.3f} GB", flush=True)
        if name in ('synth', 'convert'): proj[name] = r['seconds'] * scale
        if name == 'levels':
            pt = r['parts']
            print(f"         localizer {pt['localizer']:.0f} s, slice selector {pt['axial']:.0f} s, crops {pt['crops']:.0f} s "
                  f"(one epoch each, {a.sample} studies)")
            proj.update(localizer=pt['localizer'] * scale * FULL_LOC_EPOCHS, axial=pt['axial'] * scale * FULL_AXIAL_EPOCHS,
                        crops=pt['crops'] * scale, disk_crops_gb=r['written'] / 2**30 * scale)
        if name == 'cache':
            print(f"         the full cache: {r['full_gb']:.1f} GB ({a.n_train} studies x 25 columns x 2 crops); "
                  f"{r['rows_written']} rows written")
            proj['cache_gb'] = r['full_gb']
        if name == 'train':
            ws = r['workers']
            for w in ws:
                print(f"         {w['column']}: peak {w['peak_gb']:.2f} GB (at start {w['start_gb']:.2f} GB; its images, each "
                      f"once, {w['images_gb']:.2f} GB), {w['batch_s']:.2f} s per training batch, {w['n_train_rows']} training rows "
                      f"(upsampled), {w['n_valid']} validation")
            b = max(w['batch_s'] for w in ws)
            per_col = b * (FULL_FIRST_EPOCHS * (max(w['n_train_rows'] for w in ws) / a.bs) + max(w['n_valid'] for w in ws) / a.bs / 3)
            proj['columns'] = per_col * 25 * FULL_FOLDS / a.jobs
            peak_worker = max(w['peak_gb'] for w in ws)
        if name == 'reports':
            sp = r['split']
            print(f"         {r['n']} studies: {r['total']:.2f} s (read {sp['read']:.2f} s, Grad-CAM {sp['gradcam']:.2f} s, "
                  f"pages {sp['write']:.2f} s); learners loaded in {r['load']:.1f} s")
            rep = r['total'] / r['n']
    if a.only: return
    print(f"\nprojected at {a.n_train} studies on this machine (stage time per study x studies; localizer x {FULL_LOC_EPOCHS} "
          f"epochs, slice selector x {FULL_AXIAL_EPOCHS}; 25 columns x {FULL_FOLDS} folds of a {FULL_FIRST_EPOCHS}-epoch first "
          f"model, {a.jobs} at once, at the measured batch rate):")
    for k in ('synth', 'convert', 'localizer', 'axial', 'crops', 'columns'):
        print(f"  {k:10s} {hms(proj[k])}")
    print(f"  total      {hms(sum(proj[k] for k in ('synth', 'convert', 'localizer', 'axial', 'crops', 'columns')))}; "
          f"disk: crops {proj['disk_crops_gb']:.1f} GB, image cache {proj['cache_gb']:.1f} GB")
    print(f"peak worker memory at RSNA size: {peak_worker:.2f} GB ({a.jobs} workers: {a.jobs * peak_worker:.1f} GB; batch size "
          f"{a.bs} on the CPU, the batch's activations included)")
    if a.reports: print(f"reports: {rep:.2f} s per study")


if __name__ == '__main__': main()
