"""The levels method end to end at tiny size, through the `lsdc` command: synth (anatomical) -> convert -> train
--inputs levels (a two-fold study-level split; the localizer, crops, and fold 0's learners) -> predict -> report; and
what keeps it honest."""
import json, shutil, subprocess, sys
from pathlib import Path
import pandas as pd, pytest

from lsdc.core import LABEL_COLUMNS, GRADE_KEYS
from lsdc.files import read_index, file_sha256, ModelIntegrityError
from helpers import lsdc_in_process

# the real data's mess, far more of it than the real data has: the run must survive every kind
MESS = 'feet_first=0.2,axial_stacks=0.3,same_slice=0.2,wrong_region=0.15,mislabelled=0.15,sizes=0.3,bias=0.3,displaced=0.1'
COLS = ['spinal_canal_stenosis_l4_l5', 'left_neural_foraminal_narrowing_l4_l5', 'right_subarticular_stenosis_l4_l5']


def lsdc(*args, check=True):
    "`lsdc ARGS`, in this process (`helpers.lsdc_in_process`); the completed process"
    return lsdc_in_process(*args, check=check)


def train_args(w, data):
    return ('train', w/'conv'/'train', w/'models', '--data', data, '--inputs', 'levels', '--columns', ','.join(COLS),
            '--size', 32, '--arch', 'resnet18', '--no-pretrained', '--no-aug', '--epochs', '1,1,1', '--thresholds', '0,0', '--lr-find-iters', 5,
            '--bs', 16, '--loc-size', 48, '--loc-epochs', 3, '--folds', 2, '--train-folds', 0, '--n-boot', 50)


def run_folds(w) -> dict:
    "The run's study-level split, `{study_id: fold}`: what stage 1 was trained on"
    f = pd.read_csv(w/'models'/'folds.csv')
    return dict(zip(f.study_id, f.fold))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    w = tmp_path_factory.mktemp('levels')
    data = w/'data'
    lsdc('synth', data, '--n-train', 24, '--n-test', 3, '--image-size', 96, '--workers', 1, '--mess', MESS)
    lsdc('convert', data, w/'conv'/'train', '--split', 'train', '--size', 64, '--workers', 1, '--quiet')
    train = lsdc(*train_args(w, data))
    pred = lsdc('predict', data, w/'models', w/'submission.csv', '--converted', w/'conv'/'test', '--workers', 1)
    return dict(w=w, data=data, train=train.stdout, train_err=train.stderr, predict=pred.stdout + pred.stderr)


def test_odd_series_are_skipped_and_named(run):
    "The cervical and the coronal series of the messy set: each named in one line and left out of the conversion"
    mess = pd.read_csv(run['data']/'mess.csv')
    odd = mess[mess.kind.isin(['wrong_region', 'mislabelled'])]
    assert set(odd.kind) == {'wrong_region', 'mislabelled'}, mess.kind.value_counts()
    crops = pd.read_csv(run['w']/'conv'/'crops'/'train'/'index.csv')   # `lsdc convert` converts what the folder lists; training reads the screened series
    points = pd.read_csv(run['w']/'models'/'localizer'/'oof_points.csv')
    for sid, detail in zip(odd.study_id, odd.detail):
        ser = int(detail.split()[1].rstrip(':'))
        assert ser not in set(crops.series_id) and ser not in set(points.series_id)
        if sid in set(pd.read_csv(run['data']/'train.csv').study_id):
            line = [l for l in run['train_err'].splitlines() if f'study {sid} series {ser} ' in l]
            assert len(line) == 1 and line[0].rstrip().endswith('skipped'), (sid, ser, run['train_err'][-2000:])


