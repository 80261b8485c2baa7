"""One study-level calibration for all fold models against one per fold model, on the out-of-fold predictions of runs.

    python benchmarks/bench_calibration.py MODELS [MODELS ...] [--seeds 0,1,2] [--parts 5,2]

For each models folder (a cross-validated run: `oof_predictions.csv`), the raw out-of-fold predictions are calibrated
both ways, always cross-fitted (`lsdc.calibration.crossfit_calibration`: the studies dealt into parts, each part
calibrated by the calibration fitted on the others): pooled (one calibration for every fold model, the parts dealt
over all the studies; `lsdc.pipeline.calibrate_oof(calibration='pooled')`, the default) and per fold model (the parts
dealt within each fold; `'fold'`). Printed per run, number of parts and draw of the parts: both calibrated CV scores,
their paired difference over the same studies with its 95 % interval (`lsdc.metrics.paired_difference`) and each
one's ratio to the raw CV; last, per run and number of parts, how far the draws moved each. Nothing is trained; a run
takes seconds per draw.
"""
import argparse, warnings
from pathlib import Path
import numpy as np, pandas as pd
from lsdc.core import GRADE_KEYS
from lsdc.calibration import crossfit_calibration
from lsdc.metrics import study_terms, paired_difference
from lsdc.pipeline import OOF_TABLE, oof_submission, _arrays, _wide_labels

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('models', nargs='+', help='cross-validated models folders')
    p.add_argument('--seeds', default='0,1,2', help='seeds of the random parts, comma-separated')
    p.add_argument('--parts', default='5,2', help='numbers of parts to cross-fit with, comma-separated')
    a = p.parse_args()
    warnings.simplefilter('ignore')
    for m in a.models:
        t = pd.read_csv(Path(m)/OOF_TABLE); raw, g, y, cols, sids, model, sh = _arrays(t); lab = _wide_labels(t)
        def terms(groups, parts, seed):
            sub = crossfit_calibration(raw, g, y, cols, sids, groups, model, sh, parts=parts, seed=seed)[1]
            return study_terms(lab, oof_submission(t.assign(**{n: sub[:, i] for i, n in enumerate(GRADE_KEYS)})))
        raw_terms = study_terms(lab, oof_submission(t, 'raw_')); r = paired_difference(raw_terms, raw_terms).loc['score'].a
        print(f"{m}: {t.study_id.nunique()} studies, {t.fold.nunique()} fold models, raw CV {r:.4f}")
        spread = {}
        for n in (int(s) for s in a.parts.split(',')):
            for seed in (int(s) for s in a.seeds.split(',')):
                d = paired_difference(terms(None, n, seed), terms(t.fold.to_numpy(), n, seed)).loc['score']
                spread.setdefault(n, []).append((d.a, d.b))
                print(f"  {n} parts, seed {seed}: pooled {d.a:.4f} ({d.a / r:.3f} x raw), per fold {d.b:.4f} ({d.b / r:.3f} x raw); "
                      f"pooled - per fold {d['diff']:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]")
        for n, v in spread.items():
            v = np.array(v); print(f"  {n} parts: the draws moved pooled by {np.ptp(v[:, 0]):.4f}, per fold by {np.ptp(v[:, 1]):.4f}")
