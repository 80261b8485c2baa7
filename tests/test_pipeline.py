"""The method end to end at tiny size, through the `lsdc` command: synth -> convert -> train (2 folds) -> predict -> score -> report.

One module-scoped run trains two columns in each of two folds of the study-level split (the middle slices, ResNet18,
48 px, one epoch, the first model kept, no pretrained weights); the tests check the submission against sample_submission.csv,
the score, the out-of-fold files and the CV, the study-level calibration, `lsdc compare`, the reports, the refusal of
tampered or unlisted pickles and the prior fallback for a study whose series is missing."""
import json, re, shutil, subprocess, sys, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest

from lsdc.core import GRADE_KEYS, LABEL_COLUMNS, GRADES, parse_row_id, row_id
from lsdc.metrics import competition_score, baseline_score, best_constant_score
from helpers import lsdc_in_process

COLS = ['spinal_canal_stenosis_l4_l5', 'left_neural_foraminal_narrowing_l3_l4']


def lsdc(*args, check=True):
    "`lsdc ARGS`, in this process (`helpers.lsdc_in_process`); the completed process"
    return lsdc_in_process(*args, check=check)


@pytest.fixture(scope='module')
def run(synth_data, tmp_path_factory):
    "Every step of the pipeline once, by the CLI; the folder holding what they wrote"
    w = tmp_path_factory.mktemp('pipeline')
    data = Path(synth_data)
    lsdc('convert', data, w/'conv'/'train', '--split', 'train', '--size', 48, '--workers', 1, '--quiet')
    tr = lsdc('train', w/'conv'/'train', w/'models', '--data', data, '--inputs', 'middle', '--folds', 2, '--columns', ','.join(COLS),
              '--size', 48, '--arch', 'resnet18', '--no-pretrained', '--no-aug', '--epochs', '1,1,1', '--thresholds', '0,0', '--lr-find-iters', 5, '--bs', 16,
              '--n-boot', 200, '--quiet')
    lsdc('predict', data, w/'models', w/'submission.csv', '--converted', w/'conv'/'test', '--workers', 1)
    return dict(w=w, data=data, train=tr.stdout, score=lsdc('score', data/'test_labels.csv', w/'submission.csv', '--baseline-from', data/'train.csv').stdout,
                report=lsdc('report', w/'submission.csv', w/'conv', w/'reports', '--models', w/'models',
                            '--labels', data/'test_labels.csv', '--px', 128, '--quiet'))


def test_submission_matches_sample_submission(run):
    sub = pd.read_csv(run['w']/'submission.csv')
    ss = pd.read_csv(run['data']/'sample_submission.csv')
    assert list(sub.columns) == ['row_id', *GRADE_KEYS]
    assert sub.row_id.tolist() == ss.row_id.tolist()          # exactly its rows, in its order
    v = sub[list(GRADE_KEYS)].to_numpy()
    assert np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()
    np.testing.assert_allclose(v.sum(1), 1, atol=1e-5)
    src = pd.read_csv(run['w']/'submission_sources.csv')
    # the trained columns come from their model, the 23 others from the training prior
    assert set(src[src.source == 'model'].column) == set(COLS)
    assert (src[~src.column.isin(COLS)].source.str.startswith('prior')).all()


def test_prior_rows_are_the_best_constant(run):
    sub, post = (pd.read_csv(run['w']/f).set_index('row_id') for f in ('submission.csv', 'submission_posterior.csv'))
    lab = pd.read_csv(run['data']/'train.csv')
    col = 'right_subarticular_stenosis_l5_s1'                 # not trained: the grade shares of all training labels
    freq = lab[col].value_counts(normalize=True).reindex(GRADES).fillna(0).to_numpy()
    freq = np.maximum(freq, 1e-3); freq /= freq.sum()
    sid = parse_row_id(sub.index[0])[0]
    np.testing.assert_allclose(post.loc[row_id(sid, col)].to_numpy(float), freq, atol=1e-5)           # the belief: the shares
    best = freq * [1, 2, 4]; best /= best.sum()
    np.testing.assert_allclose(sub.loc[row_id(sid, col)].to_numpy(float), best, atol=1e-5)            # the submission: the best constant


