"""Issue 5 end to end at tiny size, through the `lsdc` command: synth -> convert -> train -> predict -> score -> report.

One module-scoped run trains two columns (ResNet18, 48 px, one epoch per attempt, no pretrained weights); the tests
check the submission against sample_submission.csv, the score, the reports, the refusal of tampered or unlisted
pickles and the prior fallback for a study whose series is missing."""
import json, re, shutil, subprocess, sys, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest

from lsdc.core import GRADE_KEYS, LABEL_COLUMNS, GRADES, parse_row_id, row_id
from lsdc.metrics import competition_score, baseline_score

COLS = ['spinal_canal_stenosis_l4_l5', 'left_neural_foraminal_narrowing_l3_l4']


def lsdc(*args, check=True):
    "Run `python -m lsdc.cli ARGS`; the completed process"
    r = subprocess.run([sys.executable, '-m', 'lsdc.cli', *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0: raise AssertionError(f"lsdc {args} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope='module')
def run(synth_data, tmp_path_factory):
    "Every step of the pipeline once, by the CLI; the folder holding what they wrote"
    w = tmp_path_factory.mktemp('pipeline')
    data = Path(synth_data)
    lsdc('convert', data, w/'conv'/'train', '--split', 'train', '--size', 48, '--workers', 1, '--quiet')
    lsdc('train', w/'conv'/'train', w/'models', '--data', data, '--columns', ','.join(COLS), '--size', 48,
         '--arch', 'resnet18', '--no-pretrained', '--no-aug', '--epochs', '1,1,1', '--lr-find-iters', 5, '--bs', 16, '--quiet')
    lsdc('predict', data, w/'models', w/'submission.csv', '--converted', w/'conv'/'test', '--workers', 1)
    return dict(w=w, data=data, score=lsdc('score', data/'test_labels.csv', w/'submission.csv', '--baseline-from', data/'train.csv').stdout,
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


def test_prior_rows_are_the_training_frequencies(run):
    sub = pd.read_csv(run['w']/'submission.csv').set_index('row_id')
    lab = pd.read_csv(run['data']/'train.csv')
    col = 'right_subarticular_stenosis_l5_s1'                 # not trained: the prior of all training labels
    freq = lab[col].value_counts(normalize=True).reindex(GRADES).fillna(0).to_numpy()
    freq = np.maximum(freq, 1e-3); freq /= freq.sum()
    sid = parse_row_id(sub.index[0])[0]
    np.testing.assert_allclose(sub.loc[row_id(sid, col)].to_numpy(float), freq, atol=1e-5)


def test_score_cli_matches_the_metric(run):
    lab = pd.read_csv(run['data']/'test_labels.csv')
    s = competition_score(lab, pd.read_csv(run['w']/'submission.csv'))
    b = baseline_score(pd.read_csv(run['data']/'train.csv'), lab)
    out = run['score']
    assert re.search(rf"^score\s+{s['score']:.4f}\s+{b['score']:.4f}", out, re.M), out
    assert f"ratio {s['score']/b['score']:.3f}" in out


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
    # pickles are only loaded when trusted (--trust-pickles), and then only when they match the manifest
    from lsdc.inference import load_column_learner, ModelIntegrityError
    m = _copy_models(run, tmp_path)
    with open(m/f'{COLS[0]}.pkl', 'ab') as f: f.write(b'\x00')
    with pytest.raises(ModelIntegrityError, match=f'{COLS[0]}.pkl.*does not match'):
        load_column_learner(m, COLS[0], trust_pickles=True)
    r = lsdc('predict', run['data'], m, tmp_path/'sub.csv', '--converted', run['w']/'conv'/'test', '--trust-pickles', check=False)
    assert r.returncode == 1 and 'does not match' in r.stdout + r.stderr
    assert not (tmp_path/'sub.csv').exists()


def test_trusted_pickles_predict_as_the_safetensors(run, tmp_path):
    # the default loads the safetensors and configs; --trust-pickles the pickles: the same submission
    lsdc('predict', run['data'], run['w']/'models', tmp_path/'pkl.csv', '--converted', run['w']/'conv'/'test', '--trust-pickles')
    safe, pkl = (pd.read_csv(f).set_index('row_id') for f in (run['w']/'submission.csv', tmp_path/'pkl.csv'))
    assert safe.index.tolist() == pkl.index.tolist()
    np.testing.assert_allclose(safe.to_numpy(float), pkl.to_numpy(float), atol=2e-6)   # 6 decimals in the CSV


def test_unlisted_pickle_is_refused(run, tmp_path):
    from lsdc.inference import load_column_learner, ModelIntegrityError
    m = _copy_models(run, tmp_path)
    shutil.copy(m/f'{COLS[0]}.pkl', m/f'{LABEL_COLUMNS[0]}.pkl')
    with pytest.raises(ModelIntegrityError, match='not listed'):
        load_column_learner(m, LABEL_COLUMNS[0])


def test_missing_series_falls_back_to_the_prior(run, tmp_path):
    from lsdc.inference import predict, column_priors
    from lsdc.data import load_rsna
    data = tmp_path/'data'; shutil.copytree(run['data'], data)
    d = load_rsna(data, splits=('test',), check_images=False)
    sid = int(d.test_series.study_id.iloc[0])
    t1 = d.test_series[(d.test_series.study_id == sid) & (d.test_series.series_description == 'Sagittal T1')]
    shutil.rmtree(data/'test_images'/str(sid)/str(int(t1.series_id.iloc[0])))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        sub = predict(data, run['w']/'models', tmp_path/'sub.csv', converted=tmp_path/'conv', n_workers=1, progress=False)
    # said once for the study and series, naming the columns it affects (not once per column)
    said = [str(w.message) for w in caught if f'study {sid}' in str(w.message)]
    assert len(said) == 1 and 'Sagittal T1' in said[0] and 'left_neural_foraminal_narrowing L3/L4' in said[0], said
    assert sub.attrs['prior'].studies == 1 and sub.attrs['prior'].series == 1 and sub.attrs['prior'].study_columns == 1
    assert sub.row_id.tolist() == pd.read_csv(data/'sample_submission.csv').row_id.tolist()
    assert np.isfinite(sub[list(GRADE_KEYS)].to_numpy()).all()
    col = COLS[1]                                  # foraminal: read from Sagittal T1, which this study lacks
    pri = column_priors(run['w']/'models').loc[col].to_numpy(float)
    np.testing.assert_allclose(sub.set_index('row_id').loc[row_id(sid, col)].to_numpy(float), pri, atol=1e-5)
    # the other studies still come from the model
    other = [s for s in d.test_series.study_id.unique() if s != sid][0]
    assert not np.allclose(sub.set_index('row_id').loc[row_id(other, col)].to_numpy(float), pri, atol=1e-4)
    # the command line ends with one summary line; --strict makes a fallback an error, after writing the submission
    r = lsdc('predict', data, run['w']/'models', tmp_path/'strict.csv', '--converted', tmp_path/'conv', '--strict', check=False)
    assert r.returncode == 1 and (tmp_path/'strict.csv').read_bytes() == (tmp_path/'sub.csv').read_bytes()
    assert '1 study-column of 1 study (1 series missing or failed to convert)' in r.stdout.splitlines()[-1], r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith('lsdc predict: --strict: from the prior: '), r.stderr


def test_evaluation_on_validation_studies(run):
    from lsdc.inference import evaluate_models, validation_predictions
    w = run['w']; lab = pd.read_csv(run['data']/'train.csv')
    preds = validation_predictions(w/'models', w/'conv'/'train', lab)
    split = pd.read_csv(w/'models'/'split.csv')
    for col in COLS:
        valid = set(split[(split.column == col) & (split.split == 'valid')].study_id)
        got = preds[preds.column == col]
        assert set(got.study_id) == valid and got.study_id.is_unique      # its validation studies, once each
    ev = evaluate_models(w/'models', w/'conv'/'train', lab, out=w/'eval')
    assert set(ev.column) == set(COLS)
    for k in ('accuracy', 'log_loss', 'f1_macro', 'roc_auc_macro', 'pr_auc_macro'): assert k in ev.columns
    assert (w/'eval'/'evaluation.csv').exists() and (w/'eval'/'confusion_matrices.png').exists()
    ct = pd.read_csv(w/'eval'/'calibration.csv')
    assert set(ct[ct.level == 'column'].name) == set(COLS) and (ct.n > 0).all()
    assert ct.ece.between(0, 1).all() and (w/'eval'/'reliability.png').stat().st_size > 1000


def test_calibration_is_fitted_on_validation_and_applied(run, tmp_path):
    from lsdc.inference import validation_predictions
    from lsdc.calibration import Calibration, calibrated_loss
    from lsdc.core import grade_index
    w = run['w']; lab = pd.read_csv(run['data']/'train.csv')
    man = json.loads((w/'models'/'manifest.json').read_text())
    cal = {c: Calibration.from_dict(man['columns'][c]['calibration']) for c in COLS}   # `lsdc train` fitted it
    assert all(c.scope == 'condition' and c.temperature > 0 for c in cal.values())
    assert all(man['columns'][c]['balance'] == 'upsample' for c in COLS)
    # the raw loss it recorded is that of the column's validation studies, and of nothing else
    vp = validation_predictions(w/'models', w/'conv'/'train', lab, calibration='none')
    for c in COLS:
        d = vp[vp.column == c]
        raw = d[[f'raw_{k}' for k in GRADE_KEYS]].to_numpy(float)
        assert abs(cal[c].valid_loss_raw - calibrated_loss(raw, d.grade.map(grade_index))) < 1e-9
        np.testing.assert_allclose(d[list(GRADE_KEYS)].to_numpy(float), raw)     # 'none': the raw outputs
    # `lsdc predict --calibration none` writes the raw outputs; the default is the manifest's calibration of them
    lsdc('predict', run['data'], w/'models', tmp_path/'raw.csv', '--converted', w/'conv'/'test', '--workers', 1,
         '--calibration', 'none')
    raw, sub = (pd.read_csv(f).set_index('row_id') for f in (tmp_path/'raw.csv', w/'submission.csv'))
    for c in COLS:
        rows = [r for r in sub.index if r.endswith(c)]
        np.testing.assert_allclose(cal[c].apply(raw.loc[rows].to_numpy(float)), sub.loc[rows].to_numpy(float), atol=2e-4)
    others = [r for r in sub.index if not r.endswith(tuple(COLS))]                  # the prior rows are not calibrated
    np.testing.assert_allclose(raw.loc[others].to_numpy(float), sub.loc[others].to_numpy(float), atol=1e-6)
    # `lsdc calibrate` refits on a copy, one temperature per column
    m = _copy_models(run, tmp_path)
    lsdc('calibrate', m, w/'conv'/'train', '--data', run['data'], '--scope', 'column')
    assert {e['calibration']['scope'] for e in json.loads((m/'manifest.json').read_text())['columns'].values()} == {'column'}
