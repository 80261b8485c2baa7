"""The real data's mess in the phantom, and what it costs the levels method once handled.

    python benchmarks/bench_mess.py --seed S [--train-seeds 42,43] [--mess bench|real|kind=share,...] [--n-train 128] [--n-test 40] [--root DIR]

Builds one anatomical synthetic set twice from the same seed, at the demo's size: clean, and with the mess
(`lsdc.synth.Mess`). The study ids, grades and anatomy are the same in both; only the geometry, the headers, the
series and the coordinates differ. `--mess bench` (the default) gives every kind a share that puts several studies
in each at this size, far more than the real data has (`--mess real`: `lsdc.synth.REAL_MESS`). The levels method
runs on each with the demo's settings (`lsdc.demo.CPU`), the learners' body pretrained once on a third, clean set
and shared by both runs. Printed per stage, clean beside messy:
  - the series the screening skipped (`lsdc.data.screen_series`);
  - the localizer's out-of-fold error against the TRUE canal points, in mm of the patient frame (the clean set's
    coordinates through the clean set's geometry, the located points through each set's own);
  - the axial slice selector's out-of-fold agreement with the annotated slice;
  - the crops that failed (training and test studies);
  - the CV (calibrated, 95 % interval) and the test studies' score;
then, per kind of mess, the studies that have it and their part of the CV difference; the paired comparison of the
two CVs over the same studies (`lsdc.pipeline.compare_runs`); and last `messy vs clean score ratio: <r>` (CV).
With `--train-seeds 42,43` each arm is trained once per seed of the method (its split and training; the data and the
body stay), the per-kind figures and the ratio are the means over them, and the clean set's two runs measure the
retraining noise: how far two runs on the very same studies land apart, which a single run's difference cannot
be told from. A study with no mess at all is in both sets unchanged, so its part of the difference is that noise.
"""
import argparse, atexit, json, shutil, tempfile, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
import numpy as np, pandas as pd

from lsdc.core import level_key
from lsdc.data import DataWarning, series_dir
from lsdc.crops import read_slices, level_point
from lsdc.localize import spinal_points, OOF_FILE
from lsdc.metrics import study_terms
from lsdc.pipeline import run_pipeline, compare_runs, format_comparison, oof_submission, OOF_TABLE
from lsdc.synth import Mess, REAL_MESS, make_synthetic
from lsdc.demo import CPU, pretrain_synthetic_body
from bench_displaced import bootstrap   # this folder's: the mean and its 95 % bootstrap interval

BENCH_MESS = Mess(displaced=0.05, feet_first=0.1, axial_stacks=0.15, same_slice=0.05, wrong_region=0.05, mislabelled=0.05,
                  missing=0.05, sizes=0.2, bias=0.2)


def parse_mess(s:str) -> Mess:
    "'bench', 'real' or 'kind=share,...'"
    if s in ('bench', 'real'): return BENCH_MESS if s == 'bench' else REAL_MESS
    kv = dict(p.split('=') for p in s.split(',') if p)
    return Mess(**{k.strip(): float(v) for k, v in kv.items()})


def patient_points(data:Path, pts:pd.DataFrame) -> pd.DataFrame:
    "Patient (x, y, z) mm of each row of a points table (study_id, series_id, instance_number, level, x, y) of `data`'s training studies"
    out, cache = [], {}
    for r in pts.itertuples():
        key = (int(r.study_id), int(r.series_id))
        try:
            if key not in cache: cache[key] = read_slices(series_dir(data, 'train', *key), series_id=key[1])
            P = level_point(cache[key], int(r.instance_number), float(r.x), float(r.y))
        except Exception: continue   # a series the run could not read either
        out.append((key[0], level_key(r.level), *map(float, P)))
    return pd.DataFrame(out, columns=['study_id', 'level', 'px', 'py', 'pz']).groupby(['study_id', 'level']).mean()


def localizer_error(run:Path, data:Path, truth:pd.DataFrame) -> pd.Series:
    "Each study's mean out-of-fold distance (mm) between the located and the true canal points"
    oof = patient_points(data, pd.read_csv(run/'models'/'localizer'/OOF_FILE))
    t = truth.reindex(oof.index)
    d = np.linalg.norm(oof.to_numpy() - t.to_numpy(), axis=1)
    return pd.Series(d, index=oof.index).dropna().groupby(level=0).mean()