def test_manifest_lists_the_levels_files(run):
    m = run['w']/'models'
    man = json.loads((m/'manifest.json').read_text())
    fold = json.loads((m/'fold0'/'manifest.json').read_text())
    assert {c: e['inputs'] for c, e in fold['columns'].items()} == {c: 'levels' for c in COLS}
    assert man['inputs'] == ['levels'] and man['trained_folds'] == [0] and man['files']['fold0/manifest.json'] == file_sha256(m/'fold0'/'manifest.json')
    assert man['levels']['sha256'] == file_sha256(m/'levels.json')
    lv = json.loads((m/'levels.json').read_text())
    assert lv['settings']['crop_size'] == 32 and lv['settings']['axial'] == 'learned'
    assert sorted(lv['files']) == ['axial/axial.json', 'axial/axial.safetensors', 'axial/oof_slices.csv', 'localizer/localizer.json',
                                   'localizer/localizer.pkl', 'localizer/localizer.safetensors', 'localizer/oof_points.csv']
    for name, h in lv['files'].items(): assert file_sha256(m/name) == h == man['files'][name]
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
    from lsdc.png import png_info
    w = run['w']
    models = tmp_path/'models'
    shutil.copytree(w/'models', models, ignore=shutil.ignore_patterns('axial'))
    s = LevelSettings(crop_size=32, loc_size=48, loc_epochs=3, axial='nearest')
    with pytest.raises(ValueError, match="axial must be 'learned' or 'nearest'"):
        prepare_levels(run['data'], w/'conv'/'train', models, tmp_path/'bad', settings=s._replace(axial='best'))
    dest = prepare_levels(run['data'], w/'conv'/'train', models, tmp_path/'crops', settings=s, n_workers=1, seed=42, pretrained=False,
                          folds=run_folds(w))
    assert not (models/'axial').exists()
    assert not [f for f in json.loads((models/'levels.json').read_text())['files'] if f.startswith('axial/')]
    crops = read_index(dest)
    sub = crops[(crops.source == 'located') & crops.column.str.contains('subarticular')]
    assert len(sub) and not any('axial' in png_info(p)['params'] for p in sub.image)
    r = lsdc(*train_args(w, run['data']), '--axial', 'best', check=False)
    assert r.returncode == 2 and "--axial must be 'learned' or 'nearest', got 'best'" in r.stderr


def test_validation_sees_located_crops_training_annotated(run):
    # the training part of each column reads annotated crops, its validation part the located ones (as at test time)
    w = run['w']
    crops = read_index(w/'conv'/'crops'/'train')
    split = pd.read_csv(w/'models'/'fold0'/'split.csv')
    for col in COLS:
        c = crops[crops.column == col]
        valid = set(split[(split.column == col) & (split.split == 'valid')].study_id)
        assert valid and valid <= set(c[c.source == 'located'].study_id)
        assert set(c.source) == {'annotated', 'located'}
    assert json.loads((w/'models'/'levels.json').read_text())['settings']['train_crops'] == 'annotated'


def test_train_crops_located_cuts_only_located_crops(run, tmp_path, capsys):
    # train_crops='located': the learners train on the crops the localizer gives; the finished localizer (same seed as
    # `lsdc train`'s 42, same folds) is reused
    from lsdc.levels import LevelSettings, prepare_levels
    w = run['w']
    models = tmp_path/'models'
    shutil.copytree(w/'models', models)
    s = LevelSettings(crop_size=32, loc_size=48, loc_epochs=3, train_crops='located')
    with pytest.raises(ValueError, match='train_crops'):
        prepare_levels(run['data'], w/'conv'/'train', models, tmp_path/'bad', settings=s._replace(train_crops='both'))
    dest = prepare_levels(run['data'], w/'conv'/'train', models, tmp_path/'crops', settings=s, n_workers=1, seed=42, pretrained=False,
                          folds=run_folds(w))
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


def test_second_run_reuses_the_localizer_and_crops(run):
    "Training into the same models folder again (a resumed run, or another shard) reuses the localizer and the crops"
    w = run['w']
    pkl = w/'models'/'localizer'/'localizer.pkl'
    before = (file_sha256(pkl), pkl.stat().st_mtime_ns)
    out = lsdc(*train_args(w, run['data'])).stdout
    assert 'localizer: reused' in out and 'axial slices: reused' in out and '(0 new)' in out, out[-3000:]
    assert (file_sha256(pkl), pkl.stat().st_mtime_ns) == before


# ---------------------------------------------------------------- a stranger's models folder runs no code
class Payload:
    "A pickle that, when loaded, writes a marker file: what an attacker's pickle would do instead"
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def write_payload(fn, marker) -> str:
    import pickle
    Path(fn).parent.mkdir(parents=True, exist_ok=True)
    Path(fn).write_bytes(pickle.dumps(Payload(marker)))
    return file_sha256(fn)


def predict_folder(run, m, tmp_path, *extra):
    "`lsdc predict` on models folder `m`, in this process (as the command line runs it): exit code and what it printed"
    import contextlib, io
    from lsdc.cli import main
    w, out = run['w'], io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(['predict', *map(str, (run['data'], m, tmp_path/'sub.csv', '--converted', w/'conv'/'test', '--workers', 1, *extra))])
    return code, out.getvalue()


def one_error_line(out: str) -> str:
    lines = [l for l in out.splitlines() if l.startswith('lsdc predict:')]
    assert len(lines) == 1 and 'Traceback' not in out, out[-3000:]
    return lines[0]


