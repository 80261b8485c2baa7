"""How to handle the class imbalance, and how to calibrate, measured on one synthetic data set.

One synthetic set at the demo's size (`lsdc demo` settings: 128 training / 40 test studies, ResNet18 at 48 px with a
body pretrained on 300 other studies, epochs 1/2/3, two columns at a time). For each `balance` (`upsample`: seed 001,
`weights`: cross-entropy weighted 1/2/4, `none`) all 25 learners are trained once; then the same learners' test
predictions are scored raw and with each calibration (`condition`: one temperature per condition, its five levels
pooled; `column`: one per column), every calibration fitted on the columns' validation studies only. Prints the
four-term competition score of every (balance, calibration) pair, the prior-only baseline, and the best pair.

  python benchmarks/bench_balance.py --seed 0                  # the demo's data set (about 20 minutes on 2 cores)
  python benchmarks/bench_balance.py --seed 0 --balances upsample,weights --root /tmp/bb   # keep and reuse the folders
"""
import argparse, atexit, shutil, sys, tempfile, time, warnings
from pathlib import Path
import pandas as pd

from lsdc.core import GRADE_KEYS
from lsdc.data import load_rsna
from lsdc.synth import make_synthetic
from lsdc.dicom import convert_dataset
from lsdc.files import read_results
from lsdc.learners import train_columns
from lsdc.inference import predict, validation_predictions, fit_calibrations, to_submission
from lsdc.metrics import SCORE_TERMS, competition_score, baseline_score
from lsdc.demo import CPU, demo_body


def calibrated_submission(long:pd.DataFrame, cals:dict, row_ids:list) -> pd.DataFrame:
    "The submission of raw long predictions (`predict`'s sources file) with each model row calibrated"
    adj = long.copy()
    for c, cal in cals.items():
        m = (adj.column == c) & (adj.source == 'model')
        if m.any(): adj.loc[m, list(GRADE_KEYS)] = cal.apply(adj.loc[m, list(GRADE_KEYS)].to_numpy(float))
    return to_submission(adj, row_ids)


def one_balance(root:Path, d, conv:Path, weights:Path, balance:str, jobs:int) -> list:
    "Train the 25 learners with `balance`; the test scores raw and with each calibration"
    models, t = root/balance/'models', time.perf_counter()
    res = train_columns(conv/'train', models, labels=d.train, balance=balance, progress=False,
                        **{**CPU.train, 'weights': weights, 'jobs': jobs})
    t_train = time.perf_counter() - t
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        vp = validation_predictions(models, conv/'train', d.train, calibration='none')
        raw = predict(d, models, root/balance/'submission_raw.csv', converted=conv/'test', calibration='none', progress=False)
    long = pd.read_csv(root/balance/'submission_raw_sources.csv')
    lab = pd.read_csv(Path(d.path)/'test_labels.csv')
    rows = [dict(balance=balance, calibration='raw', **competition_score(lab, raw))]
    for scope in ('condition', 'column'):
        sub = calibrated_submission(long, fit_calibrations(vp, read_results(models), scope=scope), raw.row_id.tolist())
        rows.append(dict(balance=balance, calibration=scope, **competition_score(lab, sub)))
    ok = res[res.status == 'ok']
    print(f"{balance}: {len(ok)} learners in {t_train:.0f} s, mean valid accuracy {ok.valid_accuracy.mean():.3f}, "
          f"mean valid weighted log loss (raw) {ok.valid_log_loss.mean():.3f}", flush=True)
    return rows


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seed', type=int, default=0, help='seed of the synthetic data set (the demo uses 0)')
    p.add_argument('--balances', default='upsample,weights,none')
    p.add_argument('--jobs', type=int, default=2)
    p.add_argument('--root', default=None, help='working folder (default: a temporary one, removed at exit)')
    a = p.parse_args()
    root = Path(a.root or tempfile.mkdtemp(prefix='bench_balance_'))
    if not a.root: atexit.register(shutil.rmtree, root, ignore_errors=True)
    s, t0 = CPU, time.perf_counter()
    data = root/'data'
    if not (data/'test_labels.csv').exists():
        make_synthetic(data, n_train=s.n_train, n_test=s.n_test, seed=a.seed, image_size=s.image_size, n_workers=2, phantom='middle')
    d = load_rsna(data)
    conv = root/'converted'
    for split in ('train', 'test'):
        convert_dataset(d, conv/split, split=split, size=s.train['size'], n_workers=2, progress=False)
    weights = demo_body(root, s, seed=a.seed, n_workers=2, progress=False)
    print(f"data: {s.n_train} training + {s.n_test} test synthetic studies (seed {a.seed}), converted, body pretrained "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = [r for b in a.balances.split(',') for r in one_balance(root, d, conv, weights, b.strip(), a.jobs)]
    base = baseline_score(d.train, pd.read_csv(data/'test_labels.csv'))
    df = pd.DataFrame(rows + [dict(balance='prior-only', calibration='baseline', **base)])
    print('\ncompetition score on the test studies (weighted log loss, lower is better):')
    print(df[['balance', 'calibration', *SCORE_TERMS, 'score']].to_string(index=False, float_format=lambda v: f'{v:.4f}'))
    best = df.iloc[:-1].sort_values('score').iloc[0]
    print(f"\nbest: balance {best.balance}, calibration {best.calibration}: {best.score:.4f} "
          f"(baseline {base['score']:.4f}); total {time.perf_counter() - t0:.0f} s")
