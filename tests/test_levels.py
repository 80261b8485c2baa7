"""The levels method end to end at tiny size, through the `lsdc` command: synth (anatomical) -> convert -> train
--inputs levels (localiser, crops, learners) -> predict -> report; and what keeps it honest."""
import json, shutil, subprocess, sys
from pathlib import Path
import pandas as pd, pytest

from lsdc.core import LABEL_COLUMNS, GRADE_KEYS
from lsdc.files import read_index, file_sha256, ModelIntegrityError

COLS = ['spinal_canal_stenosis_l4_l5', 'left_neural_foraminal_narrowing_l4_l5', 'right_subarticular_stenosis_l4_l5']


def lsdc(*args, check=True):
    r = subprocess.run([sys.executable, '-m', 'lsdc.cli', *map(str, args)], capture_output=True, text=True, timeout=900)
    if check and r.returncode != 0: raise AssertionError(f"lsdc {args} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def train_args(w, data):
    return ('train', w/'conv'/'train', w/'models', '--data', data, '--inputs', 'levels', '--columns', ','.join(COLS),
            '--size', 32, '--arch', 'resnet18', '--no-pretrained', '--no-aug', '--epochs', '1,1,1', '--lr-find-iters', 5,
            '--bs', 16, '--loc-size', 48, '--loc-epochs', 3)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    w = tmp_path_factory.mktemp('levels')
    data = w/'data'
    lsdc('synth', data, '--n-train', 24, '--n-test', 3, '--image-size', 96, '--workers', 1)
    lsdc('convert', data, w/'conv'/'train', '--split', 'train', '--size', 64, '--workers', 1, '--quiet')
    train = lsdc(*train_args(w, data))
    pred = lsdc('predict', data, w/'models', w/'submission.csv', '--converted', w/'conv'/'test', '--workers', 1)
    return dict(w=w, data=data, train=train.stdout, predict=pred.stdout + pred.stderr)


def test_manifest_lists_the_levels_files(run):
    m = run['w']/'models'
    man = json.loads((m/'manifest.json').read_text())
    assert {c: e['inputs'] for c, e in man['columns'].items()} == {c: 'levels' for c in COLS}
    assert man['levels']['sha256'] == file_sha256(m/'levels.json')
    lv = json.loads((m/'levels.json').read_text())
    assert lv['settings']['crop_size'] == 32 and lv['localizer']
    for name, h in lv['localizer'].items(): assert file_sha256(m/'localizer'/name) == h
    assert lv['settings']['axial'] == 'learned' and sorted(lv['axial']) == ['axial.json', 'axial.safetensors']
    for name, h in lv['axial'].items(): assert file_sha256(m/'axial'/name) == h
    assert 'axial slices: final model' in run['train'] and 'out of fold, the annotated axial slice of' in run['train']


def _subarticular_slices(crops):
    "(study_id, level) -> instance_number of the located subarticular crops, left and right alike"
    c = crops[(crops.source == 'located') & crops.column.str.contains('subarticular')]
    per = c.assign(level=c.column.str[-5:]).groupby(['study_id', 'level']).instance_number
    assert (per.nunique() == 1).all()
    return {k: int(v) for k, v in per.first().items()}


def test_located_subarticular_crops_use_the_chosen_axial_slices(run):
    # training: the selector's out-of-fold choices; test: the final selector's, written to the crops' points.csv
    w = run['w']
    oof = pd.read_csv(w/'models'/'axial'/'oof_slices.csv')
    assert set(oof.fold) == {0, 1} and len(oof) > 50
    chosen = {(r.study_id, r.level): r.axial_instance for r in oof.itertuples()}
    got = _subarticular_slices(read_index(w/'conv'/'crops'/'train'))
    assert got and all(chosen[k] == v for k, v in got.items())
    pts = pd.read_csv(w/'submission_crops'/'points.csv')
    assert {'axial_series_id', 'axial_instance'} <= set(pts.columns) and pts.axial_instance.notna().any()
    chosen = {(r.study_id, r.level): r.axial_instance for r in pts.dropna(subset=['axial_instance']).itertuples()}
    got = _subarticular_slices(read_index(w/'submission_crops'))
    assert got and all(chosen[k] == v for k, v in got.items())


def test_axial_nearest_needs_no_selector(run, tmp_path):
    # axial='nearest' (earlier releases): no selector trained or listed, the crops' PNGs record no chosen slice
    from lsdc.levels import LevelSettings, prepare_levels, read_levels
    from lsdc.dicom import png_info
    w = run['w']
    models = tmp_path/'models'
    shutil.copytree(w/'models', models, ignore=shutil.ignore_patterns('axial'))
    s = LevelSettings(crop_size=32, loc_size=48, loc_epochs=3, axial='nearest')
    with pytest.raises(ValueError, match="axial must be 'learned' or 'nearest'"):
        prepare_levels(run['data'], w/'conv'/'train', models, tmp_path/'bad', settings=s._replace(axial='best'))
    dest = prepare_levels(run['data'], w/'conv'/'train', models, tmp_path/'crops', settings=s, n_workers=1, seed=42, pretrained=False)
    assert not (models/'axial').exists()
    assert json.loads((models/'levels.json').read_text())['axial'] == {}
    crops = read_index(dest)
    sub = crops[(crops.source == 'located') & crops.column.str.contains('subarticular')]
    assert len(sub) and not any('axial' in png_info(p)['params'] for p in sub.image)
    r = lsdc(*train_args(w, run['data']), '--axial', 'best', check=False)
    assert r.returncode == 2 and "--axial must be 'learned' or 'nearest', got 'best'" in r.stderr


def test_validation_sees_located_crops_training_annotated(run):
    # the training part of each column reads annotated crops, its validation part the located ones (as at test time)
    w = run['w']
    crops = read_index(w/'conv'/'crops'/'train')
    split = pd.read_csv(w/'models'/'split.csv')
    for col in COLS:
        c = crops[crops.column == col]
        valid = set(split[(split.column == col) & (split.split == 'valid')].study_id)
        assert valid and valid <= set(c[c.source == 'located'].study_id)
        assert set(c.source) == {'annotated', 'located'}
    assert json.loads((w/'models'/'levels.json').read_text())['settings']['train_crops'] == 'annotated'


def test_train_crops_located_cuts_only_located_crops(run, tmp_path, capsys):
    # train_crops='located': the learners train on the crops the localiser gives; the finished localiser (same seed as
    # `lsdc train`'s 42) is reused
    from lsdc.levels import LevelSettings, prepare_levels
    w = run['w']
    models = tmp_path/'models'
    shutil.copytree(w/'models', models)
    s = LevelSettings(crop_size=32, loc_size=48, loc_epochs=3, train_crops='located')
    with pytest.raises(ValueError, match='train_crops'):
        prepare_levels(run['data'], w/'conv'/'train', models, tmp_path/'bad', settings=s._replace(train_crops='both'))
    dest = prepare_levels(run['data'], w/'conv'/'train', models, tmp_path/'crops', settings=s, n_workers=1, seed=42, pretrained=False)
    assert 'reused' in capsys.readouterr().out
    crops = read_index(dest)
    assert len(crops) and set(crops.source) == {'located'}
    assert set(crops.column) == set(LABEL_COLUMNS)
    assert json.loads((models/'levels.json').read_text())['settings']['train_crops'] == 'located'


def test_submission_from_test_crops(run):
    w, data = run['w'], run['data']
    sub = pd.read_csv(w/'submission.csv')
    ss = pd.read_csv(data/'sample_submission.csv')
    assert sub.row_id.tolist() == ss.row_id.tolist()
    assert (sub[list(GRADE_KEYS)].sum(axis=1) - 1).abs().max() < 1e-5
    tc = read_index(w/'submission_crops')
    assert set(tc.source) == {'located'} and set(COLS) <= set(tc.column)
    assert 'no converted' not in run['predict']     # only the test studies are expected to have been located
    src = pd.read_csv(w/'submission_sources.csv')
    assert (src[src.column.isin(COLS)].source == 'model').mean() > 0.5     # the crops were found and predicted


def test_report_shows_the_crops(run):
    w = run['w']
    lsdc('report', w/'submission.csv', w/'conv', w/'reports', '--models', w/'models', '--crops', w/'submission_crops',
         '--points', w/'submission_crops'/'points.csv', '--px', 128, '--quiet')
    pages = sorted((w/'reports').glob('study_*.html'))
    assert pages and any('crop' in p.read_text().lower() for p in pages)


def test_tampered_levels_file_is_refused(run, tmp_path):
    w = run['w']
    m = tmp_path/'models'; shutil.copytree(w/'models', m)
    lv = json.loads((m/'levels.json').read_text()); lv['settings']['crop_mm'] = 80.
    (m/'levels.json').write_text(json.dumps(lv))
    r = lsdc('predict', run['data'], m, tmp_path/'sub.csv', '--converted', w/'conv'/'test', '--workers', 1, check=False)
    assert r.returncode != 0 and 'levels.json' in (r.stdout + r.stderr)


def test_second_run_reuses_the_localiser_and_crops(run):
    "Training into the same models folder again (a resumed run, or another shard) reuses the localiser and the crops"
    w = run['w']
    pkl = w/'models'/'localizer'/'localizer.pkl'
    before = (file_sha256(pkl), pkl.stat().st_mtime_ns)
    out = lsdc(*train_args(w, run['data'])).stdout
    assert 'localizer: reused' in out and 'axial slices: reused' in out and '(0 new)' in out, out[-3000:]
    assert (file_sha256(pkl), pkl.stat().st_mtime_ns) == before