def test_score_cli_matches_the_metric(run):
    lab = pd.read_csv(run['data']/'test_labels.csv')
    s = competition_score(lab, pd.read_csv(run['w']/'submission.csv'))
    b = best_constant_score(pd.read_csv(run['data']/'train.csv'), lab)
    out = run['score']
    assert re.search(rf"^score\s+{s['score']:.4f}\s+{b['score']:.4f}", out, re.M), out
    assert f"the best constant submission {b['score']:.4f}: ratio {s['score']/b['score']:.3f}" in out


def test_reports_hold_all_25_findings(run):
    w = run['w']; rep = w/'reports'
    sids = sorted({parse_row_id(r)[0] for r in pd.read_csv(w/'submission.csv').row_id})
    assert (rep/'index.html').exists() and (rep/'index.md').exists()
    for sid in sids:
        html, md = (rep/f'study_{sid}.html').read_text(), (rep/f'study_{sid}.md').read_text()
        for col in LABEL_COLUMNS:                  # one row per finding, under its condition, with its level
            assert row_id(sid, col) in md and row_id(sid, col) in html, (sid, col)
        for name in ('Spinal Canal Stenosis', 'Left Neural Foraminal Narrowing', 'Right Subarticular Stenosis'):
            assert name in md and name in html
        assert 'not a diagnosis' in html.lower() and 'data:image/png;base64,' in html
        assert f'study_{sid}.html' in (rep/'index.html').read_text()


def test_report_renders_in_chromium(run, tmp_path):
    from lsdc.report import find_chromium, screenshot
    if find_chromium() is None: pytest.skip('no chromium installed (Debian package `chromium`)')
    import cv2
    page = sorted((run['w']/'reports').glob('study_*.html'))[0]
    png = screenshot(page, tmp_path/'page.png', width=1000, height=1400)
    img = cv2.imread(str(png))
    assert img.shape[:2] == (1400, 1000)
    assert img.std() > 10                         # not a blank page
    assert (img.reshape(-1, 3).std(1) > 30).mean() > 0.001  # some coloured pixels (grade badges or heatmaps)


def _copy_models(run, tmp_path):
    m = tmp_path/'models'; shutil.copytree(run['w']/'models', m)
    return m


def test_tampered_pickle_is_refused(run, tmp_path):
    # pickles are only loaded when trusted (--trust-pickles), and then only when they match the manifest of their fold
    from lsdc.inference import load_column_learner, ModelIntegrityError
    m = _copy_models(run, tmp_path)
    with open(m/'fold0'/f'{COLS[0]}.pkl', 'ab') as f: f.write(b'\x00')
    with pytest.raises(ModelIntegrityError, match=f'{COLS[0]}.pkl.*does not match'):
        load_column_learner(m/'fold0', COLS[0], trust_pickles=True)
    r = lsdc('predict', run['data'], m, tmp_path/'sub.csv', '--converted', run['w']/'conv'/'test', '--trust-pickles', check=False)
    assert r.returncode == 1 and 'does not match' in r.stdout + r.stderr
    assert not (tmp_path/'sub.csv').exists()


def test_tampered_fold_manifest_or_calibration_is_refused(run, tmp_path):
    # the top manifest lists each fold's manifest and the calibration with their SHA-256: a changed one is refused unread
    for name, change in (('fold1/manifest.json', lambda t: t.replace('"classes"', '"classes" ', 1)),
                         ('calibration.json', lambda t: t.replace('severe_scale', 'severe_scale ', 1))):
        m = tmp_path/name.replace('/', '_'); shutil.copytree(run['w']/'models', m)
        (m/name).write_text(change((m/name).read_text()))
        r = lsdc('predict', run['data'], m, tmp_path/'sub.csv', '--converted', run['w']/'conv'/'test', check=False)
        assert r.returncode == 1 and f'{m/name}: SHA-256' in r.stderr and 'does not match' in r.stderr, (name, r.stderr)


