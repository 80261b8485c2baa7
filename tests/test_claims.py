"""One writer per column, resuming that compares settings, sweeping that spares live runs, and configs from a stranger's
models folder: `lsdc train` processes racing on the same columns, a rerun with another --size, leftovers of live and
dead processes, and configs that name code or absurd sizes. Tiny sizes: 16 synthetic studies, 32 px, ResNet18 from
scratch, one epoch, the first model kept."""
import json, os, re, shutil, socket, subprocess, sys
from pathlib import Path
from unittest import mock
import pytest, torch

from lsdc.core import GRADES
from lsdc.files import ModelIntegrityError, file_sha256, read_results
from lsdc.disk import file_lock
from helpers import lsdc_in_process

COLS = ['spinal_canal_stenosis_l1_l2', 'spinal_canal_stenosis_l2_l3']
CLI = 'import sys; from lsdc.cli import main; sys.exit(main(sys.argv[1:]))'
TINY = ('--inputs', 'middle', '--folds', '2', '--train-folds', '0', '--n-boot', '50', '--arch', 'resnet18', '--no-pretrained', '--epochs', '1,1,1', '--thresholds', '0,0',
        '--lr-find-iters', '5', '--bs', '16')
F = 'fold0'   # `lsdc train --train-folds 0`: the learners of fold 0 of the study-level split, in their own models folder


def train_cmd(converted, models, synth, *more):
    "`lsdc train` in a child process (run it outside the checkout: `-c` puts the working folder first on sys.path)"
    return [sys.executable, '-c', CLI, 'train', str(converted), str(models), '--data', str(synth), *TINY, *map(str, more)]


def train_ok(converted, models, synth, *more) -> str:
    "What `lsdc train` printed, run in this process (`helpers.lsdc_in_process`); it must succeed"
    return lsdc_in_process('train', converted, models, '--data', synth, *TINY, *more).stdout


@pytest.fixture(scope='module')
def converted(synth_data, tmp_path_factory):
    from lsdc.dicom import convert_dataset
    dest = tmp_path_factory.mktemp('conv')
    convert_dataset(synth_data, dest, split='train', size=48, n_workers=1, progress=False)
    return dest


def leftovers(m) -> list:
    "Temporary files anywhere below `m` and anything in its `_work` folder"
    return sorted(str(p.relative_to(m)) for p in [*m.rglob('.*.tmp'), *(p for p in m.rglob('*') if p.parent.name == '_work')])


def test_two_runs_on_the_same_columns(converted, synth_data, tmp_path):
    # two `lsdc train` started at once on the same columns into one folder (a job resubmitted while the first still
    # runs): both succeed, and each column's pickle, safetensors, config and record come from one training. The test
    # holds the first column's claim until both runs wait on it (a third run training it), so that they surely meet
    # however fast a machine trains; then the two race for it and for the second column.
    import time
    m = tmp_path/'models'
    cmd = train_cmd(converted, m, synth_data, '--columns', ','.join(COLS), '--size', 32)
    logs = [tmp_path/f'run{i}.log' for i in (0, 1)]
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    with file_lock(m/F/'claims'/f'{COLS[0]}.lock'):
        procs = [subprocess.Popen(cmd, stdout=open(fn, 'w'), stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env) for fn in logs]
        t0 = time.time()
        while not all(f'{COLS[0]}: another run is training it; waiting' in fn.read_text() for fn in logs):
            assert time.time() - t0 < 300 and all(p.poll() is None for p in procs), '\n=====\n'.join(fn.read_text()[-3000:] for fn in logs)
            time.sleep(0.1)
    for p in procs: p.wait(timeout=600)
    outs = [fn.read_text() for fn in logs]
    assert [p.returncode for p in procs] == [0, 0], '\n=====\n'.join(o[-3000:] for o in outs)
    man = json.loads((m/F/'manifest.json').read_text())['columns']
    recs = read_results(m/F)
    assert sorted(man) == sorted(COLS)
    for c in COLS:
        r, e = recs[c], man[c]
        for name, key in (('pickle', 'sha256'), ('safetensors', 'safetensors_sha256'), ('config', 'config_sha256')):
            assert r[key] == e[key] == file_sha256(m/F/e[name]), (c, name)
        from fastai.learner import load_learner   # our own folder: unpickling is fine here
        from safetensors.torch import load_file
        pkl, st = load_learner(m/F/e['pickle']).model.state_dict(), load_file(m/F/e['safetensors'])
        assert sorted(pkl) == sorted(st) and all(torch.equal(pkl[k].float(), st[k].float()) for k in st), c   # one training
        assert json.loads((m/F/e['config']).read_text())['image_size'] == r['image_size'] == 32
    assert leftovers(m) == []
    said = '\n'.join(outs)
    assert said.count('another run trained it with these settings meanwhile; skipped') + said.count('already trained, skipped') == len(COLS), said