def test_the_reported_attack_runs_no_code(run, tmp_path):
    "manifest.json with only a `levels` entry, levels.json with an empty localizer, localizer.json naming a payload pickle by an absolute path"
    marker, m = tmp_path/'pwned', tmp_path/'models'
    evil = tmp_path/'elsewhere'/'evil.pkl'
    h = write_payload(evil, marker)
    (m/'localizer').mkdir(parents=True)
    (m/'localizer'/'localizer.json').write_text(json.dumps({'file': str(evil), 'sha256': h}))
    lv = json.loads((run['w']/'models'/'levels.json').read_text())
    (m/'levels.json').write_text(json.dumps({'settings': {**lv['settings'], 'axial': 'nearest'}, 'offsets': lv['offsets'], 'localizer': {}}))
    (m/'manifest.json').write_text(json.dumps({'levels': {'file': 'levels.json', 'sha256': file_sha256(m/'levels.json')}}))
    code, out = predict_folder(run, m, tmp_path)
    assert not marker.exists(), 'the payload ran'
    assert code != 0 and 'levels.json' in one_error_line(out)


def attacked(run, tmp_path, name):
    "A copy of the genuine models folder to attack"
    m = tmp_path/name; shutil.copytree(run['w']/'models', m)
    return m


def relist(m, **extra):
    "Make the manifest and levels.json vouch for the stages' records as they are now, and for `extra` files (an attacker controls the whole folder)"
    man, lv = json.loads((m/'manifest.json').read_text()), json.loads((m/'levels.json').read_text())
    lv['files'] = lv.get('files', {}) | {f'{sub}/{sub}.json': file_sha256(m/sub/f'{sub}.json') for sub in ('localizer', 'axial')} | extra
    for sub in ('localizer', 'axial'):   # and as an earlier release's levels.json listed them, so that the attack is one on it too
        lv[sub] = {fn.name: file_sha256(fn) for fn in sorted((m/sub).iterdir()) if fn.suffix in ('.pkl', '.json', '.safetensors')}
    (m/'levels.json').write_text(json.dumps(lv))
    man['files'] = {**man.get('files', {}), **lv['files'], 'levels.json': file_sha256(m/'levels.json')}
    man['levels'] = {'file': 'levels.json', 'sha256': file_sha256(m/'levels.json')}
    (m/'manifest.json').write_text(json.dumps(man))


def edit_record(m, sub, **changes):
    fn = m/sub/f'{sub}.json'
    fn.write_text(json.dumps({**json.loads(fn.read_text()), **changes}))


@pytest.mark.parametrize('variant', ['pickle_beside_localizer', 'up_and_out', 'absolute', 'symlink_out', 'unlisted_oof',
                                     'column_pickle', 'unknown_arch'])
def test_attack_variants_run_no_code_and_read_nothing_outside(run, tmp_path, variant):
    "Each way a folder could make `lsdc predict` unpickle, or read a file outside it, or build what its config asks: refused in one line"
    marker, m = tmp_path/'pwned', attacked(run, tmp_path, 'models')
    loc = m/'localizer'
    outside, out_pkl = tmp_path/'outside.safetensors', tmp_path/'outside.pkl'   # copies of the genuine files, outside the folder
    for f, o in (('localizer.safetensors', outside), ('localizer.pkl', out_pkl)):
        if (loc/f).exists(): shutil.copy(loc/f, o)     # (an earlier release's folder has no safetensors)
    h, hp = (file_sha256(o) if o.exists() else None for o in (outside, out_pkl))
    if variant == 'pickle_beside_localizer':       # the record names only a payload pickle, as an earlier release's would
        rec = json.loads((loc/'localizer.json').read_text())
        p = write_payload(loc/'evil.pkl', marker)
        (loc/'localizer.json').write_text(json.dumps({k: v for k, v in rec.items() if not k.startswith('safetensors')} | {'file': 'evil.pkl', 'sha256': p}))
        relist(m, **{'localizer/evil.pkl': p}); expect = 'localizer.json: the localizer has no safetensors weights'
    elif variant in ('up_and_out', 'absolute'):    # the record names files outside the folder, listed with their true hashes
        st, pk = (('../../outside.safetensors', '../../outside.pkl') if variant == 'up_and_out' else (str(outside), str(out_pkl)))
        edit_record(m, 'localizer', safetensors=st, file=pk); relist(m, **{f'localizer/{st}': h, f'localizer/{pk}': hp})
        expect = 'outside the models folder'
    elif variant == 'symlink_out':                 # the weights and the pickle are symlinks to files outside, of the same content
        for f, o in (('localizer.safetensors', outside), ('localizer.pkl', out_pkl)):
            if o.exists(): (loc/f).unlink(); (loc/f).symlink_to(o)
        expect = 'outside the models folder'
    elif variant == 'unlisted_oof':                # the out-of-fold table is one the manifest does not list
        (loc/'other.csv').write_text((loc/'oof_points.csv').read_text())
        edit_record(m, 'localizer', oof='other.csv', oof_sha256=file_sha256(loc/'other.csv')); relist(m); expect = 'other.csv: not listed'
    elif variant == 'column_pickle':               # the only model of a column is a payload pickle, listed with its hash
        col, f0 = COLS[0], m/'fold0'; man = json.loads((f0/'manifest.json').read_text())
        man['columns'][col] |= {'pickle': f'{col}.pkl', 'sha256': write_payload(f0/f'{col}.pkl', marker), 'safetensors': None}
        (f0/'manifest.json').write_text(json.dumps(man))
        top = json.loads((m/'manifest.json').read_text()); top['files']['fold0/manifest.json'] = file_sha256(f0/'manifest.json')
        (m/'manifest.json').write_text(json.dumps(top)); expect = f'{col} has no safetensors weights'
    elif variant == 'unknown_arch':                # a config that would have timm fetch a model from the network
        cfg = json.loads((loc/'localizer.json').read_text()).get('config', {})
        edit_record(m, 'localizer', config={**cfg, 'architecture': 'hf-hub:someone/model'}); relist(m); expect = "'hf-hub:someone/model'"
    code, out = predict_folder(run, m, tmp_path)
    assert not marker.exists(), 'the payload ran'
    assert code != 0 and expect in one_error_line(out), out[-2000:]


