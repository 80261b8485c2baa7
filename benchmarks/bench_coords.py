"""The located coordinates as features, measured: do the located level coordinates earn a place beside the image?

    python benchmarks/bench_coords.py RUN [--data DIR] [--test-labels FILE] [--C 1.0]

RUN is the output folder of a levels run with test labels: `lsdc demo` (its `data/` holds `test_labels.csv`), or
`benchmarks/bench_inputs.py --root R` (then RUN is `R/levels` and `--data R/data`). Nothing is trained again but
small logistic regressions, so it takes seconds.

The features are those an earlier method set beside the image, from the localizer's points on the mid-sagittal slice (out of
fold for the training studies, the final localizer's for the test studies, as at test time), in patient millimetres:
the level's position against the study's five (superior and anterior), its distances to the levels above and below,
and the local angle of the spine. Every model below is a multinomial logistic regression per condition (its five
levels pooled, the level one-hot beside the features), fitted with the metric's 1/2/4 weights so that its
probabilities are the ones the weighted log loss rewards:
  - level only: the level one-hot alone (the metric's best constant per column);
  - + coordinates: the level and the coordinate features, on the training studies;
  - learners: the run's calibrated submission (the images alone);
  - learners, refitted: the learners' calibrated out-of-fold log-probabilities (`models/oof_predictions.csv`: every
    training study, predicted by the fold model that never saw it) and the level, fitted on the training studies;
  - learners + coordinates: the same with the coordinate features beside them (fused late).
All are scored on the same test studies with the competition metric; the two comparisons that decide are also given
as a paired bootstrap over the test studies (the difference and its 95 % interval, and a verdict). The last line,
`learners + coordinates vs learners, refitted: <r>`, is below 1 where the coordinates help.
"""
import argparse, sys, warnings
from pathlib import Path
import numpy as np, pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.pipeline import make_pipeline

from lsdc.core import CONDITIONS, LEVELS, GRADE_KEYS, GRADE_WEIGHTS, LABEL_COLUMNS, grade_index, split_column, row_id
from lsdc.data import load_rsna
from lsdc.geometry import read_geometry, pixel_to_patient
from lsdc.localize import localizer_dir, OOF_FILE
from lsdc.metrics import SCORE_TERMS, competition_score, prior_submission, study_terms, paired_difference, verdict

FEATURES = ('superior_mm', 'anterior_mm', 'gap_above_mm', 'gap_below_mm', 'angle_deg')


def patient_points(points:pd.DataFrame, images:Path) -> pd.DataFrame:
    "Patient (y, z) in mm of each located level point, from its slice's DICOM header"
    rows = []
    for (s, r, i), g in points.groupby(['study_id', 'series_id', 'instance_number']):
        geo = read_geometry(images/str(s)/str(r)/f'{i}.dcm')
        p = pixel_to_patient(geo, g.x.to_numpy(), g.y.to_numpy())
        rows.append(g[['study_id', 'level']].assign(py=p[:, 1], pz=p[:, 2]))
    return pd.concat(rows, ignore_index=True)


def coordinate_features(pp:pd.DataFrame) -> pd.DataFrame:
    "Per study and level: the `FEATURES` of its located point among the study's five"
    out = []
    for s, g in pp.groupby('study_id'):
        g = g.set_index('level').reindex(list(LEVELS))
        if g.py.isna().any(): continue    # a study the localizer found fewer than five levels in: no features
        p = g[['py', 'pz']].to_numpy()
        c, gaps = p.mean(0), np.linalg.norm(np.diff(p, axis=0), axis=1)
        for k, lvl in enumerate(LEVELS):
            a, b = p[max(k - 1, 0)], p[min(k + 1, 4)]
            out.append(dict(study_id=s, level=lvl, superior_mm=p[k, 1] - c[1], anterior_mm=c[0] - p[k, 0],
                            gap_above_mm=gaps[max(k - 1, 0)], gap_below_mm=gaps[min(k, 3)],
                            angle_deg=np.degrees(np.arctan2(a[0] - b[0], a[1] - b[1]))))
    return pd.DataFrame(out)


def long_labels(labels:pd.DataFrame) -> pd.DataFrame:
    "study_id, column, condition, level, y (grade index) of every graded label"
    t = labels.melt(id_vars='study_id', value_vars=list(LABEL_COLUMNS), var_name='column', value_name='grade').dropna()
    cl = [split_column(c) for c in t.column]
    return t.assign(condition=[c for c, _ in cl], level=[l for _, l in cl], y=t.grade.map(grade_index)).drop(columns='grade')


def design(t:pd.DataFrame, cols:list) -> np.ndarray:
    "The level one-hot beside `cols` of `t`"
    return np.concatenate([(t.level.to_numpy()[:, None] == np.array(LEVELS)).astype(float), t[cols].to_numpy(float)], axis=1)


def fit_predict(train:pd.DataFrame, test:pd.DataFrame, cols:list, C:float) -> np.ndarray:
    "Per condition, a weighted multinomial logistic regression on `design(train, cols)`; (len(test), 3) probabilities"
    p = np.full((len(test), 3), np.nan)
    for cond in CONDITIONS:
        a, b = train[train.condition == cond], (test.condition == cond).to_numpy()
        if a.y.nunique() < 2 or not b.any(): continue   # a condition not trained, or one grade only: left to `fill`
        m = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        m.fit(design(a, cols), a.y, logisticregression__sample_weight=np.asarray(GRADE_WEIGHTS)[a.y])
        q = np.zeros((b.sum(), 3))
        q[:, m.classes_] = m.predict_proba(design(test[b], cols))
        p[b] = np.clip(q, 1e-6, 1)
    return p/p.sum(1, keepdims=True)   # NaN rows stay NaN


