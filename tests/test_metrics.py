"Tests of lsdc.metrics: the competition score pinned by hand-computed cases, the prior baseline, evaluation, plots, `lsdc score`."
import math, warnings
import numpy as np, pandas as pd, pytest
from sklearn.metrics import log_loss
from lsdc.core import LABEL_COLUMNS, GRADES, GRADE_KEYS, GRADE_WEIGHTS
from lsdc.metrics import (competition_score, prior_submission, baseline_score, best_constant_score, grade_priors, empty_labels,
                          evaluate_column, evaluate, predictions_table, plot_confusion_grid, plot_training_curves,
                          score_cli, weighted_log_loss, PRED_COLUMNS, EPS)

L = math.log
N, M, S = GRADES
SP, LF, RF, LS, RS = ('spinal_canal_stenosis', 'left_neural_foraminal_narrowing', 'right_neural_foraminal_narrowing',
                      'left_subarticular_stenosis', 'right_subarticular_stenosis')


def uniform(study_ids):
    rows = [f'{s}_{c}' for s in study_ids for c in LABEL_COLUMNS]
    return pd.DataFrame({'row_id': rows, 'normal_mild': 1/3, 'moderate': 1/3, 'severe': 1/3})


def put(sub, rid, p): sub.loc[sub.row_id == rid, list(GRADE_KEYS)] = p


@pytest.fixture
def case():
    "Three studies: 10 (all spinal graded, none Severe), 20 (two spinal graded), 30 (no spinal graded)"
    lab = empty_labels([10, 20, 30])
    lab.loc[0, [f'{SP}_l1_l2', f'{SP}_l2_l3', f'{SP}_l3_l4', f'{SP}_l4_l5', f'{SP}_l5_s1']] = [N, N, M, N, N]
    lab.loc[0, [f'{LF}_l4_l5', f'{RS}_l3_l4']] = [S, M]
    lab.loc[1, [f'{SP}_l4_l5', f'{SP}_l5_s1', f'{RF}_l5_s1', f'{LS}_l4_l5']] = [S, M, N, N]
    lab.loc[2, f'{LF}_l1_l2'] = M
    sub = uniform([10, 20, 30])
    for rid, p in [(f'10_{SP}_l1_l2', [.9, .05, .05]), (f'10_{SP}_l2_l3', [.7, .2, .1]), (f'10_{SP}_l3_l4', [.3, .6, .1]),
                   (f'10_{SP}_l4_l5', [.6, .2, .2]), (f'10_{SP}_l5_s1', [.8, .1, .1]),
                   (f'20_{SP}_l4_l5', [.1, .3, .6]), (f'20_{SP}_l5_s1', [.2, .5, .3]),
                   (f'20_{SP}_l1_l2', [0, 0, 1]),          # not graded: must not count in any_severe_spinal
                   (f'30_{SP}_l3_l4', [0, 0, 1]),          # study 30 has no graded spinal level: left out
                   (f'10_{LF}_l4_l5', [.2, .2, .6]), (f'20_{RF}_l5_s1', [.5, .25, .25]),
                   (f'30_{LF}_l1_l2', [.3, .3, .2]),       # sums to .8: moderate counts as .375
                   (f'10_{RS}_l3_l4', [.25, .5, .25]), (f'20_{LS}_l4_l5', [.9, .1, 0])]:
        put(sub, rid, p)
    return lab, sub


def expected_case():
    e = dict(spinal=(-(L(.9) + L(.7) + 2*L(.6) + L(.6) + L(.8)) - 4*L(.6) - 2*L(.5)) / 12,
             foraminal=(-4*L(.6) - L(.5) - 2*L(.375)) / 7,
             subarticular=(-2*L(.5) - L(.9)) / 3,
             # study 10: no Severe, weight 2 (worst Moderate), p = max severe = .2; study 20: Severe, weight 4, p = max(.6, .3)
             any_severe_spinal=(-2*L(1 - .2) - 4*L(.6)) / 6)
    e['score'] = sum(e.values()) / 4
    return e


