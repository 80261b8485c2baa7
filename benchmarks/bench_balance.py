"""How to handle the class imbalance, decided by the study-level cross-validation.

One synthetic set at the demo's size (`lsdc demo` settings: 128 training / 40 test studies, ResNet18 at 48 px with a
body pretrained on other studies, the demo's folds, two columns at a time), the middle slices on the middle phantom.
For each `balance` (`upsample`: the middle-slice method's, `weights`: cross-entropy weighted 1/2/4, `none`) the learners of every fold
are trained (`lsdc.pipeline.train_pipeline`), and their out-of-fold predictions scored raw and calibrated (each fold
model calibrated on its own out-of-fold studies, cross-fitted), with 95 % intervals; then each balance is compared
with `upsample` on the same studies (`lsdc compare`: the paired difference and its interval, and a verdict).

  python benchmarks/bench_balance.py --seed 0                  # the demo's data set
  python benchmarks/bench_balance.py --seed 0 --balances upsample,weights --root /tmp/bb   # keep and reuse the folders
"""
import argparse, atexit, shutil, tempfile, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)

from lsdc.data import load_rsna
from lsdc.synth import make_synthetic
from lsdc.dicom import convert_dataset
from lsdc.demo import CPU, pretrain_synthetic_body
from lsdc.pipeline import train_pipeline, compare_runs, format_comparison, format_cv


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seed', type=int, default=0, help='seed of the synthetic data set (the demo uses 0)')
    p.add_argument('--balances', default='upsample,weights,none')
    p.add_argument('--jobs', type=int, default=2)
    p.add_argument('--root', default=None, help='working folder (default: a temporary one, removed at exit)')
    a = p.parse_args()
    root = Path(a.root or tempfile.mkdtemp(prefix='bench_balance_'))
    if not a.root: atexit.register(shutil.rmtree, root, ignore_errors=True)
    s, t0 = CPU.changed(inputs='middle', phantom='middle', n_workers=2), time.perf_counter()
    data = root/'data'
    if not (data/'test_labels.csv').exists():
        make_synthetic(data, n_train=s.n_train, n_test=s.n_test, seed=a.seed, image_size=s.image_size, n_workers=2, phantom='middle')
    d = load_rsna(data, splits=('train',))
    convert_dataset(d, root/'converted', split='train', size=s.method.learner.size, n_workers=2, progress=False)
    weights = pretrain_synthetic_body(root, s, seed=a.seed, progress=False)
    print(f"data: {s.n_train} training synthetic studies (seed {a.seed}), converted, body pretrained in {time.perf_counter() - t0:.0f} s; "
          f"{s.method.folds} folds", flush=True)
    balances = [b.strip() for b in a.balances.split(',')]
    for b in balances:
        t = time.perf_counter()
        method = s.method._replace(learner=s.method.learner._replace(weights=weights, balance=b))
        cv = train_pipeline(d, root/'converted', root/b/'models', method, s.compute._replace(jobs=a.jobs), progress=False)
        print(f"\n{b} ({time.perf_counter() - t:.0f} s):\n{format_cv(cv)}", flush=True)
    for b in balances[1:]:
        print('\n' + format_comparison(compare_runs(root/b/'models', root/balances[0]/'models'), b, balances[0]))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
