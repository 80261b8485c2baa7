"Behaviour of `lsdc.dicom` on real DICOM files (pydicom's corpus), on broken series, on synthetic data sets and under kill-and-resume"
import json, os, shutil, signal, subprocess, sys, time, warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from lsdc.core import LABEL_COLUMNS, SAGITTAL
from lsdc.data import series_dir
from lsdc.dicom import BlankSliceWarning, convert_cli, convert_dataset, convert_series, modality_array, normalise, read_pixels
from lsdc.files import FAILURE_COLUMNS, INDEX_COLUMNS


# ---------------------------------------------------------------- helpers
def write_slice(fn, pixels, position=None, orientation=(0., 1., 0., 0., 0., -1.), instance=None, **tags):
    "A minimal MR DICOM slice (explicit VR little endian)"
    meta = FileMetaDataset(); meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(); meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset(); ds.file_meta = meta; ds.SOPClassUID = MRImageStorage; ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = 'MR'; ds.PatientID = '1'
    if instance is not None: ds.InstanceNumber = instance
    if position is not None: ds.ImagePositionPatient = list(position); ds.ImageOrientationPatient = list(orientation)
    ds.SamplesPerPixel = 1; ds.PhotometricInterpretation = 'MONOCHROME2'
    ds.Rows, ds.Columns = pixels.shape; ds.BitsAllocated = 16; ds.BitsStored = 16; ds.HighBit = 15; ds.PixelRepresentation = 0
    for k, v in tags.items(): setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels, dtype='<u2').tobytes()
    Path(fn).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(fn, enforce_file_format=True)
    return Path(fn)

def read_png(fn): return cv2.imread(str(fn), cv2.IMREAD_UNCHANGED)

def resized(img, size=256): return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)

def reference(a, p_lo=1, p_hi=99):
    "The method's 8-bit normalisation written out independently: clip, shift, divide by max, *255, uint8"
    a = a.astype(np.float64)
    a = np.clip(a, np.percentile(a, p_lo), np.percentile(a, p_hi))
    a = a - a.min()
    return (a / a.max() * 255).astype(np.uint8)

class Fake:
    "Builds a loadable RSNA-like data folder of hand-made series"
    def __init__(self, root):
        self.root, self.rows = Path(root), []
    def folder(self, study, series, desc='Sagittal T1', make=True):
        self.rows.append((study, series, desc))
        d = series_dir(self.root, 'train', study, series)
        if make: d.mkdir(parents=True, exist_ok=True)
        return d
    def save(self):
        "Write the tables `lsdc.data.load_rsna` needs (no labels)"
        series = pd.DataFrame(self.rows, columns=['study_id', 'series_id', 'series_description'])
        series.to_csv(self.root/'train_series_descriptions.csv', index=False)
        pd.DataFrame({'study_id': sorted(set(series.study_id)), **{c: None for c in LABEL_COLUMNS}}).to_csv(self.root/'train.csv', index=False)
        pd.DataFrame(columns=['study_id', 'series_id', 'instance_number', 'condition', 'level', 'x', 'y']).to_csv(
            self.root/'train_label_coordinates.csv', index=False)
        return self.root

def sagittal_series(folder, n=5, shape=(16, 16), seed=0, instances=None, values=None, **tags):
    "`n` slices along x; slice k holds random values (or `values[k]`); returns the pixel arrays by spatial position"
    rng = np.random.default_rng(seed)
    instances = instances or list(range(1, n + 1))
    arrs = []
    for k in range(n):
        a = rng.integers(0, 3000, shape) if values is None else np.full(shape, values[k])
        arrs.append(a)
        write_slice(Path(folder)/f'{instances[k]}.dcm', a, (float(k) * 4, 0., 0.), instance=instances[k], **tags)
    return arrs


@pytest.fixture(scope='module')
def synth(request, tmp_path_factory):
    "The shared synthetic data set (tests/conftest.py), or a small one of our own when run alone"
    try: return Path(request.getfixturevalue('synth_data'))
    except pytest.FixtureLookupError:
        from lsdc.synth import make_synthetic
        return make_synthetic(tmp_path_factory.mktemp('synth'), n_train=16, n_test=3, image_size=128, seed=0, phantom='middle')


# ---------------------------------------------------------------- real files, every transfer syntax
def _corpus():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fs = get_testdata_files('MR*') + get_testdata_files('emri_small*')
        fs += [get_testdata_file(f) for f in ('JPEG-LL.dcm', 'JPGLosslessP14SV1_1s_1f_8b.dcm', 'JPEG-lossy.dcm')]
    return sorted({f for f in fs if f and 'truncated' not in f and 'too_short' not in f}, key=os.path.basename)