def test_hand_computed_case(case):
    lab, sub = case
    s = competition_score(lab, sub)
    assert list(s) == ['spinal', 'foraminal', 'subarticular', 'any_severe_spinal', 'score']
    for k, v in expected_case().items(): assert s[k] == pytest.approx(v, abs=1e-12), k


def test_ungraded_rows_and_extra_studies_do_not_count(case):
    lab, sub = case
    base = competition_score(lab, sub)
    graded = set(f'{r.study_id}_{c}' for r in lab.itertuples() for c in LABEL_COLUMNS if isinstance(getattr(r, c), str))
    rng = np.random.default_rng(0)
    noisy = sub.copy()
    m = ~noisy.row_id.isin(graded)
    noisy.loc[m, list(GRADE_KEYS)] = rng.dirichlet([1, 1, 1], m.sum())
    noisy = pd.concat([noisy, uniform([99])])   # a study that is not in the labels
    s = competition_score(lab, noisy.sample(frac=1, random_state=0))   # row order does not matter either
    for k in base: assert s[k] == pytest.approx(base[k], abs=1e-12)


def test_all_spinal_missing_study_left_out(case):
    lab, sub = case
    only30 = lab[lab.study_id == 30]
    with pytest.warns(UserWarning, match='no graded rows'):
        s = competition_score(only30, sub)
    assert math.isnan(s['spinal']) and math.isnan(s['any_severe_spinal']) and math.isnan(s['score'])
    assert s['foraminal'] == pytest.approx(-L(.375))


def test_matches_sklearn_log_loss():
    "On normalised probabilities the terms equal sklearn's weighted log loss (the official metric's building block)"
    rng = np.random.default_rng(1)
    ids = list(range(100, 140))
    lab = empty_labels(ids)
    for c in LABEL_COLUMNS:
        g = rng.choice(4, len(ids), p=[.6, .2, .1, .1])   # 3 = missing
        lab[c] = [GRADES[i] if i < 3 else np.nan for i in g]
    sub = uniform(ids)
    sub[list(GRADE_KEYS)] = rng.dirichlet([2, 1, 1], len(sub))
    s = competition_score(lab, sub)
    long = lab.melt(id_vars='study_id', var_name='column', value_name='grade').dropna()
    long['row_id'] = long.study_id.astype(str) + '_' + long.column
    long = long.merge(sub, on='row_id')
    long['y'] = long.grade.map(GRADES.index); long['w'] = long.y.map(lambda i: GRADE_WEIGHTS[i])
    for g, key in [('spinal', 'spinal'), ('foraminal', 'foraminal'), ('subarticular', 'subarticular')]:
        d = long[long.column.str.contains(key)]
        assert s[g] == pytest.approx(log_loss(d.y, d[list(GRADE_KEYS)].to_numpy(), sample_weight=d.w, labels=[0, 1, 2]), abs=1e-12)
    sp = long[long.column.str.contains('spinal')].groupby('study_id')
    a = pd.DataFrame({'y': sp.y.max().eq(2).astype(int), 'w': sp.w.max(), 'p': sp.severe.max()})
    assert s['any_severe_spinal'] == pytest.approx(log_loss(a.y, a.p, sample_weight=a.w, labels=[0, 1]), abs=1e-12)


def test_perfect_and_near_perfect(case):
    lab, sub = case
    perfect, near = uniform([10, 20, 30]), uniform([10, 20, 30])
    for r in lab.itertuples():
        for c in LABEL_COLUMNS:
            g = getattr(r, c)
            if isinstance(g, str):
                put(perfect, f'{r.study_id}_{c}', np.eye(3)[GRADES.index(g)])
                put(near, f'{r.study_id}_{c}', np.where(np.eye(3)[GRADES.index(g)] > 0, .998, .001))
    assert competition_score(lab, perfect)['score'] < 1e-12
    s = competition_score(lab, near)
    for k in ('spinal', 'foraminal', 'subarticular'): assert s[k] == pytest.approx(-L(.998), abs=1e-12)
    assert s['score'] < 0.01


