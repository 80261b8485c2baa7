"""Benchmark of lsdc.learners: training throughput and the wall time of lr_find + epochs for one column.

Builds a synthetic data set with the real pipeline (lsdc.synth -> lsdc.dicom.convert_dataset), then for one label column
runs `find_lrs` and `fit_once` (one frozen epoch + EPOCHS unfrozen) and prints images/s per epoch (training phase only)
and the wall times. On CUDA, `--compare` measures fp32 / mixed precision x contiguous / channels-last in one go.
`--all-columns` trains all 25 columns with the full method (`train_columns`) and reports the total wall time
(meant for a GPU and an RSNA-size set: `--n-train 2000`). `--jobs-compare K` trains the same K columns with
`train_columns(jobs=1)` and then `jobs=2` (worker processes, CPU) and prints both wall times and their ratio.

  python benchmarks/bench_learners.py                                  # CPU: 256 px, ResNet34, small set
  python benchmarks/bench_learners.py --device cuda --compare --n-train 400 --epochs 2
  python benchmarks/bench_learners.py --device cuda --all-columns --n-train 2000 --mixed-precision --channels-last
  python benchmarks/bench_learners.py --jobs-compare 6 --n-train 128 --size 48 --arch resnet18 --bs 32 --lr-find-iters 30 --full-epochs 1,2,3
"""
import argparse, atexit, json, os, platform, shutil, sys, tempfile, time
from pathlib import Path
import torch
from fastai.vision.all import Callback

from lsdc.core import LABEL_COLUMNS
from lsdc.files import read_index
from lsdc.sampling import training_table
from lsdc.learners import Schedule, LearnerSettings, Compute, grade_dls, make_learner, find_lrs, fit_once, train_columns
from lsdc.cache import ImageCache, build_cache


class Throughput(Callback):
    "Seconds and images of the training phase of each epoch"
    order = 52
    def __init__(self): self.rows = []
    def before_train(self): self._t, self._n = time.perf_counter(), 0
    def after_batch(self):
        if self.training: self._n += len(self.yb[0])
    def after_train(self):
        if torch.cuda.is_available(): torch.cuda.synchronize()
        dt = time.perf_counter() - self._t
        self.rows.append(dict(frozen=bool(self.opt.frozen_idx), images=self._n, seconds=dt, images_per_s=self._n / dt))


def make_data(root:Path, n_train:int, size:int, workers:int):
    from lsdc.synth import make_synthetic
    from lsdc.dicom import convert_dataset
    t = time.perf_counter()
    data = root/'data'
    if not (data/'train.csv').exists():
        make_synthetic(data, n_train=n_train, n_test=1, seed=0, image_size=max(size, 256), n_workers=workers)
    conv = root/'converted'
    if not (conv/'index.csv').exists():
        convert_dataset(data, conv, split='train', size=size, n_workers=workers, progress=False)
    print(f"data: {n_train} synthetic studies written and converted to {size} px in {time.perf_counter() - t:.1f} s")
    return data, conv