@pytest.mark.parametrize('fn', _corpus(), ids=os.path.basename)
def test_real_file_converts_like_pydicom(fn, tmp_path):
    ds = pydicom.dcmread(fn)
    try: arr = ds.pixel_array
    except Exception as e: pytest.skip(f"pydicom cannot decode {os.path.basename(fn)} here ({ds.file_meta.TransferSyntaxUID.name}): {e}")
    n = int(ds.get('NumberOfFrames', 1) or 1)
    if n > 1: arr = arr[n // 2]  # no frame positions in these files: frames are slices in frame order
    slope, icpt = float(ds.get('RescaleSlope', 1) or 1), float(ds.get('RescaleIntercept', 0) or 0)
    a = arr.astype(np.float64) * slope + icpt
    if ds.PhotometricInterpretation == 'MONOCHROME1': a = -a
    shutil.copy(fn, tmp_path/'1.dcm')
    info = convert_series(tmp_path, tmp_path/'out'/'full.png', size=None)
    got = read_png(tmp_path/'out'/'full.png')
    test = normalise(a)
    np.testing.assert_array_equal(got, test)
    np.testing.assert_array_equal(test, reference(a))
    assert (info['rows'], info['columns'], info['n_slices']) == (ds.Rows, ds.Columns, n)
    convert_series(tmp_path, tmp_path/'out'/'256.png')
    np.testing.assert_array_equal(read_png(tmp_path/'out'/'256.png'), resized(test))


# ---------------------------------------------------------------- bad series go to failures.csv
def test_bad_series_are_reported_and_the_rest_converts(tmp_path, capsys):
    f = Fake(tmp_path/'data')
    sagittal_series(f.folder(1, 10))                                                   # good
    shutil.copy(get_testdata_file('MR_truncated.dcm'), f.folder(2, 20)/'1.dcm')       # truncated pixel data
    d = f.folder(3, 30); sagittal_series(d, n=3); (d/'2.dcm').write_text('this is not DICOM\n')
    f.folder(4, 40)                                                                    # empty folder
    f.folder(5, 50, make=False)                                                        # listed, no folder
    shutil.copy(get_testdata_file('emri_small_jpeg_2k_lossless_too_short.dcm'), f.folder(6, 60)/'1.dcm')  # no pixel data
    d = f.folder(7, 70); write_slice(d/'1.dcm', np.ones((8, 8)), instance=1); write_slice(d/'2.dcm', np.ones((9, 8)), instance=2)
    d = f.folder(8, 80); write_slice(d/'a.dcm', np.ones((8, 8))); write_slice(d/'b.dcm', np.ones((8, 8)))  # no position, no instance
    sagittal_series(f.folder(9, 90, 'Sagittal T2/STIR'), seed=1)                       # good
    root = f.save()
    idx = convert_dataset(root, tmp_path/'out', progress=False, n_workers=2)
    assert idx.study_id.tolist() == [1, 9]
    assert (idx.attrs['converted'], idx.attrs['failed']) == (2, 7)
    fails = pd.read_csv(tmp_path/'out'/'failures.csv')
    assert tuple(fails.columns) == FAILURE_COLUMNS
    reasons = {r.study_id: (r.file, r.reason) for r in fails.itertuples()}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8]
    expect = {2: ('1.dcm', 'cannot decode the pixel data'), 3: ('2.dcm', 'not a DICOM file'), 4: ('40', 'empty series folder'),
              5: ('50', 'series folder not found'), 6: ('1.dcm', 'no Pixel Data'), 7: ('1.dcm', 'slices of different shapes'),
              8: ('a.dcm', 'no InstanceNumber')}
    for sid, (name, why) in expect.items():
        file, reason = reasons[sid]
        assert Path(file).name == name and why in reason, (sid, file, reason)
    # the command line: failures are not an error unless --strict
    assert convert_cli(str(root), str(tmp_path/'out2'), quiet=True) == 0
    assert 'converted 2, skipped 0, failed 7' in capsys.readouterr().out
    assert convert_cli(str(root), str(tmp_path/'out2'), quiet=True, strict=True) == 1
    assert 'converted 0, skipped 2, failed 7' in capsys.readouterr().out


