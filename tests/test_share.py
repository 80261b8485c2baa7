"""Learners shared by several columns (`share`), end to end at tiny size on the anatomical phantom: the levels method
trained with share='levels' (by the Python API) and share='sides' (by `lsdc train --share sides`, stage 1 reused) on
the same data and folds, a two-fold split, fold 0 trained ('levels' with the uniform jitter and one view per crop, 'sides' with the
default jitter, its training crops moved by stage 1's measured errors, and two views per crop; ResNet18, 32 px crops, one epoch,
the first model kept, no pretrained weights); then the OOF table, the manifests, the mirrored right crops, the two views, the fold ensemble's
submission and the paired comparison."""
import json, shutil, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image

from lsdc.core import LABEL_COLUMNS, GRADE_KEYS, parse_row_id, split_column, condition_group
from lsdc.files import file_sha256, read_index
from lsdc.png import png_info
from lsdc.data import load_rsna
from lsdc.synth import make_synthetic
from lsdc.dicom import convert_dataset
from lsdc.learners import LearnerSettings, Schedule, Compute, share_groups, learner_from_config, ViewBody
from lsdc.report import gradcams
from lsdc.levels import LevelSettings, ERRORS_FILE
from lsdc.crops import MIRRORED, ERROR_COLUMNS, VIEW_SERIES
from lsdc.pipeline import PipelineSettings, train_pipeline, train_folds, predict_folds, compare_runs, fold_dir, OOF_TABLE, OOF_FILE, read_folds
from helpers import lsdc_in_process

N_TRAIN, N_TEST = 16, 3
LEARNER = LearnerSettings(size=32, arch='resnet18', pretrained=False, aug=False, bs=16, lr_find_iters=5, schedule=Schedule(first=1, keep_above=0.0, short=1, long=1))
LEVELS = LevelSettings(loc_size=48, loc_epochs=2, axial='nearest', jitter='uniform', views=1)   # 'sides' (by the command line): the default, 'errors'


def lsdc(*args):
    "What `lsdc ARGS` printed, run in this process (`helpers.lsdc_in_process`)"
    return lsdc_in_process(*args).stdout


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    w = tmp_path_factory.mktemp('share')
    data = make_synthetic(w/'data', n_train=N_TRAIN, n_test=N_TEST, image_size=96, seed=0, n_workers=1, phantom='anatomical')
    d = load_rsna(data)
    convert_dataset(d, w/'conv'/'train', split='train', size=48, n_workers=1, progress=False)
    s = PipelineSettings(learner=LEARNER, levels=LEVELS, folds=2, which_folds='0', n_boot=50, share='levels')
    cv = train_pipeline(d, w/'conv'/'train', w/'levels', s, Compute(n_workers=1), crops=w/'crops_levels', progress=False)
    # the same split and stage 1 for 'sides': its localizer is reused, its crops are cut again with the right side mirrored
    run_files = lambda d, names: [n for n in names if Path(d) == w/'levels' and (n.startswith(('fold', 'oof', 'cv.', 'manifest.', 'calibration.')))]
    shutil.copytree(w/'levels', w/'sides', ignore=run_files)
    out = lsdc('train', w/'conv'/'train', w/'sides', '--data', data, '--share', 'sides', '--crops', w/'crops_sides', '--size', 32,
               '--arch', 'resnet18', '--no-pretrained', '--no-aug', '--epochs', '1,1,1', '--thresholds', '0,0', '--lr-find-iters', 5, '--bs', 16,
               '--loc-size', 48, '--loc-epochs', 2, '--axial', 'nearest', '--folds', 2, '--train-folds', 0, '--n-boot', 50, '--views', 2)
    sub = predict_folds(d, w/'sides', w/'sub'/'submission.csv', converted=w/'conv'/'test', crops=w/'sub'/'crops', n_workers=1, progress=False)
    return dict(w=w, data=data, cv=cv, train=out, sub=sub, d=d, settings=s)


