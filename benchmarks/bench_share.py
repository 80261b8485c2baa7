"""Learners shared by several columns against a learner per column: the levels method's `share` settings on one data set.

    python benchmarks/bench_share.py --seed S [--shares none,levels,sides] [--multi levels,sides] [--n-train 128] [--n-test 40] [--root DIR] [--quick]

Builds one anatomical synthetic set at the demo's size (`lsdc.demo.CPU`), pretrains the learners' body once on a
second set (`lsdc.demo.pretrain_synthetic_body`: the crops as cut without mirroring, the same body for every run),
and trains stage 1 once (the level localizer and the axial slice selector, on the study-level split every run uses).
Then, for each setting of `share`, the levels method on the same data, folds, seed, stage 1 and body
(`lsdc.pipeline.train_pipeline`, then `predict_folds` on the test studies):
  - none: a learner per column (25 per fold), the method as it was;
  - levels: a learner per condition, trained on its five levels' crops (5 per fold);
  - sides: a learner for the canal, one for both foramina, one for both recesses (3 per fold), the right crops cut
    mirrored to the left in the patient frame (`lsdc.crops.mirror_site`).
With --multi (default 'levels,sides'), those settings run a second time with two views of each level side by side
(`LevelSettings.views=2`, named '<share>+views'): the canal beside its axial slice, a foramen beside the axial slice on
its side, a recess beside the sagittal T2 slice through it, each view read by the same backbone (`lsdc.learners.ViewBody`).
Printed: per setting the CV's four terms and its score (calibrated, out of fold, with the 95 % intervals of cv.json),
the learners per fold, the training seconds (stage 1 excluded: it is trained once, before) and the test studies'
score; then the paired comparison of each shared setting against 'none' over the same studies
(`lsdc.pipeline.compare_runs`); and last `shared vs per-column CV score ratio: <r>` for the shared setting of the
lower CV score against 'none'. `--quick` (one epoch per attempt, a two-epoch stage 1, a tiny pretraining) only
checks that the script runs; its figures mean nothing. A --root that holds finished runs is resumed: finished
learners are skipped (so the training seconds of a resumed run are not a measurement).
"""
import argparse, json, logging, shutil, tempfile, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
import pandas as pd

from lsdc.data import DataWarning, load_rsna, screen_series
from lsdc.synth import make_synthetic
from lsdc.dicom import convert_dataset
from lsdc.learners import Schedule, SHARES, share_groups, arch_name
from lsdc.levels import prepare_levels
from lsdc.metrics import SCORE_TERMS, competition_score
from lsdc.pipeline import make_folds, train_pipeline, predict_folds, compare_runs, format_comparison
from lsdc.demo import CPU, pretrain_synthetic_body


def stage_one(d, root:Path, method, compute) -> tuple:
    "Train the localizer and the slice selector once, as `train_pipeline` would (the same split, seed and settings); `(folder, seconds)`"
    t, L = time.perf_counter(), method.learner
    f = make_folds(d.train, method.folds, method.seed)
    prepare_levels(d, root/'converted'/'train', root/'stage1', root/'crops'/'train', settings=method.levels._replace(crop_size=L.size),
                   seed=method.seed, folds=dict(zip(f.study_id, f.fold)), n_workers=compute.n_workers, progress=False,
                   pretrained=L.pretrained and not L.weights)
    return root/'stage1', time.perf_counter() - t


def run_arm(name:str, d, root:Path, method, compute, stage1:Path, crops:str='train', test_crops:str='test') -> dict:
    "Train the levels method `method` into `root/name/models` (stage 1 copied in, so reused; training crops `root/crops/<crops>`), predict the test studies; its figures"
    out, models = root/name, root/name/'models'
    for sub in ('localizer', 'axial'):
        if (stage1/sub).is_dir() and not (models/sub).is_dir(): shutil.copytree(stage1/sub, models/sub)
    t = time.perf_counter()
    cv = train_pipeline(d, root/'converted'/'train', models, method, compute, crops=root/'crops'/crops, out=out, progress=False)
    seconds = time.perf_counter() - t
    reused = (models/'localizer'/'localizer.json').read_bytes() == (stage1/'localizer'/'localizer.json').read_bytes()
    sub = predict_folds(d, models, out/'submission.csv', converted=root/'converted'/'test', crops=root/'crops'/test_crops,
                        n_workers=compute.n_workers, progress=False)
    test = competition_score(pd.read_csv(Path(d.path)/'test_labels.csv'), sub)['score']
    return dict(models=models, cv=json.loads((models/'cv.json').read_text()), seconds=seconds, test=test, reused=reused,
                learners=int(cv['trained'].query("status == 'ok'").groupby('fold').learner.nunique().max()))


def run_share(share:str, d, root:Path, method, compute, stage1:Path, views:int=1) -> dict:
    "`run_arm` of the levels method with `share` (for 'sides', the crops cut again with the right side mirrored) and `views` views per crop"
    mirror, v = share == 'sides', '' if views == 1 else '_views'
    if mirror and not (root/'crops'/f'train_mirrored{v}').is_dir() and (root/'crops'/f'train{v}').is_dir():   # only the right crops are cut again
        shutil.copytree(root/'crops'/f'train{v}', root/'crops'/f'train_mirrored{v}')
    m = method._replace(share=share, levels=method.levels._replace(views=views))
    return run_arm(share + '+views' * (views > 1), d, root, m, compute, stage1, *((f'train_mirrored{v}', f'test_mirrored{v}') if mirror else (f'train{v}', f'test{v}')))


