"""lsdc.sampling + lsdc.learners on the real pipeline at tiny size: synthetic DICOM -> PNG conversion -> training.

One module-scoped run trains two columns (ResNet18 and ResNet34, 64 px, one epoch, the first model kept, no pretrained weights)
into one models folder as two shards, with a third column that must fail; the tests read what it wrote."""
import json, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest

from lsdc.core import GRADES, LABEL_COLUMNS
from lsdc.files import read_index, file_sha256, read_results
from lsdc.sampling import training_table, grade_counts
from lsdc.learners import (Schedule, LearnerSettings, Compute, epoch_threshold_train, train_columns, shard_columns, parse_columns,
                           column_done, collect_results)

COLS = ['spinal_canal_stenosis_l4_l5', 'left_neural_foraminal_narrowing_l4_l5']
FAILING = 'right_subarticular_stenosis_l1_l2'   # all labels removed: no study to train on
TINY = LearnerSettings(size=64, pretrained=False, bs=16, lr_find_iters=5, schedule=Schedule(first=1, keep_above=0.0, short=1, long=1))


@pytest.fixture(scope='module')
def synth(request, tmp_path_factory):
    "The lead's `synth_data` fixture when conftest provides it, else the same tiny set made here"
    try: return Path(request.getfixturevalue('synth_data'))
    except pytest.FixtureLookupError:
        from lsdc.synth import make_synthetic
        return Path(make_synthetic(tmp_path_factory.mktemp('synth'), n_train=16, n_test=3, image_size=128, seed=0, n_workers=1,
                                         phantom='middle'))


@pytest.fixture(scope='module')
def converted(synth, tmp_path_factory):
    from lsdc.dicom import convert_dataset
    dest = tmp_path_factory.mktemp('converted')
    convert_dataset(synth, dest, split='train', size=64, n_workers=1, progress=False)
    return dest


@pytest.fixture(scope='module')
def labels(synth):
    from lsdc.data import load_rsna
    lab = load_rsna(synth, splits=('train',), check_images=False).train
    return lab.assign(**{FAILING: np.nan})


@pytest.fixture(scope='module')
def models(converted, labels, tmp_path_factory):
    "Two shards into one folder: shard 0/2 (ResNet18) gets COLS[0] and FAILING, shard 1/2 (ResNet34) gets COLS[1]"
    dest = tmp_path_factory.mktemp('models')
    cols = COLS + [FAILING]
    assert shard_columns(parse_columns(cols), '0/2') == [COLS[0], FAILING]
    train_columns(converted, dest, labels=labels, columns=cols, shard='0/2', settings=TINY._replace(arch='resnet18'), progress=False)
    train_columns(converted, dest, labels=labels, columns=cols, shard='1/2', settings=TINY._replace(arch='resnet34'), progress=False)
    return dest


def test_split_has_no_leak(models, converted, labels):
    split = pd.read_csv(models/'split.csv')
    assert set(split.column) == set(COLS)
    assert (split.groupby(['column', 'study_id']).split.nunique() == 1).all()     # no study on both sides
    index = read_index(converted)
    for col in COLS:
        table, info = training_table(labels, index, col)
        s = split[split.column == col].set_index('study_id').split
        assert dict(s) == {int(r.study_id): 'valid' if r.is_valid else 'train' for r in table.itertuples()}
        assert not set(table[table.is_valid].image) & set(table[~table.is_valid].image)
        # validation keeps the natural grades of the studies assigned to it: no upsampling there
        valid_ids = s.index[s == 'valid']
        want = grade_counts(labels.set_index('study_id').loc[valid_ids, col])
        assert grade_counts(table[table.is_valid].label) == want == read_results(models)[col]['valid_counts']
        assert table[table.is_valid].study_id.is_unique


def test_upsampling_balanced_and_reproducible(converted, labels):
    index = read_index(converted)
    for col in COLS:
        t1, i1 = training_table(labels, index, col, seed=7)
        t2, i2 = training_table(labels, index, col, seed=7)
        pd.testing.assert_frame_equal(t1, t2)
        counts = i1['train_counts_upsampled']
        present = [g for g in GRADES if i1['train_counts'][g]]
        assert {counts[g] for g in present} == {i1['train_counts']['Normal/Mild']}
        assert i1['n_train_upsampled'] == len(t1) - i1['n_valid'] >= i1['n_train']


