"""Wrong coordinates in the phantom, and what cleaning them is worth to the level localizer.

    python benchmarks/bench_displaced.py --seed S [--displaced 0.1] [--n-train 128] [--epochs 10] [--root DIR]

One anatomical synthetic set at the demo's size (128 training studies, 128 px images, converted at the localizer's
96 px). Its coordinates are used three ways, each training the localizer the demo trains (2 folds, 10 epochs):
  - clean:     the coordinates as the phantom drew them;
  - messy:     `--displaced` of the studies with one spinal canal point moved 0.3-0.9 level spacings
               (`lsdc.synth.displace_points`, the same as `lsdc synth --mess displaced=D`), the localizer trained on them as
               they are (the check switched off);
  - corrected: the same messy coordinates with the check on (the localizer's default): a canal point far from where
               its study's other four put it is moved there (`lsdc.data.displaced_levels`, `level_targets`).
Each localizer's out-of-fold points are scored against the clean (true) points, on the studies all three located,
in mm. Printed: how many displaced points the check found, each setting's median and 95th percentile error, and the
paired difference of each study's mean error (messy - corrected and messy - clean) with a 95 % bootstrap interval.
The grades, images and folds are the same in all three: only the coordinates differ.
"""
import argparse, atexit, shutil, tempfile, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
import numpy as np, pandas as pd

import lsdc.localize as L
from lsdc.core import LEVELS, level_key
from lsdc.data import load_rsna, read_coords, displaced_levels, DataWarning
from lsdc.dicom import convert_dataset
from lsdc.synth import make_synthetic, displace_points


def located_errors(models:Path, truth:pd.DataFrame, spacing:dict) -> pd.Series:
    "Each study's mean out-of-fold point error (mm) against the true canal points"
    oof = pd.read_csv(models/'localizer'/L.OOF_FILE).set_index(['study_id', 'level'])[['x', 'y']]
    t = truth.set_index(['study_id', 'level'])[['x', 'y']].reindex(oof.index)
    sp = np.array([spacing[s] for s in oof.index.get_level_values(0)])
    d = np.hypot((oof.x - t.x).to_numpy() * sp[:, 1], (oof.y - t.y).to_numpy() * sp[:, 0])
    return pd.Series(d, index=oof.index).groupby(level=0).mean()


def bootstrap(d:np.ndarray, n:int=2000, seed:int=0) -> tuple:
    "Mean of `d` and its 95 % percentile bootstrap interval"
    r = np.random.default_rng(seed).choice(d, size=(n, len(d))).mean(1)
    return float(d.mean()), float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--displaced', type=float, default=0.1, help='share of studies with one canal point moved')
    p.add_argument('--n-train', type=int, default=128)
    p.add_argument('--epochs', type=int, default=10, help="the localizer's epochs (the demo's: 10)")
    p.add_argument('--root', default=None, help='working folder (default: a temporary one, removed at exit)')
    a = p.parse_args()
    root = Path(a.root or tempfile.mkdtemp(prefix='bench_displaced_'))
    if not a.root: atexit.register(shutil.rmtree, root, ignore_errors=True)
    t0 = time.perf_counter()
    data = root/'data'
    if not (data/'train.csv').exists():
        make_synthetic(data, n_train=a.n_train, n_test=1, image_size=128, seed=a.seed, n_workers=2, phantom='anatomical', mess=None)   # clean: it displaces the points itself
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DataWarning)
        d = load_rsna(data, splits=('train',))
    convert_dataset(d, root/'conv', split='train', size=96, n_workers=2, progress=False)
    clean, raw = d.coords, pd.read_csv(data/'train_label_coordinates.csv')
    moved_table = displace_points(raw, a.displaced, seed=a.seed)
    moved_table.to_csv(root/'messy.csv', index=False)
    messy, moved = read_coords(root/'messy.csv'), [(s, level_key(l), u) for s, l, u in moved_table.attrs['displaced']]
    found = displaced_levels(messy)
    flagged, truly = set(zip(found.study_id, found.level)), {(s, l) for s, l, _ in moved}
    big = [(s, l) for s, l, u in moved if u >= 0.5]
    print(f"{a.n_train} studies (seed {a.seed}), {len(moved)} with a canal point moved 0.3-0.9 level spacings: the check found "
          f"{len(flagged & truly)} ({sum(m in flagged for m in big)} of the {len(big)} moved 0.5 or more) and flagged "
          f"{len(flagged - truly)} others ({time.perf_counter() - t0:.0f} s)", flush=True)
    settings = L.LocalizerSettings(epochs=a.epochs)
    truth = L.spinal_points(clean).groupby(['study_id', 'level'])[['x', 'y']].mean().reset_index()
    first = L.spinal_points(clean).drop_duplicates('study_id')
    spacing = {r.study_id: L.slice_spacing(data, r.study_id, r.series_id, r.instance_number) for r in first.itertuples()}
    check = L.displaced_levels
    err = {}
    for name, co, on in (('clean', clean, True), ('messy', messy, False), ('corrected', messy, True)):
        L.displaced_levels = check if on else (lambda c, m=0.4: check(c.iloc[:0], m))   # the check off: it finds nothing
        t = time.perf_counter()
        rec = L.train_localizer(root/'conv', co, root/name, data=data, settings=settings, seed=a.seed, folds=2, resume=False, progress=False)
        err[name] = located_errors(root/name, truth, spacing)
        print(f"{name}: trained on {rec['n_studies']} studies ({rec['n_skipped']} left out, {rec['n_corrected']} with a point moved back), "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    L.displaced_levels = check
    common = sorted(set.intersection(*(set(e.index) for e in err.values())))
    print(f"\nout-of-fold error against the true points, {len(common)} studies located by all three (mm):")
    print(f"{'setting':<10}{'median':>9}{'p95':>9}{'mean':>9}")
    for k, e in err.items():
        v = e.loc[common].to_numpy()
        print(f"{k:<10}{np.median(v):>9.2f}{np.percentile(v, 95):>9.2f}{v.mean():>9.2f}")
    for a_, b_ in (('messy', 'corrected'), ('messy', 'clean'), ('corrected', 'clean')):
        m, lo, hi = bootstrap(err[a_].loc[common].to_numpy() - err[b_].loc[common].to_numpy())
        print(f"{a_} - {b_}: {m:+.3f} mm [{lo:+.3f}, {hi:+.3f}] per study ({'cannot tell' if lo <= 0 <= hi else 'worse' if lo > 0 else 'better'} for the first)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