def test_clipping_of_zero_probability():
    "A zero on the true grade costs -log(eps/(1+2 eps)): clipped to eps, then the row renormalised"
    assert weighted_log_loss([2], [[.5, .5, 0.]]) == pytest.approx(-L(EPS / (1 + EPS)), rel=1e-9)
    assert weighted_log_loss([1], [0.]) == pytest.approx(-L(EPS), rel=1e-9)


def test_clear_errors(case):
    lab, sub = case
    with pytest.raises(ValueError, match=r"lacks 2 of the 12 labelled rows, e\.g\. \['10_spinal_canal_stenosis_l1_l2', '10_spinal_canal_stenosis_l2_l3'\]"):
        competition_score(lab, sub[~sub.row_id.isin([f'10_{SP}_l1_l2', f'10_{SP}_l2_l3'])])
    full = empty_labels([10, 20]).assign(**{c: N for c in LABEL_COLUMNS})
    with pytest.raises(ValueError, match=r"lacks 25 of the 50 labelled rows, e\.g\. \['20_spinal_canal_stenosis_l1_l2'"):
        competition_score(full, sub[~sub.row_id.str.startswith('20_')])
    bad = sub.copy(); bad.loc[3, 'moderate'] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite probabilities in 1 row\(s\), e\.g\. \['10_spinal_canal_stenosis_l4_l5'\]"):
        competition_score(lab, bad)
    with pytest.raises(ValueError, match=r"unexpected \['Unnamed: 0'\]"):
        competition_score(lab, sub.reset_index().rename(columns={'index': 'Unnamed: 0'}))
    with pytest.raises(ValueError, match=r"missing \['severe'\]"):
        competition_score(lab, sub.drop(columns='severe'))
    with pytest.raises(ValueError, match='must be numbers'):
        competition_score(lab, sub.assign(severe='high'))
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        competition_score(lab, sub.assign(severe=-.1))
    with pytest.raises(ValueError, match='no .study_id. column'):
        competition_score(lab.drop(columns='study_id'), sub)
    with pytest.raises(ValueError, match='no graded cell'):
        competition_score(empty_labels([10]), sub)


def test_prior_baseline_known_table():
    tr = empty_labels([1, 2, 3, 4, 5])
    for c in LABEL_COLUMNS: tr[c] = N
    tr[f'{SP}_l1_l2'] = [N, N, N, M, S]                   # (.6, .2, .2)
    tr[f'{LF}_l1_l2'] = [N, M, M, M, np.nan]              # (.25, .75, 0) -> severe floored: (.25, .75, .001)/1.001
    tr[f'{RS}_l5_s1'] = np.nan                            # no labels: pooled subarticular = always N
    with pytest.warns(UserWarning, match="1 column.*no training labels.*right_subarticular_stenosis_l5_s1"):
        pri = grade_priors(tr)
    np.testing.assert_allclose(pri.loc[f'{SP}_l1_l2'], [.6, .2, .2])
    np.testing.assert_allclose(pri.loc[f'{LF}_l1_l2'], np.array([.25, .75, .001]) / 1.001)
    np.testing.assert_allclose(pri.loc[f'{RS}_l5_s1'], np.array([1, .001, .001]) / 1.002)
    np.testing.assert_allclose(pri.sum(axis=1), 1)
    assert (pri.to_numpy() > 0).all()
    with pytest.warns(UserWarning, match='no training labels'):
        ps = prior_submission(tr, [7, 8])
    assert list(ps.columns) == ['row_id', *GRADE_KEYS] and len(ps) == 50
    assert list(ps.row_id[:2]) == [f'7_{SP}_l1_l2', f'7_{SP}_l2_l3'] and ps.row_id.iloc[-1] == f'8_{RS}_l5_s1'

    ev = empty_labels([7, 8])
    ev.loc[0, [f'{SP}_l1_l2', f'{LF}_l1_l2', f'{RS}_l5_s1']] = [S, M, N]
    ev.loc[1, [f'{SP}_l1_l2', f'{LF}_l1_l2', f'{SP}_l2_l3']] = [M, S, N]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        b = baseline_score(tr, ev)
    q = .001 / 1.002
    e = dict(spinal=(-4*L(.2) - 2*L(.2) - L(1/1.002)) / 7,
             foraminal=(-2*L(.75/1.001) - 4*L(.001/1.001)) / 6,
             subarticular=-L(1/1.002),
             any_severe_spinal=(-4*L(.2) - 2*L(1 - max(.2, q))) / 6)
    e['score'] = sum(e.values()) / 4
    for k, v in e.items(): assert b[k] == pytest.approx(v, abs=1e-12), k