def test_records_and_manifest(models):
    recs = read_results(models)
    assert [recs[c]['status'] for c in COLS] == ['ok', 'ok']
    assert recs[COLS[0]]['architecture'] == 'resnet18' and recs[COLS[1]]['architecture'] == 'resnet34'
    assert recs[COLS[0]]['series'] == 'Sagittal T2/STIR' and recs[COLS[1]]['series'] == 'Sagittal T1'
    man = json.loads((models/'manifest.json').read_text())
    assert sorted(man['columns']) == sorted(COLS)
    for col, m in man['columns'].items():
        assert m['sha256'] == file_sha256(models/f'{col}.pkl')
        assert (m['safetensors'], m['config']) == (f'{col}.safetensors', f'{col}.json')
        assert m['safetensors_sha256'] == file_sha256(models/m['safetensors']) and m['config_sha256'] == file_sha256(models/m['config'])
        assert m['classes'] == list(GRADES) and m['image_size'] == 64
        assert m['n_train_upsampled'] >= m['n_train'] > 0
        assert all(k in m for k in ('lr_minimum', 'lr_steep', 'lr_valley', 'lr_slide', 'epochs_run', 'valid_accuracy', 'valid_log_loss'))
        assert 0 <= m['valid_accuracy'] <= 1 and m['valid_log_loss'] > 0
    res = pd.read_csv(models/'results.csv')
    assert set(res.column) == set(COLS) | {FAILING}
    ok = res[res.status == 'ok']
    assert ok.convergence.isin(['fast', 'moderate', 'slow']).all() and (ok.avg_epoch_seconds > 0).all()
    assert (models/'results.png').stat().st_size > 1000


def test_failing_column_is_isolated(models):
    rec = read_results(models)[FAILING]
    assert rec['status'] == 'failed' and 'no labelled study' in rec['error']
    assert not (models/f'{FAILING}.pkl').exists()
    assert json.loads((models/'manifest.json').read_text())['failed'] == {FAILING: rec['error']}