def test_trusted_pickles_predict_as_the_safetensors(run, tmp_path):
    # the default loads the safetensors and configs; --trust-pickles the pickles: the same submission
    lsdc('predict', run['data'], run['w']/'models', tmp_path/'pkl.csv', '--converted', run['w']/'conv'/'test', '--trust-pickles')
    safe, pkl = (pd.read_csv(f).set_index('row_id') for f in (run['w']/'submission.csv', tmp_path/'pkl.csv'))
    assert safe.index.tolist() == pkl.index.tolist()
    np.testing.assert_allclose(safe.to_numpy(float), pkl.to_numpy(float), atol=2e-6)


def test_unlisted_pickle_is_refused(run, tmp_path):
    from lsdc.inference import load_column_learner, ModelIntegrityError
    m = _copy_models(run, tmp_path)
    shutil.copy(m/'fold0'/f'{COLS[0]}.pkl', m/'fold0'/f'{LABEL_COLUMNS[0]}.pkl')
    with pytest.raises(ModelIntegrityError, match='not listed'):
        load_column_learner(m/'fold0', LABEL_COLUMNS[0])


def test_missing_series_falls_back_to_the_prior(run, tmp_path):
    from lsdc.pipeline import predict_folds
    from lsdc.data import load_rsna
    data = tmp_path/'data'; shutil.copytree(run['data'], data)
    d = load_rsna(data, splits=('test',), check_images=False)
    sid = int(d.test_series.study_id.iloc[0])
    t1 = d.test_series[(d.test_series.study_id == sid) & (d.test_series.series_description == 'Sagittal T1')]
    shutil.rmtree(data/'test_images'/str(sid)/str(int(t1.series_id.iloc[0])))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        sub = predict_folds(data, run['w']/'models', tmp_path/'sub.csv', converted=tmp_path/'conv', n_workers=1, progress=False)
    # said once for the study and series, naming the columns it affects (not once per column, nor once per fold)
    said = [str(w.message) for w in caught if f'study {sid}' in str(w.message)]
    assert len(said) == 1 and 'Sagittal T1' in said[0] and 'left_neural_foraminal_narrowing L3/L4' in said[0], said
    assert sub.attrs['prior'].studies == 1 and sub.attrs['prior'].series == 1 and sub.attrs['prior'].study_columns == 1
    assert sub.row_id.tolist() == pd.read_csv(data/'sample_submission.csv').row_id.tolist()
    assert np.isfinite(sub[list(GRADE_KEYS)].to_numpy()).all()
    col = COLS[1]                                  # foraminal: read from Sagittal T1, which this study lacks
    lab = pd.read_csv(data/'train.csv')
    pri = lab[col].value_counts(normalize=True).reindex(GRADES).fillna(0).to_numpy(); pri = np.maximum(pri, 1e-3); pri /= pri.sum()
    post = pd.read_csv(tmp_path/'sub_posterior.csv').set_index('row_id')
    np.testing.assert_allclose(post.loc[row_id(sid, col)].to_numpy(float), pri, atol=1e-5)
    # the other studies still come from the models
    other = [s for s in d.test_series.study_id.unique() if s != sid][0]
    assert not np.allclose(post.loc[row_id(other, col)].to_numpy(float), pri, atol=1e-4)
    # the command line ends with one summary line; --strict makes a fallback an error, after writing the submission
    r = lsdc('predict', data, run['w']/'models', tmp_path/'strict.csv', '--converted', tmp_path/'conv', '--strict', check=False)
    assert r.returncode == 1 and (tmp_path/'strict.csv').read_bytes() == (tmp_path/'sub.csv').read_bytes()
    assert '1 study-column of 1 study (1 series missing or failed to convert)' in r.stdout.splitlines()[-1], r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith('lsdc predict: --strict: from the prior: '), r.stderr