def test_cli_nothing_readable(tmp_path, capsys):
    assert convert_cli(str(tmp_path/'nowhere'), str(tmp_path/'out'), quiet=True) == 2
    assert 'data folder not found' in capsys.readouterr().err
    f = Fake(tmp_path/'data'); f.folder(1, 10)
    assert convert_cli(str(f.save()), str(tmp_path/'out'), quiet=True) == 2
    out = capsys.readouterr()
    assert 'converted 0, skipped 0, failed 1' in out.out and 'nothing could be read' in out.err


# ---------------------------------------------------------------- ordering, blank, MONOCHROME1, rescale, offsets
def test_spatial_middle_on_synthetic_data(synth, tmp_path):
    idx = convert_dataset(synth, tmp_path/'out', progress=False)
    assert len(idx) == 32 and set(idx.series_description) == set(SAGITTAL)
    disagree = 0
    for r in idx.itertuples():
        folder = series_dir(synth, 'train', r.study_id, r.series_id)
        dss = [pydicom.dcmread(p) for p in folder.iterdir()]
        normal = np.cross(np.array(dss[0].ImageOrientationPatient[:3], float), np.array(dss[0].ImageOrientationPatient[3:], float))
        spatial = sorted(dss, key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
        if spatial[0].InstanceNumber > spatial[-1].InstanceNumber: spatial = spatial[::-1]   # direction follows the numbering
        by_instance = sorted(dss, key=lambda d: int(d.InstanceNumber))
        mid = spatial[len(spatial) // 2]
        disagree += by_instance[len(dss) // 2].InstanceNumber != mid.InstanceNumber
        assert r.instance_number == mid.InstanceNumber and r.n_slices == len(dss)
        a = mid.pixel_array * float(mid.get('RescaleSlope', 1)) + float(mid.get('RescaleIntercept', 0))
        np.testing.assert_array_equal(read_png(tmp_path/'out'/r.png), resized(reference(a)))
    assert disagree > 0, 'the synthetic set should hold series whose instance order differs from their spatial order'


def test_shuffled_file_order(tmp_path):
    "Instance numbers (and file names) shuffled against positions: the spatial middle wins"
    inst = [4, 1, 5, 2, 3]      # instance number of the slice at x = 0, 4, 8, 12, 16
    arrs = sagittal_series(tmp_path/'s', instances=inst)
    info = convert_series(tmp_path/'s', tmp_path/'o.png', size=None)
    assert info['instance_number'] == 5 and info['file'] == '5.dcm'
    np.testing.assert_array_equal(read_png(tmp_path/'o.png'), reference(arrs[2]))


def test_blank_slice(tmp_path):
    sagittal_series(tmp_path/'s', values=[100, 200, 0, 300, 400])
    with pytest.warns(BlankSliceWarning, match='3.dcm: constant slice'):
        info = convert_series(tmp_path/'s', tmp_path/'o.png')
    img = read_png(tmp_path/'o.png')
    assert img.shape == (256, 256) and img.dtype == np.uint8 and img.max() == 0 and info['instance_number'] == 3


def test_monochrome1_and_rescale(tmp_path):
    a = np.random.default_rng(3).integers(0, 4000, (32, 32))
    write_slice(tmp_path/'m2'/'1.dcm', a, instance=1)
    write_slice(tmp_path/'m1'/'1.dcm', a, instance=1, PhotometricInterpretation='MONOCHROME1')
    write_slice(tmp_path/'rs'/'1.dcm', a, instance=1, RescaleSlope=0.5, RescaleIntercept=-1024)
    write_slice(tmp_path/'neg'/'1.dcm', a, instance=1, RescaleSlope=-2, RescaleIntercept=10)
    out = {}
    for k in ('m2', 'm1', 'rs', 'neg'):
        convert_series(tmp_path/k, tmp_path/f'{k}.png', size=None)
        out[k] = read_png(tmp_path/f'{k}.png')
    np.testing.assert_array_equal(out['m2'], reference(a))
    np.testing.assert_array_equal(out['m1'], reference(-a.astype(float)))
    assert np.abs(out['m1'].astype(int) - (255 - out['m2'].astype(int))).max() <= 1    # inverted
    np.testing.assert_array_equal(out['rs'], reference(a * 0.5 - 1024))
    np.testing.assert_array_equal(out['neg'], reference(a * -2. + 10))
    assert np.abs(out['neg'].astype(int) - out['m1'].astype(int)).max() <= 1           # negative slope inverts too
    px = read_pixels(tmp_path/'rs'/'1.dcm')
    assert (px.slope, px.intercept) == (0.5, -1024.) and np.array_equal(modality_array(px), a * 0.5 - 1024)


def test_offsets_stack_neighbours_clamped(tmp_path):
    arrs = sagittal_series(tmp_path/'s', n=3, instances=[3, 1, 2])   # spatial order: instances 3, 1, 2 (or reversed)
    info = convert_series(tmp_path/'s', tmp_path/'o.png', size=None, offsets=(-2, 0, 2))
    assert info['instance_number'] == 1
    rgb = cv2.cvtColor(read_png(tmp_path/'o.png'), cv2.COLOR_BGR2RGB)
    for c, a in enumerate((arrs[2], arrs[1], arrs[0])): np.testing.assert_array_equal(rgb[..., c], reference(a))
    assert Image.open(tmp_path/'o.png').mode == 'RGB'


def test_threads_and_processes_agree(synth, tmp_path):
    a = convert_dataset(synth, tmp_path/'p', split='test', progress=False, parallel='process', n_workers=2)
    b = convert_dataset(synth, tmp_path/'t', split='test', progress=False, parallel='thread', n_workers=2)
    pd.testing.assert_frame_equal(a, b)
    for r in a.itertuples(): assert (tmp_path/'p'/r.png).read_bytes() == (tmp_path/'t'/r.png).read_bytes()


# ---------------------------------------------------------------- resumable
def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(Path(d).rglob('*')) if p.is_file()}

def _start(data, dest):
    code = 'import sys; from lsdc.cli import main; sys.exit(main(sys.argv[1:]))'
    return subprocess.Popen([sys.executable, '-c', code, 'convert', str(data), str(dest), '--quiet', '--workers', '2',
                             '--descriptions', 'Sagittal T1,Sagittal T2/STIR,Axial T2'],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

def _kill_after(proc, dest, n_png, timeout=60):
    "Kill the conversion (and its workers) once `n_png` PNGs exist; return how many there were"
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        n = sum(1 for _ in Path(dest).glob('*/*.png')) if Path(dest).exists() else 0
        if n >= n_png: break
        time.sleep(0.001)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return sum(1 for _ in Path(dest).glob('*/*.png'))

def test_kill_and_resume_matches_clean_run(synth, tmp_path):
    clean = convert_dataset(synth, tmp_path/'clean', descriptions=('Sagittal T1', 'Sagittal T2/STIR', 'Axial T2'),
                            progress=False, n_workers=1)
    total = len(clean)
    killed = [_kill_after(_start(synth, tmp_path/'run'), tmp_path/'run', k) for k in (1, total // 2)]
    assert any(0 < k < total for k in killed), f'no run was killed part-way ({killed} of {total} PNGs)'
    r = subprocess.run([sys.executable, '-c', 'import sys; from lsdc.cli import main; sys.exit(main(sys.argv[1:]))', 'convert',
                        str(synth), str(tmp_path/'run'), '--quiet', '--descriptions', 'Sagittal T1,Sagittal T2/STIR,Axial T2'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f'skipped {killed[-1]}' in r.stdout
    a, b = _snapshot(tmp_path/'clean'), _snapshot(tmp_path/'run')
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    # a third run converts nothing and changes nothing
    idx = convert_dataset(synth, tmp_path/'run', descriptions=('Sagittal T1', 'Sagittal T2/STIR', 'Axial T2'), progress=False)
    assert idx.attrs['skipped'] == total and idx.attrs['converted'] == 0 and _snapshot(tmp_path/'run') == a


def test_resume_reconverts_when_parameters_change_or_png_is_damaged(synth, tmp_path):
    idx = convert_dataset(synth, tmp_path/'o', split='test', size=64, progress=False, n_workers=1)
    png = tmp_path/'o'/idx.png[0]
    png.write_bytes(png.read_bytes()[:100])                       # damaged
    from lsdc.disk import owner_tag
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True).stdout.strip()
    (tmp_path/'o'/f'.{png.name}.{owner_tag(int(dead))}.abc.png.tmp').write_bytes(b'x')    # left over by a killed run
    again = convert_dataset(synth, tmp_path/'o', split='test', size=64, progress=False, n_workers=1)
    assert again.attrs['converted'] == 1 and read_png(png).shape == (64, 64)
    assert not list((tmp_path/'o').rglob('*.tmp'))
    bigger = convert_dataset(synth, tmp_path/'o', split='test', size=96, progress=False, n_workers=1)
    assert bigger.attrs['converted'] == len(idx) and read_png(png).shape == (96, 96)
    assert tuple(pd.read_csv(tmp_path/'o'/'index.csv').columns) == INDEX_COLUMNS