def contributions(run:Path) -> pd.Series:
    "Each study's part of the calibrated CV score (they add up to it): the mean over the four terms of its loss over the term's total weight"
    t = pd.read_csv(run/'models'/OOF_TABLE)
    labels = t.pivot(index='study_id', columns='column', values='grade').reset_index()
    st = study_terms(labels, oof_submission(t, ''))
    terms = [c[:-5] for c in st.columns if c.endswith('_loss')]
    return sum(st[f'{k}_loss'] / st[f'{k}_weight'].sum() for k in terms) / len(terms)


def stage_figures(run:Path, data:Path, truth:pd.DataFrame) -> dict:
    "The per-stage figures of one run"
    s = json.loads((run/'summary.json').read_text())
    ax = json.loads((run/'models'/'axial'/'axial.json').read_text()).get('validation', {}) if (run/'models'/'axial'/'axial.json').is_file() else {}
    fails = lambda p: pd.read_csv(p) if p.is_file() else pd.DataFrame(columns=['study_id', 'column', 'source', 'reason'])
    cal = s['cv']['scores']['calibrated']['score']
    skipped = pd.read_csv(run/'skipped_series.csv') if (run/'skipped_series.csv').is_file() else None
    return dict(err=localizer_error(run, data, truth), axial=ax.get('selected', {}).get('match'), axial_n=ax.get('selected', {}).get('n'),
                crops_train=fails(run/'crops'/'train'/'failures.csv'), crops_test=fails(run/'submission_crops'/'failures.csv'),
                cv=cal['value'], cv_lo=cal['lo'], cv_hi=cal['hi'], test=s['score']['score'], seconds=s['seconds'],
                skipped=None if skipped is None else len(skipped))


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--mess', default='bench', help="'bench', 'real' or kind=share,... (lsdc.synth.Mess)")
    p.add_argument('--n-train', type=int, default=CPU.n_train)
    p.add_argument('--n-test', type=int, default=CPU.n_test)
    p.add_argument('--pretrain-studies', type=int, default=CPU.pretrain_crop_studies, help="studies of the body's pretraining set (the demo's: 150)")
    p.add_argument('--train-seeds', default=str(CPU.method.seed), help="the methods' seeds (split and training), comma separated: each arm "
                   "is trained once per seed, the figures averaged; a second seed measures the retraining noise")
    p.add_argument('--root', default=None, help='working folder (default: a temporary one, removed at exit)')
    a = p.parse_args()
    mess = parse_mess(a.mess)
    root = Path(a.root or tempfile.mkdtemp(prefix='bench_mess_'))
    if not a.root: atexit.register(shutil.rmtree, root, ignore_errors=True)
    warnings.simplefilter('ignore', DataWarning)
    t0 = time.perf_counter()
    s = CPU.changed(n_train=a.n_train, n_test=a.n_test, pretrain_crop_studies=a.pretrain_studies, mess=None)   # the body's set: clean
    method = s.method._replace(learner=s.method.learner._replace(weights=pretrain_synthetic_body(root, s, seed=a.seed, progress=False)))
    print(f"seed {a.seed}: {a.n_train} training and {a.n_test} test studies at {s.image_size} px; mess {dict((k, v) for k, v in mess._asdict().items() if v)}; "
          f"body pretrained in {time.perf_counter() - t0:.0f} s", flush=True)
    seeds = [int(v) for v in a.train_seeds.split(',')]
    runs, datas = {}, {}   # runs: {(arm, training seed): folder}
    for ts in seeds:
        for name, m in (('clean', None), ('messy', mess)):
            data = datas[name] = root/name/'data'
            if not (data/'test_labels.csv').exists():
                make_synthetic(data, n_train=a.n_train, n_test=a.n_test, seed=a.seed, image_size=s.image_size, n_workers=s.compute.n_workers, mess=m)
            out, t = root/(name if ts == seeds[0] else f'{name}_seed{ts}'), time.perf_counter()
            run_pipeline(data, out, method._replace(seed=ts), s.compute, test_labels=data/'test_labels.csv', max_reports=0, progress=False)
            runs[name, ts] = out
            print(f"{name}, training seed {ts}: ran in {time.perf_counter() - t:.0f} s", flush=True)
    truth = patient_points(datas['clean'], spinal_points(pd.read_csv(datas['clean']/'train_label_coordinates.csv')))
    fig = {k: stage_figures(r, datas[k[0]], truth) for k, r in runs.items()}
    common = sorted(set.intersection(*(set(f['err'].index) for f in fig.values())))
    print(f"\n{'stage':<52}" + ''.join(f"{f'{n} {ts}':>14}" for n, ts in fig))
    row = lambda name, f: print(f"{name:<52}" + ''.join(f"{f(v):>14}" for v in fig.values()))
    row('series skipped by the screening', lambda f: f"{f['skipped'] if f['skipped'] is not None else '-'}")
    row(f'localizer OOF error vs the true points, median mm', lambda f: f"{f['err'].loc[common].median():.2f}")
    row(f'  95th percentile mm ({len(common)} studies located in all)', lambda f: f"{np.percentile(f['err'].loc[common], 95):.2f}")
    row('  studies located', lambda f: f"{len(f['err'])}")
    row('axial selector OOF: the annotated slice', lambda f: f"{f['axial']:.1%}" if f['axial'] is not None else '-')
    nfail = lambda d: f"{len(d)} ({d.study_id.nunique()} st.)"
    row('crops failed: training studies (the studies)', lambda f: nfail(f['crops_train']))
    row('crops failed: test studies (the studies)', lambda f: nfail(f['crops_test']))
    row('CV score (calibrated)', lambda f: f"{f['cv']:.4f}")
    row('  95 % interval', lambda f: f"[{f['cv_lo']:.3f},{f['cv_hi']:.3f}]")
    row(f'test score ({a.n_test} studies)', lambda f: f"{f['test']:.4f}")
    row('run seconds', lambda f: f"{f['seconds']:.0f}")
    err_d = sum(fig['messy', ts]['err'] - fig['clean', ts]['err'] for ts in seeds) / len(seeds)   # each study's, the mean over the trainings
    m, lo, hi = bootstrap(err_d.loc[common].to_numpy())
    print(f"localizer error, messy - clean (mean over the training seeds): {m:+.3f} mm per study [{lo:+.3f}, {hi:+.3f}]")
    kinds = pd.read_csv(datas['messy']/'mess.csv') if (datas['messy']/'mess.csv').is_file() else pd.DataFrame(columns=['study_id', 'kind'])
    c = sum(contributions(runs['messy', ts]) - contributions(runs['clean', ts]) for ts in seeds) / len(seeds)
    print(f"\nper kind of mess (training studies; the mean over the training seeds): the studies that have it, their part of the "
          f"CV difference (messy - clean) and that part per study, their mean localizer error difference (mm), their failed crops "
          f"({seeds[0]}); a study with several kinds counts in each; 'none', the studies without any, is the retraining noise")
    for k in [f for f in Mess._fields if getattr(mess, f)]:
        ids = [i for i in kinds.study_id[kinds.kind == k].unique() if i in c.index]
        e = err_d.reindex(ids).dropna()
        nf = fig['messy', seeds[0]]['crops_train'].study_id.isin(ids).sum()
        print(f"  {k:<14}{len(ids):>4} studies  CV part {c.reindex(ids).sum():+.4f} ({c.reindex(ids).mean() if ids else float('nan'):+.5f} a study)  "
              f"localizer {e.mean() if len(e) else float('nan'):+.2f} mm  crops failed {nf}")
    clean_ids = [i for i in c.index if i not in set(kinds.study_id)]
    print(f"  {'none':<14}{len(clean_ids):>4} studies  CV part {c.reindex(clean_ids).sum():+.4f} ({c.reindex(clean_ids).mean():+.5f} a study)")
    for ts in seeds:
        print(f"\ntraining seed {ts}:\n" + format_comparison(compare_runs(runs['messy', ts]/'models', runs['clean', ts]/'models'), runs['messy', ts]/'models', runs['clean', ts]/'models'))
    if len(seeds) > 1:
        print(f"\nthe retraining noise: the clean set with training seed {seeds[1]} against {seeds[0]} (another split and training, the same studies)\n"
              + format_comparison(compare_runs(runs['clean', seeds[1]]/'models', runs['clean', seeds[0]]/'models'), runs['clean', seeds[1]]/'models', runs['clean', seeds[0]]/'models'))
        m, lo, hi = bootstrap(len(c) * c.to_numpy())
        print(f"\nmessy - clean, the mean over the training seeds {', '.join(map(str, seeds))}: {m:+.4f} [{lo:+.4f}, {hi:+.4f}] (bootstrap over the studies)")
    cv = {arm: np.mean([fig[arm, ts]['cv'] for ts in seeds]) for arm in ('clean', 'messy')}
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if len(seeds) > 1: print('per training seed: ' + ', '.join(f"{ts}: {fig['messy', ts]['cv'] / fig['clean', ts]['cv']:.3f}" for ts in seeds)
                             + f"; clean {seeds[1]} vs clean {seeds[0]}: {fig['clean', seeds[1]]['cv'] / fig['clean', seeds[0]]['cv']:.3f}")
    print(f"messy vs clean score ratio: {cv['messy'] / cv['clean']:.3f}")