def test_one_split_and_25_oof_rows_per_study(run):
    from lsdc.pipeline import read_folds
    m = run['w']/'models'; lab = pd.read_csv(run['data']/'train.csv')
    folds = read_folds(m)
    assert sorted(folds.study_id) == sorted(lab.study_id) and set(folds.fold) == {0, 1}
    for k in (0, 1):                                # every column of fold k validated on exactly fold k's studies
        sp = pd.read_csv(m/f'fold{k}'/'split.csv')
        for c in COLS:
            assert sorted(sp[(sp.column == c) & (sp.split == 'valid')].study_id) == sorted(folds.study_id[folds.fold == k])
    for f in ('oof.csv', 'oof_raw.csv'):
        oof = pd.read_csv(m/f)
        sid = oof.row_id.map(lambda r: parse_row_id(r)[0])
        assert sid.value_counts().eq(25).all() and sorted(sid.unique()) == sorted(lab.study_id)
    t = pd.read_csv(m/'oof_predictions.csv')
    assert set(t[t.source == 'model'].column) == set(COLS)


def test_cv_is_the_score_of_the_oof_file(run):
    # `lsdc score` of the written OOF file against the labels gives the CV that `lsdc train` printed and wrote
    m = run['w']/'models'
    cv = json.loads((m/'cv.json').read_text())
    out = lsdc('score', run['data']/'train.csv', m/'oof.csv').stdout
    got = float(re.search(r'^score\s+([\d.]+)', out, re.M).group(1))
    assert abs(got - cv['scores']['calibrated']['score']['value']) < 5e-5, (got, cv['scores']['calibrated'])
    for k in ('raw', 'calibrated', 'best_constant', 'grade_shares'):
        v = cv['scores'][k]['score']
        assert v['lo'] <= v['value'] <= v['hi']
    assert f"{cv['scores']['calibrated']['score']['value']:.4f}" in run['train']   # printed by `lsdc train --quiet`
    assert (m/'cv.md').read_text().startswith('cross-validation: 16 studies of 2 of 2 folds')


def test_calibration_is_cross_fitted_and_refit_by_calibrate(run, tmp_path):
    from lsdc.calibration import StudyCalibration, calibrate_rows, CROSSFIT_PARTS
    from lsdc.pipeline import calibrate_oof
    m = run['w']/'models'
    t, cv = pd.read_csv(m/'oof_predictions.csv'), json.loads((m/'cv.json').read_text())
    raw, g, sh = (t[[f'{p}{k}' for k in GRADE_KEYS]].to_numpy(float) for p in ('raw_', 'g_', 's_'))
    model = (t.source == 'model').to_numpy()
    def check(cal, r):                              # rows r calibrated by `cal`, as the table says
        post, sub = calibrate_rows(StudyCalibration.from_dict(cal), raw[r], g[r], t.column[r].to_numpy(), model[r], sh[r])
        np.testing.assert_allclose(sub, t.loc[r, list(GRADE_KEYS)].to_numpy(float), atol=1e-7)
        np.testing.assert_allclose(post, t.loc[r, [f'post_{k}' for k in GRADE_KEYS]].to_numpy(float), atol=1e-7)
    # pooled (the default): the studies of both folds dealt into five parts, each calibrated by the fit on the other four
    assert cv['calibration_fit'] == 'pooled' and set(t.part) == set(range(CROSSFIT_PARTS)) == {int(k.split('/')[1]) for k in cv['crossfit']}
    assert t.groupby('study_id').part.nunique().max() == 1
    for j in range(CROSSFIT_PARTS): check(cv['crossfit'][f'all/{j}'], (t.part == j).to_numpy())
    assert cv['crossfit']['all/0'] != cv['crossfit']['all/1'] and set(cv['calibration']) == {'0', '1'}
    assert cv['calibration']['0'] == cv['calibration']['1']          # one calibration serves both fold models
    assert json.loads((m/'calibration.json').read_text()) == cv['calibration']
    # 'fold': one per fold model, cross-fitted within its own fold's studies
    tf, final, cals = calibrate_oof(t.drop(columns=['part']), 'fold')
    assert sorted({k for k, _ in cals}) == [0, 1] and final[0] != final[1]
    for (k, j), cal in cals.items():
        r = ((tf.fold == k) & (tf.part == j)).to_numpy()
        assert r.any()
        post, sub = calibrate_rows(cal, raw[r], g[r], t.column[r].to_numpy(), model[r], sh[r])
        np.testing.assert_allclose(sub, tf.loc[r, list(GRADE_KEYS)].to_numpy(float), atol=1e-7)
    with pytest.raises(ValueError, match='calibration must be one of'): calibrate_oof(t, 'column')
    # `lsdc calibrate` (after shards) refits the same calibration and CV from the fold models
    c = _copy_models(run, tmp_path)
    lsdc('calibrate', c, run['w']/'conv'/'train', '--data', run['data'], '--n-boot', 200)
    new, old = (json.loads((f/'calibration.json').read_text()) for f in (c, m))
    for k in ('0', '1'):
        assert new[k]['temperatures'] == pytest.approx(old[k]['temperatures'], rel=1e-6)
        assert new[k]['severe_scale'] == pytest.approx(old[k]['severe_scale'], rel=1e-6)
        assert new[k]['shrink'] == pytest.approx(old[k]['shrink'], rel=1e-6, abs=1e-9)
    flat = lambda d: {(a, b, k): v for a, x in d.items() for b, y in x.items() for k, v in y.items()}
    assert flat(json.loads((c/'cv.json').read_text())['scores']) == pytest.approx(flat(cv['scores']), rel=1e-6)