def one_column(args, data, conv, device, mixed, channels_last, loader='png'):
    from lsdc.data import load_rsna
    labels = load_rsna(data, splits=('train',), check_images=False).train
    table, info = training_table(labels, read_index(conv), args.column)
    cache = ImageCache(build_cache(table.image, args.size, conv/'cache')) if loader == 'cache' else None
    dls = grade_dls(table, size=args.size, bs=args.bs, device=device, num_workers=args.num_workers, cache=cache)
    work = Path(tempfile.mkdtemp()); atexit.register(shutil.rmtree, work, ignore_errors=True)
    # no download here: a local weights file of the architecture stands in for ImageNet weights, so the run takes the
    # method's pretrained path (one frozen epoch, then unfrozen ones) at the same cost
    import torchvision
    weights = work/'weights.pth'; torch.save(getattr(torchvision.models, args.arch)().state_dict(), weights)
    t0 = time.perf_counter()
    finder = make_learner(dls, arch=args.arch, pretrained=False, weights=weights, path=work, mixed_precision=mixed,
                          channels_last=channels_last)
    with finder.no_bar(): lrs = find_lrs(finder, num_it=args.lr_find_iters)
    if device.type == 'cuda': torch.cuda.synchronize()
    t_lr = time.perf_counter() - t0
    tp = Throughput()
    t1 = time.perf_counter()
    s = LearnerSettings(arch=args.arch, pretrained=False, weights=weights, mixed_precision=mixed, channels_last=channels_last)
    r = fit_once(dls, args.epochs, lrs['lr'], s, path=work, progress=False, cbs=[tp])
    t_fit = time.perf_counter() - t1
    return dict(info=info, lrs=lrs, t_lr=t_lr, t_fit=t_fit, epochs=tp.rows, accuracy=r['accuracy'], log_loss=r['log_loss'],
                epochs_run=r['epochs_run'])