def test_trusted_genuine_folder_predicts(run, tmp_path):
    "With --trust-pickles a genuine folder predicts from its pickles, the localizer's too, as it does from the safetensors"
    code, out = predict_folder(run, run['w']/'models', tmp_path, '--trust-pickles')
    assert code == 0, out[-3000:]
    a, b = pd.read_csv(tmp_path/'sub.csv'), pd.read_csv(run['w']/'submission.csv')
    assert a.row_id.tolist() == b.row_id.tolist()
    pa, pb = (pd.read_csv(d/'points.csv').sort_values(['study_id', 'level']) for d in (tmp_path/'sub_crops', run['w']/'submission_crops'))
    assert (pa[['x', 'y']].to_numpy() - pb[['x', 'y']].to_numpy()).__abs__().max() < 1e-3   # the localizer's pickle and weights agree
    assert (a[list(GRADE_KEYS)] - b[list(GRADE_KEYS)]).abs().max().max() < 1e-3        # (a crop cut 1e-5 px apart moves a grade by 1e-4)


def test_folder_of_an_earlier_release(run, tmp_path):
    "A levels folder written before the localizer was saved as weights: refused with the re-export message, then re-exported"
    from lsdc.inference import reexport_levels
    from lsdc.levels import read_levels
    from lsdc.learners import collect_results
    m = attacked(run, tmp_path, 'models')
    (m/'manifest.json').unlink()                   # an earlier release's folder had no folds: the columns beside stage 1
    for f in (m/'fold0').iterdir(): shutil.move(str(f), str(m/f.name))
    collect_results(m, plots=False)
    rec = json.loads((m/'localizer'/'localizer.json').read_text())
    (m/'localizer'/'localizer.json').write_text(json.dumps({k: v for k, v in rec.items() if k.split('_')[0] not in ('safetensors', 'config', 'oof')}))
    (m/'localizer'/'localizer.safetensors').unlink()
    lv = json.loads((m/'levels.json').read_text())
    old = {'settings': lv['settings'], 'offsets': lv['offsets'],
           **{sub: {fn.name: file_sha256(fn) for fn in sorted((m/sub).glob(f'{sub}.*')) if fn.suffix in ('.pkl', '.json', '.safetensors')}
              for sub in ('localizer', 'axial')}}
    (m/'levels.json').write_text(json.dumps(old))
    man = json.loads((m/'manifest.json').read_text()); man.pop('files', None)
    man['levels'] = {'file': 'levels.json', 'sha256': file_sha256(m/'levels.json')}; (m/'manifest.json').write_text(json.dumps(man))
    code, out = predict_folder(run, m, tmp_path)
    assert code != 0 and 'reexport_levels' in one_error_line(out) and '--trust-pickles' in out
    assert reexport_levels(m) == ['localizer']
    assert (m/'localizer'/'localizer.safetensors').is_file() and read_levels(m).settings.crop_size == 32
    code, out = predict_folder(run, m, tmp_path)
    assert code == 0, out[-3000:]
