"""One study-level calibration for all fold models against one per fold model, on the out-of-fold predictions of runs.

    python benchmarks/bench_calibration.py MODELS [MODELS ...] [--halves-seeds 0,1]

For each models folder (a cross-validated run: `oof_predictions.csv`), the raw out-of-fold predictions are calibrated
twice, both cross-fitted (each half of the studies calibrated by the calibration fitted on the other half;
`lsdc.calibration.crossfit_calibration`): per fold model, as `lsdc.pipeline.calibrate_oof` does (halves within each
fold), and pooled (one calibration for every fold model, halves over all the studies). Printed per run and draw of the
halves: both calibrated CV scores, their paired difference over the same studies with its 95 % interval
(`lsdc.metrics.paired_difference`), and each one's ratio to the raw CV. Nothing is trained; it takes seconds.
"""
import argparse, warnings
from pathlib import Path
import pandas as pd
from lsdc.core import GRADE_KEYS
from lsdc.calibration import crossfit_calibration
from lsdc.metrics import study_terms, paired_difference
from lsdc.pipeline import OOF_TABLE, oof_submission, _arrays, _wide_labels

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('models', nargs='+', help='cross-validated models folders')
    p.add_argument('--halves-seeds', default='0,1', help='seeds of the random halves, comma-separated')
    a = p.parse_args()
    warnings.simplefilter('ignore')
    for m in a.models:
        t = pd.read_csv(Path(m)/OOF_TABLE); raw, g, y, cols, sids, model, sh = _arrays(t); lab = _wide_labels(t)
        def terms(groups, seed):
            sub = crossfit_calibration(raw, g, y, cols, sids, groups, model, sh, seed=seed)[1]
            return study_terms(lab, oof_submission(t.assign(**{n: sub[:, i] for i, n in enumerate(GRADE_KEYS)})))
        r = paired_difference(terms(None, 0), study_terms(lab, oof_submission(t, 'raw_'))).loc['score'].b
        print(f"{m}: {t.study_id.nunique()} studies, {t.fold.nunique()} fold models, raw CV {r:.4f}")
        for seed in (int(s) for s in a.halves_seeds.split(',')):
            d = paired_difference(terms(None, seed), terms(t.fold.to_numpy(), seed)).loc['score']
            print(f"  halves seed {seed}: pooled {d.a:.4f} ({d.a / r:.3f} x raw), per fold {d.b:.4f} ({d.b / r:.3f} x raw); "
                  f"pooled - per fold {d['diff']:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]")