@pytest.fixture(scope='module')
def trained32(converted, synth_data, tmp_path_factory):
    m = tmp_path_factory.mktemp('t32')/'models'
    train_ok(converted, m, synth_data, '--columns', COLS[0], '--size', 32)
    return m


def test_rerun_with_another_size_retrains(trained32, converted, synth_data, tmp_path):
    m = tmp_path/'models'; shutil.copytree(trained32, m)
    before = read_results(m/F)[COLS[0]]
    out = train_ok(converted, m, synth_data, '--columns', COLS[0], '--size', 48)
    assert f'{COLS[0]}: trained with other settings (image_size 32 -> 48); training it again' in out, out
    assert 'already trained, skipped' not in out, out
    after = read_results(m/F)[COLS[0]]
    assert (before['image_size'], after['image_size']) == (32, 48) and after['settings']['image_size'] == 48
    assert after['settings_sha256'] != before['settings_sha256']
    man = json.loads((m/F/'manifest.json').read_text())['columns'][COLS[0]]
    assert man['image_size'] == 48 and man['settings_sha256'] == after['settings_sha256'] and man['inputs'] == 'middle'
    assert man['sha256'] == file_sha256(m/F/man['pickle']) != before['sha256']
    assert json.loads((m/F/man['config']).read_text())['image_size'] == 48
    out = train_ok(converted, m, synth_data, '--columns', COLS[0], '--size', 48)   # the same settings again: resumed
    assert f'{COLS[0]}: already trained, skipped' in out and read_results(m/F)[COLS[0]] == after, out


def owned(pid) -> str:
    "`lsdc.disk.owner_tag(pid)` spelt out, so that this test runs against an lsdc without it too"
    return f"{pid}@{re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname())[:60] or 'host'}"


def test_sweep_spares_live_processes(tmp_path):
    # a live process's temporaries and work folder stay, whoever else writes in the folder; a dead one's go
    import lsdc.disk, lsdc.learners
    from lsdc.learners import models_lock
    m = tmp_path/'models'
    live = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    dead = subprocess.Popen([sys.executable, '-c', '']); dead.wait()
    try:
        files = {pid: [m/f'.{COLS[0]}.pkl.{owned(pid)}.k3j2.pkl.tmp', m/'results'/f'.{COLS[0]}.json.{owned(pid)}.a1b2.json.tmp',
                       m/'_work'/f'{COLS[0]}.{owned(pid)}'/'best.pth'] for pid in (live.pid, dead.pid)}
        for fn in files[live.pid] + files[dead.pid]: fn.parent.mkdir(parents=True, exist_ok=True); fn.write_bytes(b'half')
        with models_lock(m): pass
        assert [fn.exists() for fn in files[live.pid]] == [True] * 3
        assert [fn.exists() for fn in files[dead.pid]] == [False] * 3 and not (m/'_work'/f'{COLS[0]}.{owned(dead.pid)}').exists()
        assert lsdc.learners.sweep_leftovers is lsdc.disk.sweep_leftovers    # one home
    finally: live.kill(); live.wait()
    with models_lock(m): pass                                                  # now that it is dead, its files go
    assert leftovers(m) == []