def test_prior_floor_parameter():
    tr = empty_labels([1, 2])
    for c in LABEL_COLUMNS: tr[c] = N
    np.testing.assert_allclose(grade_priors(tr, floor=.01).loc[f'{SP}_l1_l2'], np.array([1, .01, .01]) / 1.02)


def test_evaluate_column_by_hand():
    y = [N, N, M, S]
    p = [[.7, .2, .1], [.45, .35, .2], [.5, .3, .2], [.2, .3, .5]]   # predicted N, N, N, S
    r = evaluate_column(y, p, f'{SP}_l1_l2')
    assert r['group'] == 'spinal' and r['n'] == 4 and r['accuracy'] == .75
    assert (r['n_normal_mild'], r['n_moderate'], r['n_severe']) == (2, 1, 1)
    assert [r[f'precision_{k}'] for k in GRADE_KEYS] == pytest.approx([2/3, 0, 1])
    assert [r[f'recall_{k}'] for k in GRADE_KEYS] == pytest.approx([1, 0, 1])
    assert [r[f'f1_{k}'] for k in GRADE_KEYS] == pytest.approx([.8, 0, 1])
    assert (r['precision_macro'], r['recall_macro'], r['f1_macro']) == pytest.approx((5/9, 2/3, .6))
    # ROC AUC = share of (positive, negative) pairs ranked right, ties count 1/2
    assert [r[f'roc_auc_{k}'] for k in GRADE_KEYS] == pytest.approx([3/4, 1.5/3, 1])
    # average precision: normal_mild ranks pos, neg, pos, neg -> (1 + 2/3)/2; moderate ties with a negative at .3 -> 1/3
    assert [r[f'pr_auc_{k}'] for k in GRADE_KEYS] == pytest.approx([5/6, 1/3, 1])
    assert r['roc_auc_macro'] == pytest.approx((3/4 + .5 + 1) / 3)
    assert r['log_loss'] == pytest.approx(-(L(.7) + L(.45) + 2*L(.3) + 4*L(.5)) / 8)
    cm = np.array([[r[f'cm_{a}_as_{b}'] for b in GRADE_KEYS] for a in GRADE_KEYS])
    np.testing.assert_array_equal(cm, [[2, 0, 0], [1, 0, 0], [0, 0, 1]])
    assert r['note'] == ''
    # indices and grade keys work as truth too; NaN rows are dropped
    r2 = evaluate_column([0, 'normal_mild', 1, 2, np.nan], p + [[1, 0, 0]])
    assert r2['accuracy'] == .75 and r2['n'] == 4


def test_evaluate_column_absent_grade_predicted():
    "Severe absent from the truth but predicted once: precision 0, recall/F1/AUCs NaN, noted"
    r = evaluate_column([N, M, N], [[.8, .1, .1], [.1, .8, .1], [.2, .2, .6]])
    assert r['precision_severe'] == 0 and np.isnan([r['recall_severe'], r['f1_severe'], r['roc_auc_severe'], r['pr_auc_severe']]).all()
    assert 'severe absent from truth' in r['note']
    assert r['recall_macro'] == pytest.approx((.5 + 1) / 2)
    r = evaluate_column([N, N], [[.8, .1, .1], [.6, .3, .1]])
    assert np.isnan(r['roc_auc_normal_mild']) and 'only normal_mild in truth' in r['note'] and np.isnan(r['roc_auc_macro'])