def report(tag, res):
    i = res['info']
    print(f"\n== {tag}")
    print(f"column {i['column']} ({i['series']}): train {i['n_train']} -> {i['n_train_upsampled']} images after upsampling, valid {i['n_valid']}")
    print(f"lr_find ({ARGS.lr_find_iters} iterations): {res['t_lr']:.1f} s; suggestions " +
          ', '.join(f"{k} {res['lrs'][k]:.2e}" for k in ('minimum', 'steep', 'valley', 'slide')))
    for k, e in enumerate(res['epochs']):
        print(f"  epoch {k} ({'frozen' if e['frozen'] else 'unfrozen'}): {e['images']} images in {e['seconds']:.2f} s "
              f"= {e['images_per_s']:.1f} images/s (training phase)")
    unf = [e for e in res['epochs'] if not e['frozen']]
    if unf: print(f"unfrozen training throughput: {sum(e['images'] for e in unf) / sum(e['seconds'] for e in unf):.1f} images/s")
    print(f"fine_tune ({res['epochs_run']} epochs incl. 1 frozen, with validation): {res['t_fit']:.1f} s; "
          f"lr_find + epochs: {res['t_lr'] + res['t_fit']:.1f} s  (valid accuracy {res['accuracy']:.3f}, weighted log loss {res['log_loss']:.3f})")


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--arch', default='resnet34')
    p.add_argument('--n-train', type=int, default=24, help='synthetic training studies')
    p.add_argument('--column', default='spinal_canal_stenosis_l4_l5')
    p.add_argument('--epochs', type=int, default=1, help='unfrozen epochs (after 1 frozen)')
    p.add_argument('--lr-find-iters', type=int, default=20)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--num-workers', type=int, default=None)
    p.add_argument('--workers', type=int, default=None, help='processes for synthesis and conversion')
    p.add_argument('--mixed-precision', action='store_true', help='fp16 autocast (CUDA)')
    p.add_argument('--channels-last', action='store_true', help='channels-last memory format (CUDA)')
    p.add_argument('--compare', action='store_true', help='CUDA: fp32 / fp16 x contiguous / channels-last')
    p.add_argument('--loader', default='cache', choices=('cache', 'png'), help='data path of one column and of --all-columns')
    p.add_argument('--loader-compare', action='store_true', help='training images/s of the PNG and the cache data paths, side by side')
    p.add_argument('--all-columns', action='store_true', help='train all 25 columns with the full method (train_columns)')
    p.add_argument('--full-epochs', default='4,5,10', help='--all-columns: first, short, long epochs')
    p.add_argument('--jobs-compare', type=int, default=0, metavar='K', help='train K columns with jobs=1, then jobs=2')
    p.add_argument('--root', default=None, help='folder for data and models (default: a temporary folder; reused when given)')
    ARGS = args = p.parse_args()
    device = torch.device(args.device)
    root = Path(args.root or tempfile.mkdtemp(prefix='bench_learners_'))
    if not args.root: atexit.register(shutil.rmtree, root, ignore_errors=True)   # a temporary root goes at exit
    print(f"lsdc bench_learners: {args.arch} at {args.size} px on {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, python {platform.python_version()}")
    data, conv = make_data(root, args.n_train, args.size, args.workers)
    if args.jobs_compare:
        import torchvision
        weights = root/'weights.pth'   # a local weights file: the method's pretrained path (frozen epoch first), no download
        torch.save(getattr(torchvision.models, args.arch)().state_dict(), weights)
        cols = LABEL_COLUMNS[:args.jobs_compare]
        s = LearnerSettings(arch=args.arch, size=args.size, pretrained=False, weights=weights, bs=args.bs, aug=False,
                            lr_find_iters=args.lr_find_iters, schedule=Schedule.parse(args.full_epochs))
        kw = dict(labels=data, columns=cols, settings=s, progress=False, resume=False)
        wall = {}
        for jobs in (1, 2):
            t = time.perf_counter()
            df = train_columns(conv, root/f'models_jobs{jobs}', compute=Compute(jobs=jobs), **kw)
            wall[jobs] = time.perf_counter() - t
            print(f"{len(cols)} columns with jobs={jobs}: {wall[jobs]:.1f} s wall ({wall[jobs] / len(cols):.1f} s per column), "
                  f"{int((df.status == 'ok').sum())} trained, mean valid accuracy {df.valid_accuracy.mean():.3f}", flush=True)
        print(f"jobs=2 vs jobs=1: {wall[1] / wall[2]:.2f}x as fast (worker start-up included)")
        sys.exit(0)
    if args.all_columns:
        t = time.perf_counter()
        s = LearnerSettings(arch=args.arch, size=args.size, pretrained=False, bs=args.bs, lr_find_iters=args.lr_find_iters,
                            schedule=Schedule.parse(args.full_epochs), mixed_precision=args.mixed_precision if device.type == 'cuda' else False,
                            channels_last=args.channels_last)
        df = train_columns(conv, root/'models', labels=data, settings=s, compute=Compute(num_workers=args.num_workers, loader=args.loader),
                           progress=True, resume=False)
        dt = time.perf_counter() - t
        print(f"\nall {len(LABEL_COLUMNS)} columns: {dt:.0f} s wall ({dt / 60:.1f} min), {dt / len(LABEL_COLUMNS):.1f} s per column")
        print(df[['column', 'status', 'valid_accuracy', 'valid_log_loss', 'avg_epoch_seconds', 'epochs_run', 'convergence']].to_string())
        sys.exit(0)
    modes = [(args.mixed_precision, args.channels_last, args.loader)]
    if args.compare:
        if device.type != 'cuda': sys.exit('--compare needs --device cuda')
        modes = [(m, c, args.loader) for m, c in ((False, False), (True, False), (False, True), (True, True))]
    if args.loader_compare: modes = [(args.mixed_precision, args.channels_last, ld) for ld in ('png', 'cache')]
    speed = {}
    for mixed, cl, ld in modes:
        if device.type != 'cuda' and (mixed or cl): print('(mixed precision / channels-last are CUDA options; on CPU they are skipped)'); mixed = cl = False
        res = one_column(args, data, conv, device, mixed, cl, loader=ld)
        report(f"{ld} loader, {'mixed precision' if mixed else 'fp32'}, {'channels-last' if cl else 'contiguous'}", res)
        unf = [e for e in res['epochs'] if not e['frozen']] or res['epochs']
        speed[ld] = sum(e['images'] for e in unf) / sum(e['seconds'] for e in unf)
    if args.loader_compare:
        print(f"\ntraining with the png loader: {speed['png']:.0f} images/s, with the cache loader: {speed['cache']:.0f} images/s: "
              f"cache vs png training: {speed['cache'] / speed['png']:.2f}x")