@pytest.mark.parametrize('share,n', [('levels', 5), ('sides', 3)])
def test_one_model_per_learner_and_fold(run, share, n):
    m, groups = run['w']/share, share_groups(share)
    assert len(groups) == n
    ens = json.loads((m/'manifest.json').read_text())
    assert ens['trained_folds'] == [0]
    for k in ens['trained_folds']:
        fd = fold_dir(m, k)
        man = json.loads((fd/'manifest.json').read_text())
        assert {g: e['columns'] for g, e in man['learners'].items()} == groups == {g: e['columns'] for g, e in ens['learners'][f'fold{k}'].items()}
        assert sorted(p.stem for p in fd.glob('*.safetensors')) == sorted(groups)       # one model file per learner, none per column
        for g, e in man['learners'].items():
            for key, h in (('safetensors', 'safetensors_sha256'), ('config', 'config_sha256'), ('pickle', 'sha256')):
                assert e[key] == f'{g}{Path(e[key]).suffix}' and file_sha256(fd/e[key]) == e[h]
            for c in e['columns']: assert man['columns'][c]['learner'] == g and man['columns'][c]['safetensors_sha256'] == e['safetensors_sha256']
        res = pd.read_csv(fd/'results.csv')
        assert (res.status == 'ok').all() and sorted(res.column) == sorted(LABEL_COLUMNS)
        assert res.groupby('learner').column.apply(sorted).to_dict() == {g: sorted(c) for g, c in groups.items()}


def test_the_command_line_reached_the_setting(run):
    rec = json.loads((fold_dir(run['w']/'sides', 0)/'results'/'left_neural_foraminal_narrowing_l1_l2.json').read_text())
    assert rec['settings']['share'] == 'sides' and rec['learner'] == 'neural_foraminal_narrowing' and len(rec['columns']) == 10
    assert rec['shared']['n_train'] > 5 * rec['n_train']   # the learner read the ten columns' rows
    assert 'localizer: reused' in run['train']


@pytest.mark.parametrize('share', ['levels', 'sides'])
def test_oof_has_25_rows_per_study_from_the_learners(run, share):
    m = run['w']/share
    oof, folds = pd.read_csv(m/OOF_FILE), pd.read_csv(m/'folds.csv').set_index('study_id').fold
    sid = oof.row_id.map(lambda r: parse_row_id(r)[0])
    assert sorted(sid.unique()) == sorted(folds.index[folds == 0]) and (sid.value_counts() == 25).all()
    t = pd.read_csv(m/OOF_TABLE)
    assert (t.groupby('study_id').size() == 25).all()
    crops = read_index(run['w']/f'crops_{share}')
    located = set(zip(crops[crops.source == 'located'].study_id, crops[crops.source == 'located'].column))
    expect = pd.Series([(s, c) in located for s, c in zip(t.study_id, t.column)], index=t.index) & t.grade.notna()
    assert ((t.source == 'model') == expect).all() and expect.mean() > 0.8   # every labelled study-column with its crop, by its learner
    learner = {c: g for g, cs in share_groups(share).items() for c in cs}
    assert t[t.source == 'model'].column.map(learner).nunique() == len(share_groups(share))
    assert (t.fold == t.study_id.map(folds)).all()                      # each study predicted by the fold model that never saw it
    cv = json.loads((m/'cv.json').read_text())['scores']['calibrated']['score']
    assert cv['lo'] <= cv['value'] <= cv['hi'] and 0 < cv['value'] < 10


def test_sides_cut_the_right_crops_mirrored(run):
    w = run['w']
    assert json.loads((w/'sides'/'levels.json').read_text())['settings']['mirror'] is True
    assert json.loads((w/'levels'/'levels.json').read_text())['settings']['mirror'] is False
    for crops, mirror in ((w/'crops_sides', True), (w/'crops_levels', False), (w/'sub'/'crops', True)):
        idx = read_index(crops)
        flags = {c: {png_info(p)['params']['mirror'] for p in g.image} for c, g in idx.groupby('column')}
        assert flags == {c: {mirror and c in MIRRORED} for c in LABEL_COLUMNS}, crops


