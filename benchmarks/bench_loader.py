"""Benchmark of the learners' data paths (issue 12): PNGs decoded every epoch against the decoded-image cache.

    python benchmarks/bench_loader.py [--n-train 400] [--size 256] [--bs 64] [--batches 300] [--device cpu] [--root DIR]

On a synthetic data set (`lsdc.synth.make_synthetic`, converted by `lsdc.dicom.convert_dataset` to PNGs of --size px,
the conversion's default) it takes one column's training table (split by study, then upsampled: the rows a learner
trains on) and measures the images per second each data path delivers to the training step: from the items of the
table to a batch tensor on the device, before the batch transforms (augmentation, normalisation), with no network.
  - png loader: fastai's item pipeline (`lsdc.learners.grade_dls` without a cache: PNG decode and `Resize` in PIL per
    item, collate), with 0 data loader workers and with the workers a GPU run uses (one per core, at most 8); the
    faster of the two is the figure;
  - cache loader: `grade_dls` with the image cache of the conversion (`lsdc.cache`): rows gathered by index from the
    decoded uint8 array (in memory; on the GPU with --device cuda).
Each loader runs --batches batches (epochs of the shuffled table back to back), best of --repeats, interleaved so
that a burst of load from other programs does not favour one. Building the cache is timed too (once per conversion,
then reused by every column and run). The last line is `cache vs png loader: <ratio>x`.
"""
import argparse, atexit, os, platform, shutil, sys, tempfile, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)

import torch
from fastai.vision.all import Pipeline
from lsdc.files import read_index
from lsdc.sampling import training_table
from lsdc.cache import ImageCache, build_cache
from lsdc.learners import grade_dls


def make_data(root:Path, n_train:int, size:int, workers:int):
    "A synthetic set and its conversion at `size` px (reused when `root` holds them)"
    from lsdc.synth import make_synthetic
    from lsdc.dicom import convert_dataset
    t = time.perf_counter()
    data, conv = root/'data', root/'converted'
    if not (data/'train.csv').exists():
        make_synthetic(data, n_train=n_train, n_test=1, seed=0, image_size=max(size, 256), n_workers=workers)
    if not (conv/'index.csv').exists():
        convert_dataset(data, conv, split='train', size=size, n_workers=workers, progress=False)
    print(f"data: {n_train} synthetic studies, converted to {size} px PNGs ({time.perf_counter() - t:.1f} s)", flush=True)
    return data, conv


def images_per_s(dl, batches:int, device) -> float:
    "Images per second of `batches` batches of `dl` with no batch transforms, on `device`"
    dl = dl.new(after_batch=Pipeline([]))   # the batch as the loader delivers it, before augmentation and normalisation
    n, k, t = 0, 0, time.perf_counter()
    while k < batches:
        for xb, yb in dl:
            assert xb.device.type == device.type, (xb.device, device)
            n += len(xb); k += 1
            if k == batches: break
    if device.type == 'cuda': torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n-train', type=int, default=400, help='synthetic training studies')
    p.add_argument('--size', type=int, default=256, help='PNG and learner image size')
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--batches', type=int, default=300, help='batches per measurement')
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--column', default='spinal_canal_stenosis_l4_l5')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--workers', type=int, default=None, help='processes for synthesis, conversion and the cache')
    p.add_argument('--root', default=None, help='folder for data and cache (default: a temporary folder; reused when given)')
    args = p.parse_args()
    device = torch.device(args.device)
    root = Path(args.root or tempfile.mkdtemp(prefix='bench_loader_'))
    if not args.root: atexit.register(shutil.rmtree, root, ignore_errors=True)
    print(f"lsdc bench_loader: {args.size} px, bs {args.bs}, {args.batches} batches, on {device}; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}", flush=True)
    data, conv = make_data(root, args.n_train, args.size, args.workers)
    from lsdc.data import load_rsna
    index = read_index(conv)
    table, info = training_table(load_rsna(data, splits=('train',), check_images=False).train, index, args.column)
    print(f"column {args.column}: {info['n_train']} training studies -> {info['n_train_upsampled']} rows after upsampling, "
          f"{info['n_valid']} validation")
    shutil.rmtree(root/'cache', ignore_errors=True)
    t = time.perf_counter()
    cache = ImageCache(build_cache(index.image, args.size, root/'cache', n_workers=args.workers))
    print(f"cache built: {len(cache)} images ({cache.images.nbytes / 2**20:.0f} MB) in {time.perf_counter() - t:.1f} s, "
          f"once per conversion", flush=True)
    gpu_workers = min(8, os.cpu_count() or 1)
    loaders = {f'png, {w} workers': dict(num_workers=w) for w in dict.fromkeys((0, gpu_workers))}
    loaders['cache'] = dict(cache=cache)
    best = {k: 0. for k in loaders}
    for r in range(args.repeats):
        for k, kw in loaders.items():
            dls = grade_dls(table, size=args.size, bs=args.bs, device=device, aug=False, **kw)
            v = images_per_s(dls.train, args.batches, device)
            best[k] = max(best[k], v)
            print(f"  run {r + 1}, {k}: {v:.0f} images/s", flush=True)
    png_key = max((k for k in best if k.startswith('png')), key=best.get)
    print(f"png loader: {best[png_key]:.0f} images/s ({png_key.split(', ')[1]}, PNG decode and resize per item)")
    print(f"cache loader: {best['cache']:.0f} images/s (rows gathered from the decoded cache)")
    print(f"cache vs png loader: {best['cache'] / best[png_key]:.1f}x")