def as_submission(t:pd.DataFrame, p:np.ndarray, fill:pd.DataFrame) -> pd.DataFrame:
    "A submission of `p` for the rows of `t`; the rows `t` lacks, or `p` leaves NaN, come from the submission `fill`"
    sub, ok = fill.set_index('row_id').copy(), ~np.isnan(p).any(axis=1)
    sub.loc[[row_id(s, c) for s, c in zip(t.study_id[ok], t.column[ok])], list(GRADE_KEYS)] = p[ok]
    return sub.reset_index()


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('run', help="a levels run's output folder (models/ with oof_predictions.csv, submission.csv, submission_crops/points.csv)")
    ap.add_argument('--data', default=None, help='its data folder (default: RUN/data)')
    ap.add_argument('--test-labels', default=None, help="the test studies' true grades (default: DATA/test_labels.csv)")
    ap.add_argument('--C', type=float, default=1.0, help='inverse strength of the regressions\' L2 penalty')
    args = ap.parse_args()
    run = Path(args.run); data = Path(args.data or run/'data')
    if not (run/'submission_crops'/'points.csv').exists():
        sys.exit(f"{run}: no submission_crops/points.csv, so not the output of a levels run (`lsdc demo`, or bench_inputs' R/levels)")
    d, tl = load_rsna(data), pd.read_csv(args.test_labels or data/'test_labels.csv')
    warnings.filterwarnings('ignore', category=UserWarning)

    # the located points: out of fold for the training studies, the final localizer's for the test studies
    oof, test_pts = pd.read_csv(localizer_dir(run/'models')/OOF_FILE), pd.read_csv(run/'submission_crops'/'points.csv')
    feats = pd.concat([coordinate_features(patient_points(oof, data/'train_images')),
                       coordinate_features(patient_points(test_pts[test_pts.source == 'located'], data/'test_images'))], ignore_index=True)
    lab = long_labels(d.train).merge(feats, on=['study_id', 'level'], how='inner')
    fit, val = lab, lab   # the learners' outputs of the training studies are out of fold: honest for every one of them
    test = long_labels(tl).merge(feats, on=['study_id', 'level'], how='inner')
    print(f"bench_coords: {run}; {len(fit)} labels of the training studies; "
          f"{test.study_id.nunique()} of {tl.study_id.nunique()} test studies have five located levels")

    learners = pd.read_csv(run/'submission.csv')
    prior = prior_submission(d.train, tl.study_id)
    lp = lambda t, sub: np.log(np.clip(sub.set_index('row_id').loc[[row_id(s, c) for s, c in zip(t.study_id, t.column)],
                                                                   list(GRADE_KEYS)].to_numpy(float), 1e-6, 1))
    vp = pd.read_csv(run/'models'/'oof_predictions.csv')
    vsub = vp.assign(row_id=[row_id(s, c) for s, c in zip(vp.study_id, vp.column)])[['row_id', *GRADE_KEYS]]
    have = set(vsub.row_id)
    val = val[[row_id(s, c) in have for s, c in zip(val.study_id, val.column)]]
    val_l, test_l = val.assign(**dict(zip(('l0', 'l1', 'l2'), lp(val, vsub).T))), test.assign(**dict(zip(('l0', 'l1', 'l2'), lp(test, learners).T)))
    L, F = ['l0', 'l1', 'l2'], list(FEATURES)
    subs = {'prior (frequencies)': prior,
            'level only': as_submission(test, fit_predict(fit, test, [], args.C), prior),
            '+ coordinates': as_submission(test, fit_predict(fit, test, F, args.C), prior),
            'learners': learners,
            'learners, refitted': as_submission(test, fit_predict(val_l, test_l, L, args.C), learners),
            'learners + coordinates': as_submission(test, fit_predict(val_l, test_l, L + F, args.C), learners)}
    scores = {k: competition_score(tl, s) for k, s in subs.items()}
    print(f"\n{'submission':<26}" + ''.join(f'{t:>19}' for t in (*SCORE_TERMS, 'score')))
    for k, s in scores.items(): print(f"{k:<26}" + ''.join(f'{s[t]:>19.4f}' for t in (*SCORE_TERMS, 'score')))
    for a, b in (('+ coordinates', 'level only'), ('learners + coordinates', 'learners, refitted')):
        pdiff = paired_difference(study_terms(tl, subs[a]), study_terms(tl, subs[b])).loc['score']
        print(f"{a} - {b}: {pdiff['diff']:+.4f} [{pdiff.lo:+.4f}, {pdiff.hi:+.4f}] over {int(pdiff.n_studies)} test studies: {verdict(pdiff)}")
    print(f"\n+ coordinates vs level only: {scores['+ coordinates']['score']/scores['level only']['score']:.3f}")
    print(f"learners + coordinates vs learners, refitted: {scores['learners + coordinates']['score']/scores['learners, refitted']['score']:.3f}")
