"""Fault injection: sources that change under a converted folder, a process killed mid-run, damaged outputs, a disk that
fills up, a read-only output folder, odd paths, a study with nothing usable.

One section per part of the pipeline (conversion first); the shared helpers come first. Every case checks what the
user sees (exit status, failures.csv, messages) and what is left on disk (no stale or half-written file)."""
import errno, json, os, re, resource, shutil, signal, subprocess, sys, time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from pydicom.data import get_testdata_file

from lsdc.data import series_dir
from lsdc.dicom import convert_cli, convert_dataset
from lsdc.png import png_complete, png_info, write_png
from test_dicom import Fake, write_slice
from helpers import lsdc_in_process


# ---------------------------------------------------------------- shared helpers
CLI = 'import sys; from lsdc.cli import main; sys.exit(main(sys.argv[1:]))'

def cli_args(*args): return [sys.executable, '-c', CLI, *map(str, args)]

def run_cli(*args, **kw):
    "Run `lsdc ARGS` in a child process; the finished `CompletedProcess` (text output)"
    return subprocess.run(cli_args(*args), capture_output=True, text=True, timeout=300, **kw)

def kill_when(proc, ready, timeout=120):
    "SIGKILL `proc` and its process group (its workers) as soon as `ready()` holds, or when it ends by itself"
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout and not ready(): time.sleep(0.001)
    if proc.poll() is None: os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

def snapshot(d) -> dict:
    "Every file under `d` (hidden ones included) by relative path: its bytes"
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(Path(d).rglob('*')) if p.is_file()}

def pngs(d) -> list: return sorted(str(p.relative_to(d)) for p in Path(d).glob('*/*.png'))

def temp_files(d) -> list: return sorted(str(p.relative_to(d)) for p in Path(d).rglob('.*.tmp'))

def failures(d) -> dict:
    "failures.csv of a conversion: `(file, reason)` by series id"
    return {r.series_id: (r.file, r.reason) for r in pd.read_csv(Path(d)/'failures.csv').itertuples()}

def indexed(d) -> list: return pd.read_csv(Path(d)/'index.csv')[['study_id', 'series_id']].values.tolist()


# ---------------------------------------------------------------- conversion: data sets
# Real MR files from pydicom's test data, one file per series folder, in the Kaggle layout
MR = {(1, 10): 'MR_small.dcm', (2, 20): 'MR_small_implicit.dcm', (3, 30): 'MR-SIEMENS-DICOM-WithOverlays.dcm', (4, 40): 'MR_small_RLE.dcm'}

def mr_data(root, files=MR):
    "A loadable data folder whose series `(study, series)` hold the pydicom test file `files[...]` as `1.dcm`"
    f = Fake(root)
    for (st, se), name in files.items(): shutil.copy(get_testdata_file(name), f.folder(st, se)/'1.dcm')
    return f.save()

def source(data, study, series) -> Path: return series_dir(data, 'train', study, series)/'1.dcm'