def print_cv_table(res:dict, n_test:int):
    "The CV's terms and score of each `run_arm` result in `res`, its learners, training seconds and test score, a column per run"
    cell = lambda v: f"{v['value']:.4f} [{v['lo']:.3f}, {v['hi']:.3f}]"
    print(f"\nCV of the training studies, out of fold, calibrated (95 % intervals from cv.json; weighted log loss, lower is better)")
    print(f"{'':<22}" + ''.join(f"{k:>26}" for k in res))
    for t in (*SCORE_TERMS, 'score'): print(f"{t:<22}" + ''.join(f"{cell(r['cv']['scores']['calibrated'][t]):>26}" for r in res.values()))
    for name, f in (('learners per fold', lambda r: f"{r['learners']}"), ('training seconds', lambda r: f"{r['seconds']:.0f}"),
                    (f"test score ({n_test} studies)", lambda r: f"{r['test']:.4f}")):
        print(f"{name:<22}" + ''.join(f"{f(r):>26}" for r in res.values()))


def add_common_args(p):
    "The options every benchmark built on one synthetic set and one stage 1 shares"
    p.add_argument('--seed', type=int, default=0, help='seed of the synthetic set (the method uses its own fixed seed)')
    p.add_argument('--n-train', type=int, default=CPU.n_train)
    p.add_argument('--n-test', type=int, default=CPU.n_test)
    p.add_argument('--workers', type=int, default=None, help='workers of synthesis, conversion and crops')
    p.add_argument('--quick', action='store_true', help='one epoch per attempt, a short stage 1 and pretraining: checks that it runs')
    p.add_argument('--root', default=None, help='working folder (default: a temporary one, removed at the end)')


def prepare(a, name:str) -> tuple:
    "The synthetic set, the pretrained body and stage 1 of the options `a` (`add_common_args`), a line printed: `(root, settings, method, data, stage1, t0)`"
    root = Path(a.root or tempfile.mkdtemp(prefix=f'{name}_'))
    warnings.simplefilter('ignore', DataWarning)
    logging.getLogger('lsdc').setLevel(logging.ERROR)   # each fold's line per column without a crop of some study: the CV counts them
    t0 = time.perf_counter()
    s = CPU.changed(n_train=a.n_train, n_test=a.n_test, phantom='anatomical', n_workers=a.workers)
    if a.quick:
        s = s.changed(schedule=Schedule(first=1, short=1, long=1), lr_find_iters=5, pretrain_studies=16, pretrain_crop_studies=8, pretrain_epochs=1,
                      levels=s.method.levels._replace(loc_epochs=2, axial_epochs=2), n_boot=200)
    data = root/'data'
    if not (data/'test_labels.csv').exists():
        make_synthetic(data, n_train=s.n_train, n_test=s.n_test, seed=a.seed, image_size=s.image_size, n_workers=a.workers, phantom='anatomical')
    method = s.method._replace(learner=s.method.learner._replace(weights=pretrain_synthetic_body(root, s, seed=a.seed, progress=False)))
    t1 = time.perf_counter()
    d = screen_series(load_rsna(data), n_workers=a.workers)
    convert_dataset(d, root/'converted'/'train', split='train', size=method.levels.loc_size, n_workers=a.workers, progress=False)
    stage1, t_stage = stage_one(d, root, method, s.compute)
    L = method.learner
    print(f"{name}: seed {a.seed}, {s.n_train} training and {s.n_test} test studies at {s.image_size} px (anatomical), {method.folds} folds; "
          f"learners {arch_name(L.arch)} at {L.size} px, epochs {L.schedule.first}/{L.schedule.short}/{L.schedule.long}; data and pretrained body in {t1 - t0:.0f} s, "
          f"conversion and stage 1 (trained once) in {time.perf_counter() - t1:.0f} s{' (--quick: the figures mean nothing)' if a.quick else ''}", flush=True)
    return root, s, method, d, stage1, t0


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--shares', default=','.join(SHARES), help=f"the settings to run, comma-separated, of {', '.join(SHARES)}")
    p.add_argument('--multi', default='levels,sides', help="the settings also run with two views per crop ('' for none)")
    add_common_args(p)
    a = p.parse_args()
    split = lambda v: [x.strip() for x in v.split(',') if x.strip()]
    shares, multi = split(a.shares), split(a.multi)
    if bad := [x for x in shares + multi if x not in SHARES]: p.error(f"--shares, --multi: {bad} are not of {SHARES}")
    root, s, method, d, stage1, t0 = prepare(a, 'bench_share')
    res = {}
    for share, views in [(x, 1) for x in shares] + [(x, 2) for x in multi]:
        k = share + '+views' * (views > 1)
        res[k] = run_share(share, d, root, method, s.compute, stage1, views=views)
        print(f"{k}: {res[k]['learners']} learners per fold, trained in {res[k]['seconds']:.0f} s"
              f"{'' if res[k]['reused'] else ' (stage 1 NOT reused: trained again)'}", flush=True)
    print_cv_table(res, s.n_test)
    shared = [k for k in res if k != 'none']
    pairs = [(k, 'none') for k in shared if 'none' in res] + [(k, k[:-6]) for k in res if k.endswith('+views') and k[:-6] in res]
    for x, y in pairs:
        print(f"\n== {x} against {y}, paired over the same studies\n" + format_comparison(compare_runs(res[x]['models'], res[y]['models']), x, y))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; runs in {root}")
    score = lambda k: res[k]['cv']['scores']['calibrated']['score']['value']
    if 'none' in res and shared:
        best = min(shared, key=score)
        print(f"shared vs per-column CV score ratio: {score(best) / score('none'):.3f} ({best})")
    else: print("shared vs per-column CV score ratio: n/a (it needs 'none' and a shared setting)")
    if not a.root: shutil.rmtree(root, ignore_errors=True)