def test_evaluate_table_and_csv(case, tmp_path):
    lab, sub = case
    pt = predictions_table(lab, sub)
    assert list(pt.columns) == list(PRED_COLUMNS) and len(pt) == 12
    ev = evaluate(pt)
    assert ev.column.is_unique and len(ev) == 10 and list(ev.column) == [c for c in LABEL_COLUMNS if c in set(pt.column)]
    row = ev.set_index('column').loc[f'{SP}_l1_l2']
    assert row.n == 1 and row.accuracy == 1 and row.log_loss == pytest.approx(-L(.9))
    ev.to_csv(tmp_path/'eval.csv', index=False)
    back = pd.read_csv(tmp_path/'eval.csv')
    assert back.shape == ev.shape and list(back.columns) == list(ev.columns)
    # grade given as index works the same
    ev2 = evaluate(pt.assign(grade=pt.grade.map(GRADES.index)))
    pd.testing.assert_frame_equal(ev, ev2)
    with pytest.raises(ValueError, match='unknown label column'):
        evaluate(pt.assign(column='spinal'))


def test_plots(tmp_path):
    rng = np.random.default_rng(0)
    pr = pd.DataFrame([(s, c, GRADES[g], *rng.dirichlet(np.eye(3)[g] * 3 + 1)) for s in range(12) for c in LABEL_COLUMNS
                       for g in [rng.choice(3, p=[.7, .2, .1])]], columns=list(PRED_COLUMNS))
    f = plot_confusion_grid(pr[pr.column != f'{RS}_l5_s1'], tmp_path/'cm.png')
    assert f.read_bytes()[:4] == b'\x89PNG' and f.stat().st_size > 20_000
    hist = {c: pd.DataFrame({'epoch': range(5), 'train_loss': np.linspace(1, .4, 5), 'valid_loss': np.linspace(.9, .6, 5)})
            for c in LABEL_COLUMNS}
    f = plot_training_curves(hist, tmp_path/'curves.png')
    assert f.read_bytes()[:4] == b'\x89PNG' and f.stat().st_size > 20_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cm.png', 'curves.png']   # no temporary files left
    with pytest.raises(ValueError, match='lacks column'):
        plot_training_curves({f'{SP}_l1_l2': pd.DataFrame({'epoch': [0], 'loss': [1]})}, tmp_path/'x.png')


def test_score_cli(case, tmp_path, capsys):
    lab, sub = case
    tr = empty_labels([1, 2, 3, 4])
    for c in LABEL_COLUMNS: tr[c] = [N, N, M, S]
    lab.to_csv(tmp_path/'labels.csv', index=False); sub.to_csv(tmp_path/'sub.csv', index=False)
    tr.to_csv(tmp_path/'train.csv', index=False)
    assert score_cli(str(tmp_path/'labels.csv'), str(tmp_path/'sub.csv')) == 0
    out = capsys.readouterr().out
    e = expected_case()
    assert '3 studies, 12 graded rows' in out and f"{e['score']:.4f}" in out and 'baseline' not in out
    from lsdc.cli import main
    assert main(['score', str(tmp_path/'labels.csv'), str(tmp_path/'sub.csv'), '--baseline-from', str(tmp_path/'train.csv')]) == 0
    out = capsys.readouterr().out
    b, shares = best_constant_score(tr, lab), baseline_score(tr, lab)
    assert f"the best constant submission {b['score']:.4f}" in out and f"ratio {e['score'] / b['score']:.3f}" in out
    assert f"the grade shares score {shares['score']:.4f}" in out
    assert score_cli(str(tmp_path/'labels.csv'), str(tmp_path/'missing.csv')) == 1
    assert 'lsdc score: error' in capsys.readouterr().err