GOOD = dict(format='lsdc.learner/1', column=COLS[0], architecture='resnet18', n_out=3, classes=list(GRADES), image_size=32,
            item_tfms=[{'name': 'Resize', 'size': [32, 32], 'method': 'crop', 'pad_mode': 'reflection', 'resamples': [2, 0]},
                       {'name': 'ToTensor'}],
            batch_tfms=[{'name': 'IntToFloatTensor', 'div': 255.0, 'div_mask': 1.0}], class_weights=None)


@pytest.mark.parametrize('key,value,said', [
    ('architecture', 'not_a_net', "architecture 'not_a_net' is not a known torchvision architecture; refusing it"),
    ('architecture', 'hf-hub:someone/evil', "architecture 'hf-hub:someone/evil' is not a known torchvision architecture; refusing it"),
    ('architecture', 'get_weight', "architecture 'get_weight' is not a known torchvision architecture"),   # a torchvision function
    ('image_size', 10**6, 'image_size 1000000 is not a whole number of pixels'),
    ('classes', [*GRADES, 'Unknown'], "classes ['Normal/Mild', 'Moderate', 'Severe', 'Unknown'] are not lsdc's grades"),
    ('item_tfms', [{'name': 'Resize', 'size': [10**6, 32]}], 'item_tfms Resize size [1000000, 32] is not a whole number'),
])
def test_stranger_config_is_refused_before_a_model_is_built(tmp_path, key, value, said):
    import lsdc.learners as L
    weights = tmp_path/'models'/f'{COLS[0]}.safetensors'
    built = AssertionError('a model was built')
    with mock.patch.object(L, 'vision_learner', side_effect=built), mock.patch.object(L, 'resolve_arch', side_effect=built):
        with pytest.raises(ModelIntegrityError) as e: L.learner_from_config({**GOOD, key: value}, weights)
    assert str(e.value).startswith(f"{weights.with_suffix('.json')}: {said}"), str(e.value)
    if key == 'architecture': assert '--trust-pickles only if you trust this folder' in str(e.value)


def test_known_archs_and_trusted_names():
    from lsdc.learners import check_learner_config, known_archs
    assert {'resnet18', 'resnet34', 'efficientnet_b0'} <= set(known_archs()) and 'get_weight' not in known_archs()
    assert check_learner_config(GOOD) == GOOD
    assert check_learner_config({**GOOD, 'architecture': 'hf-hub:someone/model'}, trusted=True)['architecture'] == 'hf-hub:someone/model'
    with pytest.raises(ModelIntegrityError, match=r"^x\.json: n_out 4 is not 3"): check_learner_config({**GOOD, 'n_out': 4}, name='x.json')
    with pytest.raises(ModelIntegrityError, match='class_weights'): check_learner_config({**GOOD, 'class_weights': [1, 2, -4]})


def test_levels_files_only_with_level_columns(tmp_path):
    # a levels.json beside middle-slice models is not listed; a column trained on level crops lists it and its files
    from lsdc.files import write_result
    from lsdc.learners import collect_results
    m = tmp_path/'models'; m.mkdir()
    (m/'levels.json').write_text(json.dumps({'files': {'localizer/localizer.json': 'a' * 64}}))
    rec = lambda c, inputs: dict(column=c, status='ok', pickle=f'{c}.pkl', sha256='0' * 64, inputs=inputs)
    write_result(m, rec(COLS[0], 'middle')); collect_results(m, plots=False)
    man = json.loads((m/'manifest.json').read_text())
    assert man['inputs'] == ['middle'] and 'levels' not in man and 'files' not in man
    write_result(m, rec(COLS[1], 'levels')); collect_results(m, plots=False)
    man = json.loads((m/'manifest.json').read_text())
    assert man['inputs'] == ['levels', 'middle'] and man['columns'][COLS[1]]['inputs'] == 'levels'
    assert man['files'] == {'levels.json': file_sha256(m/'levels.json'), 'localizer/localizer.json': 'a' * 64}
    assert man['levels'] == {'file': 'levels.json', 'sha256': file_sha256(m/'levels.json')}