def test_pickles_load_in_a_fresh_process(models, converted):
    png = str(read_index(converted).image[0])
    code = ("import sys, json; from fastai.learner import load_learner\n"
            "out = {}\n"
            "for fn in sys.argv[2:]:\n"
            "    l = load_learner(fn); _, _, p = l.predict(sys.argv[1])\n"
            "    out[fn] = dict(vocab=list(l.dls.vocab), probs=[float(x) for x in p])\n"
            "print(json.dumps(out))\n")
    pkls = [str(models/f'{c}.pkl') for c in COLS]
    r = subprocess.run([sys.executable, '-c', code, png, *pkls], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for fn in pkls:
        assert out[fn]['vocab'] == list(GRADES)
        assert len(out[fn]['probs']) == 3 and abs(sum(out[fn]['probs']) - 1) < 1e-5


def test_safetensors_learner_predicts_as_the_pickle(models, converted):
    # rebuilt from {column}.json and {column}.safetensors with nothing unpickled (torch.load, which fastai's
    # load_learner uses, is made to fail), each learner gives its pickle's probabilities on the same PNGs
    from unittest import mock
    from lsdc.inference import load_column_learner, predict_images
    images = read_index(converted).image.tolist()[:20]
    for col in COLS:                                   # a ResNet18 and a ResNet34, trained with augmentation
        with mock.patch('torch.load', side_effect=AssertionError('unpickled')): safe = load_column_learner(models, col)
        pkl = load_column_learner(models, col, trust_pickles=True)
        assert list(safe.dls.vocab) == list(pkl.dls.vocab) == list(GRADES)
        np.testing.assert_allclose(predict_images(safe, images), predict_images(pkl, images), atol=1e-5)
        cfg = json.loads((models/f'{col}.json').read_text())
        assert cfg['architecture'] == read_results(models)[col]['architecture'] and cfg['image_size'] == 64


def test_second_run_skips_finished_columns(models, converted, labels):
    before = {c: (models/f'{c}.pkl').stat().st_mtime_ns for c in COLS}
    assert all(column_done(models, c) for c in COLS)
    for shard, arch in (('0/2', 'resnet18'), ('1/2', 'resnet34')):   # each shard with its own settings, as the fixture
        df = train_columns(converted, models, labels=labels, columns=COLS + [FAILING], shard=shard, settings=TINY._replace(arch=arch),
                           progress=False)
    assert {c: (models/f'{c}.pkl').stat().st_mtime_ns for c in COLS} == before
    assert list(df.set_index('column').loc[COLS, 'status']) == ['ok', 'ok']


def test_tampered_pickle_is_retrained_check(models, tmp_path):
    # a pickle that does not match its record is not "done" (copy the folder's files, do not touch the shared one)
    import shutil
    m = tmp_path/'m'; shutil.copytree(models, m)
    with open(m/f'{COLS[0]}.pkl', 'ab') as f: f.write(b'x')
    assert not column_done(m, COLS[0]) and column_done(m, COLS[1])


def test_shards_are_disjoint_and_cover_all_columns():
    for n in range(1, 8):
        shards = [shard_columns(LABEL_COLUMNS, f'{i}/{n}') for i in range(n)]
        flat = [c for s in shards for c in s]
        assert len(flat) == len(set(flat)) == 25 and set(flat) == set(LABEL_COLUMNS)


def test_cli(models, converted, synth, capsys):
    from lsdc.cli import main
    # `lsdc train` (lsdc.pipeline) parses its options, and refuses a bad choice in one line before any work;
    # resuming through it is tested where it trains (tests/test_faults.py, tests/test_claims.py)
    with pytest.raises(SystemExit): main(['train', '--help'])
    for opt, v in (('--inputs', 'slices'), ('--factors', 'levels'), ('--balance', 'smote')):
        assert main(['train', str(converted), str(models), '--data', str(synth), opt, v]) == 2
        assert capsys.readouterr().err.strip().startswith(f'lsdc train: {opt} must be ')
    assert not (models/'folds.csv').exists()


def test_parallel_jobs_match_serial_run(converted, labels, models, tmp_path, capsys):
    # two columns at a time in spawned workers, plus the column that fails: the same records as one at a time
    par = tmp_path/'par'
    df = train_columns(converted, par, labels=labels, columns=COLS + [FAILING], settings=TINY._replace(arch='resnet18'),
                       compute=Compute(jobs=2), seed=42, progress=True)
    out = capsys.readouterr().out
    assert 'in 2 worker processes of' in out and out.count('/3] ') == 3, out
    st = df.set_index('column').status
    assert list(st.loc[COLS]) == ['ok', 'ok'] and st[FAILING] == 'failed'
    recs = read_results(par)
    assert 'no labelled study' in recs[FAILING]['error']
    serial = read_results(models)[COLS[0]]    # the fixture trained it with ResNet18 in this process
    # (not the epochs: float results differ between 1 and 2 threads, so a threshold or early stop may fall otherwise)
    for k in ('split', 'n_train', 'n_train_upsampled', 'n_valid', 'train_counts_upsampled', 'architecture'):
        assert recs[COLS[0]][k] == serial[k], k
    for c in COLS: assert recs[c]['sha256'] == file_sha256(par/f'{c}.pkl')
    assert sorted(json.loads((par/'manifest.json').read_text())['columns']) == sorted(COLS)
    with pytest.raises(ValueError, match='jobs must be'): train_columns(converted, par, labels=labels, columns=COLS, compute=Compute(jobs=0))


DEAD_WORKER = r"""
import json, os, sys
from pathlib import Path
import pandas as pd
from lsdc.learners import Schedule, LearnerSettings, Compute, train_columns
from lsdc.files import read_results

def dies_once(*args, **kwargs):   # kills the first worker that builds it (the marker says so), as the out-of-memory killer would; then a ResNet18
    import torchvision
    try: os.close(os.open(os.environ['DIE_ONCE'], os.O_CREAT | os.O_EXCL))
    except FileExistsError: return torchvision.models.resnet18()
    os._exit(9)

converted, out, cols = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(',')
labels = pd.read_csv(sys.argv[4])
tiny = LearnerSettings(size=64, pretrained=False, bs=16, lr_find_iters=5, schedule=Schedule(first=1, keep_above=0.0, short=1, long=1), aug=False)
os.environ['DIE_ONCE'] = str(out/'died')
train_columns(converted, out/'m', labels=labels, columns=cols, settings=tiny._replace(arch=dies_once), compute=Compute(jobs=2))
print(json.dumps(dict(died=(out/'died').exists(), first={c: r['status'] for c, r in read_results(out/'m').items()})))
"""


def test_dead_worker_is_retried_alone(converted, labels, tmp_path):
    # in a child process, so that a mistake that kills the wrong process cannot take the test runner with it: a real
    # worker process dies once, the pool goes down, and each unfinished column is retried alone in a fresh process and
    # trained (a column whose retry dies too is failed with a message saying so: the stand-in pools below)
    (tmp_path/'dead.py').write_text(DEAD_WORKER)
    labels.to_csv(tmp_path/'labels.csv', index=False)
    r = subprocess.run([sys.executable, str(tmp_path/'dead.py'), str(converted), str(tmp_path), ','.join(COLS), str(tmp_path/'labels.csv')],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'a worker process died; 2 unfinished columns are retried one at a time' in r.stdout, r.stdout
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['died'] and res['first'] == {c: 'ok' for c in COLS}


MEMORY = r"""
import gc, json, sys
gc.disable()   # Python's collector runs on its own schedule; here never: only what lsdc frees itself is freed
import pandas as pd
from lsdc.learners import Schedule, LearnerSettings, train_columns

def rss_gb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'): return int(line.split()[1]) / 2**20

converted, out, cols, labels = sys.argv[1], sys.argv[2], sys.argv[3].split(','), pd.read_csv(sys.argv[4])
tiny = LearnerSettings(arch='resnet18', size=64, pretrained=False, bs=16, lr_find_iters=5, schedule=Schedule(first=1, keep_above=0.0, short=1, long=1))
after = []
for c in cols:   # one process, column after column, as a training worker does
    train_columns(converted, out, labels=labels, columns=[c], settings=tiny, progress=False)
    after.append(rss_gb())
print(json.dumps(after))
"""


@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason='reads the resident memory from /proc')
def test_memory_does_not_grow_with_the_columns_trained(converted, labels, tmp_path):
    # three columns trained one after another in one fresh process whose cycle collector never runs on its own:
    # what each column leaves behind is given back (`release_memory`), so the resident memory after the third is
    # that after the second (without it, it grew by 0.3-0.45 GB a column here)
    (tmp_path/'mem.py').write_text(MEMORY)
    labels.to_csv(tmp_path/'labels.csv', index=False)
    cols = [c for c in LABEL_COLUMNS if c != FAILING][:3]
    r = subprocess.run([sys.executable, str(tmp_path/'mem.py'), str(converted), str(tmp_path/'m'), ','.join(cols),
                        str(tmp_path/'labels.csv')], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    after = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(after) == 3 and after[-1] - after[1] < 0.15, f"resident memory after each column (GB): {after}"


def test_two_series_of_one_description_give_one_row_per_study(converted, labels):
    # a study with two Sagittal T1 series (7 real studies have them): the smallest series_id is used, the study appears
    # once, and it sits on one side of the split only
    index = read_index(converted)
    t1 = index[index.series_description == 'Sagittal T1']
    sid = int(t1.study_id.iloc[0])
    extra = t1[t1.study_id == sid].assign(series_id=lambda d: d.series_id + 10**9)   # a second, later series of that study
    dup = pd.concat([index, extra], ignore_index=True)
    col = COLS[1]                                                                     # foraminal: read from Sagittal T1
    table, info = training_table(labels, dup, col, seed=42)
    ref, _ = training_table(labels, index, col, seed=42)
    pd.testing.assert_frame_equal(table, ref)                     # the extra series changes nothing
    rows = table[table.study_id == sid]
    assert set(rows.series_id) == {int(t1[t1.study_id == sid].series_id.min())}
    assert rows.is_valid.nunique() == 1
    assert table[table.is_valid].study_id.is_unique and info['n_studies'] == table.study_id.nunique()


@pytest.mark.parametrize('accs,epochs,conv', [
    ((0.96,), [4], 'fast'),              # above 0.95: kept
    ((0.95, 0.5), [4, 5], 'moderate'),   # exactly 0.95 is not above it: retrained, short
    ((0.91, 0.5), [4, 5], 'moderate'),   # 0.91 is at least 0.91: short
    ((0.9099, 0.5), [4, 10], 'slow'),    # below 0.91: long
])
def test_epoch_threshold_rule(accs, epochs, conv):
    asked = []
    def trainer(n):
        asked.append(n); return {'accuracy': accs[len(asked) - 1]}
    kept, attempts, c = epoch_threshold_train(trainer, Schedule())
    assert (asked, c, len(attempts)) == (epochs, conv, len(epochs)) and kept is attempts[-1]


def test_retraining_branch_in_a_real_run(converted, labels, tmp_path):
    # a real (tiny) training that must retrain: no first model is kept (> 1.01), every one retrains short (>= 0)
    df = train_columns(converted, tmp_path/'m', labels=labels, columns=[COLS[0]], progress=False,
                       settings=TINY._replace(arch='resnet18', schedule=Schedule(first=1, keep_above=1.01, retrain_above=0.0, short=2, long=3)))
    rec = read_results(tmp_path/'m')[COLS[0]]
    assert rec['convergence'] == 'moderate' and [a['epochs'] for a in rec['attempts']] == [1, 2] and rec['kept_attempt'] == 1
    assert df.set_index('column').loc[COLS[0], 'convergence'] == 'moderate'



def test_merges_of_two_shards_never_lose_a_column(tmp_path, monkeypatch):
    # shard A writes its record and starts merging (slowly); shard B writes its record and merges while A is still at it.
    # Unserialised, A would write its older manifest (without B's column) last; with the lock B waits, then sees both.
    import threading, time
    import lsdc.learners as L
    from lsdc.files import write_result
    m, real, first = tmp_path/'m', L.read_results, threading.Event()
    def slow_once(models):
        r = real(models)
        if not first.is_set(): first.set(); time.sleep(1.0)   # the first merge lingers between its read and its write
        return r
    monkeypatch.setattr(L, 'read_results', slow_once)
    rec = lambda c: dict(column=c, status='ok', sha256='0'*64, pickle=f'{c}.pkl')
    def shard_a(): write_result(m, rec(COLS[0])); L.collect_results(m, plots=False)
    def shard_b():
        first.wait(5); write_result(m, rec(COLS[1])); L.collect_results(m, plots=False)
    ts = [threading.Thread(target=shard_a), threading.Thread(target=shard_b)]
    for t in ts: t.start()
    for t in ts: t.join(30)
    assert sorted(json.loads((m/'manifest.json').read_text())['columns']) == sorted(COLS)
    assert sorted(pd.read_csv(m/'results.csv').column) == sorted(COLS)


def _hold_device(k, device):
    "A stand-in for a column's training: when it held which device"
    import os, time
    t0 = time.time(); time.sleep(0.5)
    return k, device, t0, time.time(), os.getpid()


def test_each_worker_trains_on_a_device_of_its_own(tmp_path):
    # two worker processes, two GPUs (names only: nothing touches CUDA), six columns: at every moment the columns that
    # run at once hold different devices, and both devices are used
    import lsdc.learners as L
    devices = L.worker_devices(2, n_gpus=2)
    from lsdc.workers import process_pool
    with process_pool(2, 1) as ex:
        res = [f.result() for f in [ex.submit(L._on_free_device, _hold_device, tmp_path, devices, k) for k in range(6)]]
    assert sorted(r[0] for r in res) == list(range(6)) and {r[1] for r in res} == {'cuda:0', 'cuda:1'}
    assert len({r[4] for r in res}) == 2
    for a in res:
        for b in res:
            if a is not b and a[2] < b[3] and b[2] < a[3]: assert a[1] != b[1], (a, b)   # overlapping: different GPUs


def test_cache_and_png_loaders_train_the_same_model(converted, labels, tmp_path):
    # without augmentation, at the PNGs' own size, both data paths feed the same batches in the same order
    tiny = TINY._replace(arch='resnet18', aug=False)
    recs = {ld: train_columns(converted, tmp_path/ld, labels=labels, columns=[COLS[0]], settings=tiny, compute=Compute(loader=ld),
                              progress=False).set_index('column').loc[COLS[0]]
            for ld in ('png', 'cache')}
    assert recs['png'].loader == 'png' and recs['cache'].loader == 'cache' and recs['cache'].device == 'cpu'
    assert recs['png'].valid_log_loss == pytest.approx(recs['cache'].valid_log_loss, abs=1e-5)
    assert recs['png'].valid_accuracy == recs['cache'].valid_accuracy
    assert len(list((Path(converted)/'cache').glob('64px-*.npy'))) == 1      # one cache, shared by every run


def test_two_shard_processes_into_one_folder(converted, synth, tmp_path):
    # two `lsdc train` processes started together into one models folder (as two array tasks of a cluster job): every
    # column is in the manifest with the SHA-256 of its files, and the image cache they both asked for was built once
    cols = ['spinal_canal_stenosis_l1_l2', 'spinal_canal_stenosis_l2_l3', 'left_neural_foraminal_narrowing_l1_l2',
            'right_neural_foraminal_narrowing_l2_l3']
    m = tmp_path/'models'
    cmd = [sys.executable, '-c', 'import sys; from lsdc.cli import main; sys.exit(main(sys.argv[1:]))', 'train',
           str(converted), str(m), '--data', str(synth), '--columns', ','.join(cols), '--shard', 'auto', '--arch', 'resnet18',
           '--size', '32', '--no-pretrained', '--epochs', '1,1,1', '--thresholds', '0,0', '--lr-find-iters', '5', '--bs', '16', '--inputs', 'middle',
           '--folds', '2', '--train-folds', '0', '--n-boot', '50']
    env = lambda i: {**__import__('os').environ, 'SLURM_ARRAY_TASK_ID': str(i + 1), 'SLURM_ARRAY_TASK_MIN': '1',
                     'SLURM_ARRAY_TASK_COUNT': '2'}
    procs = [subprocess.Popen(cmd, env=env(i), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    f0 = m/'fold0'   # `--train-folds 0`: fold 0's learners
    man = json.loads((f0/'manifest.json').read_text())['columns']
    assert sorted(man) == sorted(cols)
    for c, r in man.items():
        assert file_sha256(f0/r['pickle']) == r['sha256'] and file_sha256(f0/r['safetensors']) == r['safetensors_sha256']
    assert sorted(pd.read_csv(f0/'results.csv').column) == sorted(cols)
    oof = pd.read_csv(m/'oof_predictions.csv')      # the OOF predictions of whichever shard finished last see every column
    assert set(oof[oof.source == 'model'].column) == set(cols)
    assert len(list((Path(converted)/'cache').glob('32px-*.npy'))) == 1
    assert 'FutureWarning' not in ''.join(outs) and '\r' not in ''.join(outs)   # plain lines in a log


def test_pool_retries_two_folds_learners_of_one_name(tmp_path, monkeypatch):
    # one pool trains every fold's learners, so two jobs may carry one column's name (fold0's and fold1's, each with its
    # own labels table): when a worker dies, each unfinished job is retried alone, found by its place in the list, never
    # by comparing jobs (comparing two tables raises). The pools are stand-ins: the first breaks; fold0's retry returns a
    # record, fold1's retry breaks too, so that job is failed with a message saying so and fold0's record stays
    import lsdc.learners as L
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool
    class Pool:
        def __init__(self, n, threads): self.n = n
        def __enter__(self): return self
        def __exit__(self, *a): return False
        def submit(self, fn, *args, **kw):
            f, job = Future(), next(a for a in args if isinstance(a, L.ColumnJob))
            if self.n > 1 or Path(job.models).name == 'fold1': f.set_exception(BrokenProcessPool('a worker died'))
            else: f.set_result(dict(column=job.column, status='failed', error=f'retried {Path(job.models).name}'))
            return f
    monkeypatch.setattr(L, 'process_pool', Pool)
    col, lab = COLS[0], pd.DataFrame({'study_id': [1, 2]})
    jobs = [L.ColumnJob(column=col, labels=lab.copy(), index=pd.DataFrame(), models=tmp_path/f'fold{k}', settings=TINY, compute=Compute())
            for k in (0, 1)]
    for j in jobs: j.models.mkdir()
    lines = []
    L._train_parallel(jobs, 2, lines.append, names=[f'fold{k}/{col}' for k in (0, 1)])
    assert 'a worker process died; 2 unfinished columns are retried one at a time' in lines
    died = 'its worker process died while training it (killed, out of memory, or a crash in native code)'
    assert [l for l in lines if 'FAILED' in l] == [f'[1/2] fold0/{col}: FAILED (retried fold0)', f'[2/2] fold1/{col}: FAILED ({died})']
    assert read_results(tmp_path/'fold1')[col]['error'] == died