# ---------------------------------------------------------------- conversion: changed sources
def test_changed_sources_are_followed(tmp_path, capsys):
    "Replace one series' file by another MR file, one by a truncated file, one by text (same counts): the issue's scenario"
    data, out = mr_data(tmp_path/'data'), tmp_path/'out'
    assert convert_cli(str(data), str(out), quiet=True) == 0
    before = snapshot(out)
    shutil.copy(get_testdata_file('MR2_UNCR.dcm'), source(data, 1, 10))
    shutil.copy(get_testdata_file('MR_truncated.dcm'), source(data, 2, 20))
    source(data, 3, 30).write_text('not a DICOM file\n')
    assert [len(os.listdir(source(data, *k).parent)) for k in MR] == [1] * 4
    capsys.readouterr()
    assert convert_cli(str(data), str(out), quiet=True) == 0
    said = capsys.readouterr().out
    assert 'converted 1, skipped 1, failed 2 series' in said and '  not up to date: 3 source files changed' in said, said
    assert 'no converted series at all for 2 studies: 2, 3' in said, said
    # the valid replacement is converted again, exactly as into an empty folder; the unchanged series is left alone
    fresh = tmp_path/'fresh'
    convert_dataset(data, fresh, progress=False)
    assert (out/'1/10.png').read_bytes() != before['1/10.png']
    assert (out/'1/10.png').read_bytes() == (fresh/'1/10.png').read_bytes()
    assert (out/'4/40.png').read_bytes() == before['4/40.png']
    # the broken ones are reported with the file at fault, out of the index, and their PNGs are gone
    fails = failures(out)
    assert sorted(fails) == [20, 30]
    assert fails[20][0] == str(source(data, 2, 20)) and 'cannot decode the pixel data' in fails[20][1]
    assert fails[30][0] == str(source(data, 3, 30)) and 'not a DICOM file' in fails[30][1]
    assert indexed(out) == [[1, 10], [4, 40]] and pngs(out) == ['1/10.png', '4/40.png']
    assert snapshot(out) == snapshot(fresh)          # PNGs, index.csv and failures.csv: as a fresh run
    again = convert_dataset(data, out, progress=False)  # nothing changed since: nothing converted
    assert [again.attrs[k] for k in ('converted', 'skipped', 'failed')] == [0, 2, 2] and snapshot(out) == snapshot(fresh)


def test_pngs_without_fingerprint_are_converted_again(tmp_path):
    "PNGs from before source fingerprints (an older lsdc) are converted once more, to the bytes of a fresh run"
    data, out = mr_data(tmp_path/'data'), tmp_path/'out'
    convert_dataset(data, out, progress=False)
    clean = snapshot(out)
    for p in pngs(out):
        info = png_info(out/p); del info['source']
        write_png(np.zeros((2, 2), np.uint8), out/p, text=json.dumps(info))
    idx = convert_dataset(data, out, progress=False)
    assert idx.attrs['reasons'] == {'unfingerprinted': 4} and snapshot(out) == clean


# ---------------------------------------------------------------- conversion: killed mid-run
DESCS = 'Sagittal T1,Sagittal T2/STIR,Axial T2'