def test_sides_trained_on_stage_ones_errors(run):
    w = run['w']
    lv, plain = (json.loads((w/m/'levels.json').read_text()) for m in ('sides', 'levels'))
    assert lv['settings']['jitter'] == 'errors' and plain['settings']['jitter'] == 'uniform' and 'errors' not in plain
    errs = pd.read_csv(w/'crops_sides'/ERRORS_FILE)
    assert tuple(errs.columns) == ERROR_COLUMNS and len(errs) == lv['errors']['n'] > 0.8 * N_TRAIN * 5
    assert "stage 1's errors, out of fold: " in run['train']
    for crops, errors in ((w/'crops_sides', True), (w/'crops_levels', False)):
        ann = read_index(crops).query("source == 'annotated'")
        params = ann.assign(p=[png_info(f)['params'] for f in ann.image])
        assert {p['jitter_mm'] for p in params.p} == ({0.} if errors else {2.})
        moved = params[[('shift' in p) for p in params.p]]
        if not errors: assert moved.empty; continue
        assert len(moved) > 0.8 * len(ann)
        shifts = np.array([p['shift'][:3] for p in moved.p])
        measured = errs[['dx', 'dy', 'dz']].to_numpy()
        assert (np.abs(shifts[:, None] - measured[None]).max(-1).min(1) < 1e-3).all()      # each move is a measured error
        same = moved.assign(level=[split_column(c)[1] for c in moved.column], s=[tuple(p['shift']) for p in moved.p])
        assert (same.groupby(['study_id', 'level']).s.nunique() == 1).all()                # a level's crops move together


def test_sides_read_two_views_of_each_level(run):
    w = run['w']
    assert json.loads((w/'sides'/'levels.json').read_text())['settings']['views'] == 2
    for crops, views in ((w/'crops_sides', 2), (w/'crops_levels', 1), (w/'sub'/'crops', 2)):   # the test crops as the training crops
        idx = read_index(crops)
        for r in idx.groupby('column').head(1).itertuples():
            info = png_info(r.image)
            assert Image.open(r.image).size == (32 * views, 32) and info['params'].get('views', 1) == views, r.image
            if views == 1: assert 'views' not in info; continue
            (v,) = info['views']
            assert v['series_description'] == VIEW_SERIES[condition_group(r.column)] and ('missing' in v or v['series_id'] != r.series_id)
    fd = fold_dir(w/'sides', 0)
    cfg = json.loads((fd/'spinal_canal_stenosis.json').read_text())
    assert cfg['views'] == 2 and cfg['image_size'] == [32, 64] and 'views' not in json.loads((fold_dir(w/'levels', 0)/'spinal_canal_stenosis.json').read_text())
    learn = learner_from_config(cfg, fd/'spinal_canal_stenosis.safetensors')     # rebuilt from the config: one backbone per view
    assert isinstance(learn.model[0], ViewBody) and learn.model[0].views == 2
    img = read_index(w/'sub'/'crops').query("column == 'spinal_canal_stenosis_l4_l5'").image.iloc[0]
    (cam,) = gradcams(learn, [img])
    assert cam.shape == (32, 64) and np.isfinite(cam).all()                      # the heatmap covers both views


def test_predict_folds_writes_a_full_submission(run):
    sub, data = run['sub'], run['data']
    ss = pd.read_csv(data/'sample_submission.csv')
    assert sub.row_id.tolist() == ss.row_id.tolist() and len(sub) == N_TEST * 25
    v = sub[list(GRADE_KEYS)].to_numpy()
    assert np.isfinite(v).all() and np.allclose(v.sum(1), 1, atol=1e-6)
    src = pd.read_csv(run['w']/'sub'/'submission_sources.csv')
    assert set(src[src.source == 'model'].column) == set(LABEL_COLUMNS)


def test_shared_runs_compare_and_resume(run):
    w = run['w']
    d = compare_runs(w/'sides', w/'levels', n_boot=100)
    assert int(d.n_studies.iloc[0]) == len(read_folds(w/'sides').query('fold == 0')) and set(d.index) >= {'score'}
    st = fold_dir(w/'levels', 0)/'spinal_canal_stenosis.safetensors'
    before = st.stat().st_mtime_ns
    res = train_folds(w/'crops_levels', w/'levels', run['d'].train, run['settings']._replace(which_folds='0'), Compute(n_workers=1), progress=False)
    assert (res.status == 'ok').all() and st.stat().st_mtime_ns == before     # resumed: every learner already trained with these settings


def test_shared_learners_need_level_crops(run, tmp_path):
    with pytest.raises(ValueError, match="share='levels' shares learners"):
        train_pipeline(run['d'], run['w']/'conv'/'train', tmp_path/'m', PipelineSettings(inputs='middle', share='levels'), progress=False)
    with pytest.raises(ValueError, match='share must be one of'):
        train_pipeline(run['d'], run['w']/'conv'/'train', tmp_path/'m', PipelineSettings(share='columns'), progress=False)