def test_compare_runs(run, tmp_path):
    # a run against itself cannot be told apart; against a copy whose calibrated OOF rows all say Severe, it is better
    m = run['w']/'models'
    r = lsdc('compare', m, m, '--n-boot', 200)
    assert 'cannot tell A from B' in r.stdout.splitlines()[-1], r.stdout
    b = _copy_models(run, tmp_path)
    t = pd.read_csv(b/'oof_predictions.csv'); t[list(GRADE_KEYS)] = [.01, .01, .98]; t.to_csv(b/'oof_predictions.csv', index=False)
    out = lsdc('compare', m, b, '--n-boot', 200).stdout
    assert out.splitlines()[-1] == 'A is better than B', out
    other = tmp_path/'other'; shutil.copytree(b, other)
    t['grade'] = 'Severe'; t.to_csv(other/'oof_predictions.csv', index=False)
    r = lsdc('compare', m, other, check=False)
    assert r.returncode == 1 and 'not the same data' in r.stderr


def test_evaluation_of_the_oof_posterior(run):
    w = run['w']/'models'
    ev, ct = pd.read_csv(w/'evaluation.csv'), pd.read_csv(w/'calibration.csv')
    assert set(ev.column) == set(COLS)
    for k in ('accuracy', 'log_loss', 'f1_macro', 'roc_auc_macro', 'pr_auc_macro'): assert k in ev.columns
    assert set(ct[ct.level == 'column'].name) == set(COLS) and (ct.n > 0).all()
    assert ct.ece.between(0, 1).all() and (w/'reliability.png').stat().st_size > 1000 and (w/'confusion_matrices.png').exists()


def test_one_worker_pool_trains_every_folds_learners(run, tmp_path, monkeypatch):
    # with jobs=2 the learners of all the folds go to one pool of workers, so that no worker waits idle for the last
    # learner of a fold: the pool is replaced here by one that records what it is given and fails each learner (no training)
    import lsdc.learners as L
    from lsdc.learners import LearnerSettings, Compute
    from lsdc.pipeline import PipelineSettings, train_folds
    given = []
    def pool(jobs, n, say, names=None):
        given.append((n, [(Path(j.models).name, j.column) for j in jobs], names))
        for j in jobs: L._failed(j, "not trained: the test's pool")
    monkeypatch.setattr(L, '_train_parallel', pool)
    m = tmp_path/'models'; m.mkdir()
    shutil.copy(run['w']/'models'/'folds.csv', m/'folds.csv')
    s = PipelineSettings(inputs='middle', columns=tuple(COLS), learner=LearnerSettings(size=48, arch='resnet18', pretrained=False))
    res = train_folds(run['w']/'conv'/'train', m, pd.read_csv(run['data']/'train.csv'), s, Compute(jobs=2), progress=False)
    both = [(k, c) for k in (0, 1) for c in COLS]
    assert given == [(2, [(f'fold{k}', c) for k, c in both], [f'fold{k}/{c}' for k, c in both])]
    assert sorted(zip(res.fold, res.column)) == sorted(both) and (res.status == 'failed').all()