def test_killed_conversion_resumes_to_identical_files(synth_data, tmp_path):
    "SIGKILL twice (in the first run, then in the resumed one): every PNG left is whole, and the end is a clean run's bytes"
    assert run_cli('convert', synth_data, tmp_path/'clean', '--quiet', '--workers', '1', '--descriptions', DESCS).returncode == 0
    clean = snapshot(tmp_path/'clean')
    total = len(pngs(tmp_path/'clean'))
    dest, left = tmp_path/'run', []
    for k in (1, total // 2):
        proc = subprocess.Popen(cli_args('convert', synth_data, dest, '--quiet', '--workers', '2', '--descriptions', DESCS),
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_when(proc, lambda: dest.is_dir() and len(pngs(dest)) >= k)
        left.append(len(pngs(dest)))
        assert all(png_complete(dest/p) for p in pngs(dest))     # nothing half-written under a final name
    assert any(0 < n < total for n in left), f'no run was killed part-way ({left} of {total} PNGs)'
    r = run_cli('convert', synth_data, dest, '--quiet', '--descriptions', DESCS)
    assert r.returncode == 0 and f'skipped {left[-1]},' in r.stdout, (r.stdout, r.stderr)
    assert temp_files(dest) == []
    assert snapshot(dest) == clean


# ---------------------------------------------------------------- conversion: damaged outputs
def test_damaged_pngs_are_detected_and_rebuilt(tmp_path, capsys):
    "A PNG cut short, garbage under the final name, one flipped byte inside: each converted again"
    data, out = mr_data(tmp_path/'data'), tmp_path/'out'
    convert_dataset(data, out, progress=False)
    clean = snapshot(out)
    (out/'1/10.png').write_bytes(clean['1/10.png'][:len(clean['1/10.png']) // 2])
    (out/'2/20.png').write_bytes(os.urandom(len(clean['2/20.png'])))
    flipped = bytearray(clean['3/30.png']); flipped[len(flipped) * 2 // 3] ^= 0x10
    (out/'3/30.png').write_bytes(bytes(flipped))
    capsys.readouterr()
    assert convert_cli(str(data), str(out), quiet=True) == 0
    said = capsys.readouterr().out
    assert 'converted 3, skipped 1, failed 0' in said and 'not up to date: 3 damaged PNG' in said, said
    assert snapshot(out) == clean


# ---------------------------------------------------------------- conversion: disk full
def _enospc_for(name):
    "A `Path.write_bytes` that writes half of the data, then fails as a full disk would, for temporary files of `name`"
    real = Path.write_bytes
    def write_bytes(self, data):
        if not self.name.startswith(f'.{name}.'): return real(self, data)
        real(self, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write_bytes

def test_disk_full_while_writing_a_png(tmp_path):
    "ENOSPC while the PNG of a changed series is written: a failure row naming it, no stale or half file, no temp file"
    data, out = mr_data(tmp_path/'data'), tmp_path/'out'
    convert_dataset(data, out, progress=False)
    clean = snapshot(out)
    os.utime(source(data, 2, 20))                      # its source changed: it must be written again
    with mock.patch.object(Path, 'write_bytes', _enospc_for('20.png')):
        idx = convert_dataset(data, out, progress=False, n_workers=1)
    assert idx.attrs['failed'] == 1 and indexed(out) == [[1, 10], [3, 30], [4, 40]]
    assert failures(out) == {20: (str(out/'2/20.png'), 'cannot write the PNG ([Errno 28] No space left on device)')}
    assert not (out/'2/20.png').exists() and temp_files(out) == []
    again = convert_dataset(data, out, progress=False)  # space again: converted, as a clean run would
    assert again.attrs['converted'] == 1 and len(failures(out)) == 0 and indexed(out) == [[1, 10], [2, 20], [3, 30], [4, 40]]
    assert {k: v for k, v in snapshot(out).items() if k != '2/20.png'} == {k: v for k, v in clean.items() if k != '2/20.png'}

def test_file_size_limit_in_a_child_process(tmp_path):
    "`lsdc convert` under RLIMIT_FSIZE between the smallest and the largest PNG: the large ones fail (EFBIG), cleanly"
    data = mr_data(tmp_path/'data')
    convert_dataset(data, tmp_path/'clean', progress=False)
    sizes = {p: (tmp_path/'clean'/p).stat().st_size for p in pngs(tmp_path/'clean')}
    limit = (min(sizes.values()) + max(sizes.values())) // 2
    big = sorted(p for p, n in sizes.items() if n > limit)
    assert big and len(big) < len(sizes), sizes
    limited = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    r = run_cli('convert', data, tmp_path/'out', '--quiet', '--workers', '1', preexec_fn=limited)
    assert r.returncode == 0, r.stderr
    fails = failures(tmp_path/'out')
    assert sorted(Path(f).relative_to(tmp_path/'out').as_posix() for f, _ in fails.values()) == big
    assert all(why == 'cannot write the PNG ([Errno 27] File too large)' for _, why in fails.values()), fails
    assert pngs(tmp_path/'out') == sorted(set(sizes) - set(big)) and temp_files(tmp_path/'out') == []


# ---------------------------------------------------------------- conversion: read-only output folder
def _make_read_only(d:Path) -> bool:
    "Make `d` read-only for this process: chmod when not root, else the immutable attribute (chattr +i); False if neither"
    if os.geteuid() != 0:
        d.chmod(0o555); return True
    return shutil.which('chattr') is not None and subprocess.run(['chattr', '+i', str(d)], capture_output=True).returncode == 0

def _make_writable(d:Path):
    if os.geteuid() == 0: subprocess.run(['chattr', '-i', str(d)], capture_output=True)
    d.chmod(0o755)

def test_read_only_output_folder(tmp_path):
    "One clear error naming the folder, exit 2, nothing changed in it; root ignores chmod, so it uses chattr +i there"
    data, out = mr_data(tmp_path/'data'), tmp_path/'out'
    convert_dataset(data, out, progress=False)
    os.utime(source(data, 1, 10))
    clean = snapshot(out)
    if not _make_read_only(out): pytest.skip('running as root without chattr +i: cannot make a folder read-only')
    try:
        r = run_cli('convert', data, out, '--quiet')
        assert (r.returncode, r.stdout) == (2, ''), (r.returncode, r.stdout)
        assert r.stderr.startswith(f'lsdc convert: cannot write to the output folder {out}: '), r.stderr
        assert snapshot(out) == clean
    finally: _make_writable(out)

def test_output_folder_that_cannot_be_created(tmp_path):
    "An output path under a regular file (root or not): one clear error naming it"
    blocker = tmp_path/'a file'; blocker.write_text('x')
    r = run_cli('convert', mr_data(tmp_path/'data'), blocker/'out', '--quiet')
    assert r.returncode == 2 and r.stderr == f'lsdc convert: cannot write to the output folder {blocker/"out"}: Not a directory\n', r.stderr


# ---------------------------------------------------------------- conversion: odd paths
def test_spaces_and_non_ascii_in_paths(tmp_path):
    "Data, series files and output under names with spaces and non-ASCII letters convert as under plain names"
    f = Fake(tmp_path/'plain')
    for st, se in ((1, 10), (2, 20)):
        d = f.folder(st, se)
        for k in range(3):
            write_slice(d/f'Schnitt {k} é ü.dcm', np.random.default_rng(k + st).integers(0, 900, (12, 12)), (4. * k, 0., 0.), instance=k + 1)
    plain = f.save()
    odd = tmp_path/'dätä sät ρ'/'Wirbel säule 脊椎'
    shutil.copytree(plain, odd)                        # copy2: same names, sizes and modification times
    convert_dataset(plain, tmp_path/'out plain', progress=False)
    r = run_cli('convert', odd, tmp_path/'oüt pût'/'ñ 出力', '--quiet')
    assert r.returncode == 0 and 'converted 2, skipped 0, failed 0' in r.stdout, (r.stdout, r.stderr)
    assert snapshot(tmp_path/'oüt pût'/'ñ 出力') == snapshot(tmp_path/'out plain')
    assert png_info(tmp_path/'out plain'/'1/10.png')['file'] == 'Schnitt 1 é ü.dcm'


# ---------------------------------------------------------------- conversion: a study with nothing usable
def test_study_without_any_usable_series(tmp_path):
    "Both series of study 2 fail: it is in failures.csv, said once, and the other studies convert"
    f = Fake(tmp_path/'data')
    for st, se, desc, name in ((1, 10, 'Sagittal T1', 'MR_small.dcm'), (1, 11, 'Sagittal T2/STIR', 'MR_small_RLE.dcm'),
                               (2, 20, 'Sagittal T1', 'MR_truncated.dcm'), (3, 30, 'Sagittal T2/STIR', 'MR_small_implicit.dcm')):
        shutil.copy(get_testdata_file(name), f.folder(st, se, desc)/'1.dcm')
    f.folder(2, 21, 'Sagittal T2/STIR')                # an empty folder
    data = f.save()
    r = run_cli('convert', data, tmp_path/'out', '--quiet')
    assert r.returncode == 0 and 'converted 3, skipped 0, failed 2' in r.stdout, (r.stdout, r.stderr)
    assert 'no converted series at all for 1 study: 2\n' in r.stdout, r.stdout
    assert sorted(failures(tmp_path/'out')) == [20, 21] and indexed(tmp_path/'out') == [[1, 10], [1, 11], [3, 30]]
    assert run_cli('convert', data, tmp_path/'out', '--quiet', '--strict').returncode == 1


# ---------------------------------------------------------------- models: a tiny trained folder (shared)
# 16 studies at 48 px, ResNet18 from scratch, one epoch, the first model kept, two columns (one per sagittal series)
MODEL_COLS = ['spinal_canal_stenosis_l4_l5', 'left_neural_foraminal_narrowing_l3_l4']
TINY = ('--columns', ','.join(MODEL_COLS), '--size', 48, '--arch', 'resnet18', '--no-pretrained', '--epochs', '1,1,1', '--thresholds', '0,0',
        '--lr-find-iters', 5, '--bs', 16, '--inputs', 'middle', '--folds', 2, '--train-folds', 0, '--n-boot', 50)
F = 'fold0'   # `--train-folds 0`: fold 0's learners, a models folder of their own inside the run's

def lsdc_ok(*args) -> subprocess.CompletedProcess:
    "Run `lsdc ARGS` in this process (`helpers.lsdc_in_process`); it must succeed"
    return lsdc_in_process(*args)

def sha(fn) -> str:
    from lsdc.files import file_sha256
    return file_sha256(fn)

@pytest.fixture(scope='module')
def trained(synth_data, tmp_path_factory):
    "A conversion of the training studies and a models folder trained on it by `lsdc train`"
    w = tmp_path_factory.mktemp('trained')
    lsdc_ok('convert', synth_data, w/'conv', '--split', 'train', '--size', 48, '--workers', 1, '--quiet')
    lsdc_ok('train', w/'conv', w/'models', '--data', synth_data, *TINY, '--quiet')
    return w

def models_copy(trained, tmp_path) -> Path:
    shutil.copytree(trained/'models', tmp_path/'models')
    return tmp_path/'models'

def predict_args(synth_data, models, out, conv): return ('predict', synth_data, models, out, '--converted', conv, '--workers', 1)


# ---------------------------------------------------------------- models: damaged files
@pytest.mark.parametrize('kind,suffix', [('pickle', 'pkl'), ('safetensors', 'safetensors'), ('config', 'json')])
def test_truncated_model_file_is_refused(trained, tmp_path, kind, suffix):
    "A model file cut in half (a full disk, a broken download): refused by its SHA-256, the message names the file"
    from lsdc.files import ModelIntegrityError
    from lsdc.inference import load_column_learner
    m, col = models_copy(trained, tmp_path), MODEL_COLS[0]
    fn = m/F/f'{col}.{suffix}'
    fn.write_bytes(fn.read_bytes()[:fn.stat().st_size // 2])
    with pytest.raises(ModelIntegrityError, match=re.escape(f'{fn}: SHA-256 ') + r'\w+\.\.\. does not match the manifest'):
        load_column_learner(m/F, col, trust_pickles=kind == 'pickle')
    load_column_learner(m/F, col, trust_pickles=kind != 'pickle')   # the other way to load it does not read that file

def test_truncated_safetensors_stops_predict(trained, synth_data, tmp_path):
    m = models_copy(trained, tmp_path)
    fn = m/F/f'{MODEL_COLS[1]}.safetensors'
    fn.write_bytes(fn.read_bytes()[:1000])
    r = lsdc_in_process(*predict_args(synth_data, m, tmp_path/'sub.csv', tmp_path/'conv'), check=False)
    assert r.returncode == 1 and f'lsdc predict: {fn}: SHA-256 ' in r.stderr, (r.stdout, r.stderr)
    assert not (tmp_path/'sub.csv').exists()

def test_models_from_before_safetensors(trained, synth_data, tmp_path):
    "A folder of pickles only (an older lsdc, without folds): a clear error saying what to do; re-exported, it loads with no pickle"
    from lsdc.files import ModelIntegrityError, read_results, write_result
    from lsdc.inference import load_column_learner, predict_images
    from lsdc.learners import collect_results, reexport_safe
    m = models_copy(trained, tmp_path)/F   # a fold's folder is a single models folder, as earlier releases wrote them
    for col, rec in read_results(m).items():
        (m/f'{col}.safetensors').unlink(); (m/f'{col}.json').unlink()
        write_result(m, {k: v for k, v in rec.items() if not k.startswith(('safetensors', 'config'))})
    collect_results(m, plots=False)
    with pytest.raises(ModelIntegrityError, match=r"has no safetensors weights .*reexport_safe\(.*--trust-pickles"):
        load_column_learner(m, MODEL_COLS[0])
    r = lsdc_in_process(*predict_args(synth_data, m, tmp_path/'sub.csv', tmp_path/'conv'), check=False)
    assert r.returncode == 1 and 'has no safetensors weights' in r.stderr and '--trust-pickles' in r.stderr, r.stderr
    trusted = load_column_learner(m, MODEL_COLS[0], trust_pickles=True)
    assert reexport_safe(m) == MODEL_COLS
    for col in MODEL_COLS: assert sha(m/f'{col}.safetensors') == sha(trained/'models'/F/f'{col}.safetensors')
    images = sorted(str(p) for p in (trained/'conv').glob('*/*.png'))[:8]
    np.testing.assert_allclose(predict_images(load_column_learner(m, MODEL_COLS[0]), images), predict_images(trusted, images), atol=1e-5)


# ---------------------------------------------------------------- models: damaged manifest and records
def test_unparseable_manifest(trained, synth_data, tmp_path):
    "manifest.json cut short: predict names it and exits 1; `lsdc train` rebuilds it from results/*.json"
    m = models_copy(trained, tmp_path)
    good = json.loads((m/F/'manifest.json').read_text())
    (m/'manifest.json').write_text((m/'manifest.json').read_text()[:300])
    r = lsdc_in_process(*predict_args(synth_data, m, tmp_path/'sub.csv', tmp_path/'conv'), check=False)
    assert r.returncode == 1 and f"lsdc predict: {m/'manifest.json'}: unreadable manifest" in r.stderr, (r.stdout, r.stderr)
    assert not (tmp_path/'sub.csv').exists()
    r = lsdc_ok('train', trained/'conv', m, '--data', synth_data, *TINY)
    assert r.stdout.count('already trained, skipped') == 2, r.stdout           # nothing retrained: only rebuilt
    assert json.loads((m/F/'manifest.json').read_text())['columns'] == good['columns']
    assert json.loads((m/'manifest.json').read_text())['trained_folds'] == [0]            # the run's manifest is whole again

def test_results_json_cut_in_half_is_retrained(trained, synth_data, tmp_path):
    "A column's record cut short: named in a warning, the column trained again, the other one left alone"
    from lsdc.files import read_results
    m = models_copy(trained, tmp_path)
    before = read_results(m/F)
    fn = m/F/'results'/f'{MODEL_COLS[0]}.json'
    fn.write_text(fn.read_text()[:fn.stat().st_size // 2])
    r = lsdc_ok('train', trained/'conv', m, '--data', synth_data, *TINY)
    assert f'{fn}: unreadable' in r.stderr, r.stderr
    assert f'{MODEL_COLS[0]}: training' in r.stdout and f'{MODEL_COLS[1]}: already trained, skipped' in r.stdout, r.stdout
    after = read_results(m/F)
    assert after[MODEL_COLS[0]]['status'] == 'ok' and after[MODEL_COLS[0]]['finished'] >= before[MODEL_COLS[0]]['finished']
    assert after[MODEL_COLS[0]]['sha256'] == sha(m/F/f'{MODEL_COLS[0]}.pkl')
    assert after[MODEL_COLS[1]] == before[MODEL_COLS[1]] and sha(m/F/f'{MODEL_COLS[1]}.pkl') == before[MODEL_COLS[1]]['sha256']
    assert sorted(json.loads((m/F/'manifest.json').read_text())['columns']) == sorted(MODEL_COLS)


# ---------------------------------------------------------------- models: killed mid-run
def model_files(m, col) -> dict:
    return {n: sha(m/n) for n in (f'{col}.pkl', f'{col}.safetensors', f'{col}.json', f'results/{col}.json')}

def test_killed_training_resumes(trained, synth_data, tmp_path):
    "SIGKILL once between the columns and once inside the second: the rerun completes, the first column untouched"
    from lsdc.learners import MANIFEST_KEYS
    top, (first, second) = tmp_path/'models', MODEL_COLS
    m = top/F
    train = cli_args('train', trained/'conv', top, '--data', synth_data, *TINY)
    proc = subprocess.Popen(train, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: (m/'results'/f'{first}.json').exists(), timeout=600)        # the first column just finished
    assert proc.returncode == -signal.SIGKILL and not (m/f'{second}.pkl').exists()
    done = model_files(m, first)
    proc = subprocess.Popen(train, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: any((m/'_work').glob(f'{second}.*/best.pth')), timeout=600)   # the second, after an epoch
    assert proc.returncode == -signal.SIGKILL and not (m/'results'/f'{second}.json').exists()
    from lsdc.disk import owner_tag                                                     # the killed run owned these:
    (m/f'.{second}.pkl.{owner_tag(proc.pid)}.x7k2.pkl.tmp').write_bytes(b'half a pickle')   # as a kill inside a write leaves
    (m/'results'/f'.{second}.json.{owner_tag(proc.pid)}.q1w2.json.tmp').write_text('{"column": ')
    r = lsdc_ok('train', trained/'conv', top, '--data', synth_data, *TINY)                # the rerun: no kill, so in this process
    assert f'{first}: already trained, skipped' in r.stdout and f'{second}: training' in r.stdout, r.stdout
    assert model_files(m, first) == done                                                # not retrained, not rewritten
    man = json.loads((m/'manifest.json').read_text())['columns']
    rec = json.loads((m/'results'/f'{first}.json').read_text())
    assert sorted(man) == sorted(MODEL_COLS) and man[first] == {k: rec.get(k) for k in MANIFEST_KEYS}
    assert man[second]['safetensors_sha256'] == sha(m/f'{second}.safetensors')
    assert temp_files(m) == [] and list((m/'_work').rglob('*')) == []                   # as an uninterrupted run leaves it

def test_killed_prediction_reruns_to_the_same_submission(trained, synth_data, tmp_path):
    "SIGKILL while `lsdc predict` predicts: nothing under the final names; the rerun writes an uninterrupted run's bytes"
    lsdc_ok(*predict_args(synth_data, trained/'models', tmp_path/'ref'/'submission.csv', tmp_path/'ref'/'conv'))
    out = tmp_path/'run'
    proc = subprocess.Popen(cli_args(*predict_args(synth_data, trained/'models', out/'submission.csv', out/'conv')),
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: (out/'conv'/'index.csv').exists())                          # converted: now predicting
    assert proc.returncode == -signal.SIGKILL and not (out/'submission.csv').exists()
    from lsdc.disk import owner_tag
    (out/f'.submission.csv.{owner_tag(proc.pid)}.k9d2.csv.tmp').write_text('row_id,normal_mild\n')   # as a kill inside the write leaves
    lsdc_ok(*predict_args(synth_data, trained/'models', out/'submission.csv', out/'conv'))
    for name in ('submission.csv', 'submission_sources.csv'):
        assert (out/name).read_bytes() == (tmp_path/'ref'/name).read_bytes(), name
    assert temp_files(tmp_path) == []
