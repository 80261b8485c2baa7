"""Level crops (`lsdc.crops`): where each crop is cut on hand-made series and on the anatomical phantom, the learned
offsets, the grade signal in the crops, resume and failures."""
import os

import cv2, numpy as np, pandas as pd, pytest

from lsdc.core import GRADES, LABEL_COLUMNS, LEVELS, condition_group, split_column
from lsdc.crops import *
from lsdc.png import png_info
from lsdc.data import RSNAData, load_rsna, long_labels, series_dir
from lsdc.geometry import midline_offsets, parallel_stack, patient_to_pixel, pixel_to_patient
from lsdc.synth import _study_jobs, dicom_slice, draw_anatomy, make_synthetic, SlicePlacement

SAG, AX, AX_MIRROR = (0., 1., 0., 0., 0., -1.), (1., 0., 0., 0., 1., 0.), (-1., 0., 0., 0., 1., 0.)
T2, T1, AXIAL = 'Sagittal T2/STIR', 'Sagittal T1', 'Axial T2'


# ---- a hand-made study: 1 mm pixels, a bright dot wherever a test wants one --------------------------------------
def _write_series(folder, geoms, instances, dots, study_id, series_id, description):
    "Write `geoms` as slices numbered `instances`; a patient point of `dots` within 0.5 mm of a slice's plane is a bright pixel"
    folder.mkdir(parents=True, exist_ok=True)
    for g, inst in zip(geoms, instances):
        img = np.full((g.rows, g.columns), 20, np.uint16)
        img[:g.rows // 4, :g.columns // 4] = 1000     # a bright corner sets the 99th percentile
        for p in dots:
            q = patient_to_pixel(g, p)
            x, y = round(float(q.x)), round(float(q.y))
            if abs(q.distance) < 0.5 and 0 <= x < g.columns and 0 <= y < g.rows: img[y, x] = 1000
        dicom_slice(img, study_id=study_id, series_id=series_id, instance=int(inst), description=description,
                    placement=SlicePlacement(position=g.position, orientation=(*g.row_dir, *g.col_dir), spacing=float(g.spacing[0]),
                                             thickness=4.), seed=0).save_as(folder / f'{inst}.dcm', enforce_file_format=True)


def _numbering(n, order):
    return {'natural': np.arange(1, n + 1), 'reversed': np.arange(n, 0, -1),
            'shuffled': np.random.default_rng(n).permutation(n) + 1}[order]


def _study(root, study_id, order='natural', axial=AX, z=-0.5):
    """A study whose level L1/L2 lies at P = (0, -1.5, z) on the middle T2 slice: dots at P (T2), at P's projection on
    the T1 slice 16 mm to the patient's left, and at the left recess 9 mm left of P on the axial slices at z 0 and +4.
    Returns its series table rows and its point"""
    shape = dict(pixel_spacing=(1., 1.), shape=(64, 64))
    t2 = parallel_stack(SAG, 7, gap=4., **shape)                         # x = +12 .. -12
    t1 = parallel_stack(SAG, 11, gap=4., **shape)                        # x = +20 .. -20
    ax = parallel_stack(axial, 9, gap=4., centre=(0.5, 0., 0.), **shape)  # z = -16 .. 16 (or back), recesses on whole pixels
    P = pixel_to_patient(t2[3], 30, 32) + (0., 0., z + 0.5)
    ids = dict(zip((T2, T1, AXIAL), (study_id * 10 + 1, study_id * 10 + 2, study_id * 10 + 3)))
    dots = {T2: [P], T1: [P + (16., 0., 0.)], AXIAL: [(9., P[1], 0.), (9., P[1], 4.)]}
    inst = {}
    for d, geoms in ((T2, t2), (T1, t1), (AXIAL, ax)):
        inst[d] = _numbering(len(geoms), order)
        _write_series(root / 'train_images' / str(study_id) / str(ids[d]), geoms, inst[d], dots[d], study_id, ids[d], d)
    q = patient_to_pixel(t2[3], P)
    point = (study_id, ids[T2], int(inst[T2][3]), 'l1_l2', float(q.x), float(q.y), 'annotated')
    return [(study_id, ids[d], d) for d in (T2, T1, AXIAL)], point, inst


def _data(root, series):
    return RSNAData(root, train_series=pd.DataFrame(series, columns=['study_id', 'series_id', 'series_description']))


def _points(points):
    return pd.DataFrame(points, columns=['study_id', 'series_id', 'instance_number', 'level', 'x', 'y', 'source'])


def _crop(dest, idx, col, study_id=None):
    r = idx[(idx.column == col) & ((idx.study_id == study_id) if study_id else True)].iloc[0]
    return r, cv2.cvtColor(cv2.imread(str(dest / r.png)), cv2.COLOR_BGR2RGB)


OPTS = CropOptions(crop_mm=21., size=21)   # 1 mm per crop pixel, centre pixel (10, 10)

def _crops(data, points, dest, resume:bool=True, **opts):
    "`make_crops` with the default offsets, serially, and `OPTS` with `opts` changed"
    return make_crops(data, points, dest, opts=OPTS._replace(**opts), offsets=default_offsets(), n_workers=1, resume=resume)


@pytest.mark.parametrize('order', ['natural', 'reversed', 'shuffled'])
def test_crop_centres_and_sides_on_a_hand_made_study(tmp_path, order):
    series, point, inst = _study(tmp_path, 1, order=order)
    idx, fail = _crops(_data(tmp_path, series), _points([point]), tmp_path / 'crops')
    assert len(idx) == 5 and len(fail) == 20 and fail.reason.str.startswith('no annotated point for level').all()
    c = 10
    r, im = _crop(tmp_path / 'crops', idx, 'spinal_canal_stenosis_l1_l2')
    assert r.instance_number == inst[T2][3] and list(im[c, c]) == [0, 255, 0], im[c, c]
    r, im = _crop(tmp_path / 'crops', idx, 'left_neural_foraminal_narrowing_l1_l2')
    assert r.instance_number == inst[T1][1] and list(im[c, c]) == [0, 255, 0]          # the slice at x = +16, patient left
    assert im.sum() == 255
    r, im = _crop(tmp_path / 'crops', idx, 'right_neural_foraminal_narrowing_l1_l2')
    assert r.instance_number == inst[T1][9] and im.max() == 0                           # x = -16: no dot there
    r, im = _crop(tmp_path / 'crops', idx, 'left_subarticular_stenosis_l1_l2')
    assert r.instance_number == inst[AXIAL][4] and list(im[c, c]) == [0, 255, 255]      # slice z = 0, then z = +4 above it
    r, im = _crop(tmp_path / 'crops', idx, 'right_subarticular_stenosis_l1_l2')
    assert im.max() == 0


def test_subarticular_sides_follow_the_orientation(tmp_path):
    "A mirrored axial series (rows running to the patient's right) gives the same crops: left is the patient's left"
    crops = {}
    for k, axial in enumerate((AX, AX_MIRROR)):
        series, point, inst = _study(tmp_path / str(k), 1, axial=axial)
        idx, _ = _crops(_data(tmp_path / str(k), series), _points([point]), tmp_path / f'crops{k}')
        left, right = (_crop(tmp_path / f'crops{k}', idx, f'{s}_subarticular_stenosis_l1_l2') for s in ('left', 'right'))
        assert left[0].instance_number == inst[AXIAL][4]                                 # z = 0 in both
        crops[k] = left[1], right[1], left[0].x
    assert np.array_equal(crops[0][0], crops[1][0]) and crops[0][0][10, 10, 1] == 255 and crops[1][1].max() == 0
    assert crops[0][2] == pytest.approx(40) and crops[1][2] == pytest.approx(23)      # image columns: right half, then left half


def test_the_axial_slice_through_the_level(tmp_path):
    "Level points between slices pick the nearest axial slice; one beyond the stack has no crop"
    points, series = [], []
    for sid, z in ((1, 1.5), (2, 2.5), (3, -50.)):
        s, p, inst = _study(tmp_path, sid, order='shuffled', z=z)
        series += s; points.append(p)
    idx, fail = _crops(_data(tmp_path, series), _points(points), tmp_path / 'crops')
    got = idx[idx.column == 'left_subarticular_stenosis_l1_l2'].set_index('study_id').instance_number
    assert got.loc[1] == inst[AXIAL][4] and got.loc[2] == inst[AXIAL][5], got                  # z = 0, then z = 4
    f = fail[(fail.study_id == 3) & fail.column.str.contains('subarticular_stenosis_l1_l2')]
    assert len(f) == 2 and f.reason.str.startswith('no Axial T2 image within 10 mm of the level').all(), f


def test_jitter_is_bounded_and_seeded(tmp_path):
    series, point, _ = _study(tmp_path, 1)
    data, pts = _data(tmp_path, series), _points([point])
    run = lambda name, **kw: _crops(data, pts, tmp_path / name, **kw)[0].set_index('column')[['x', 'y']]
    base, a, b, c = run('base'), run('a', jitter_mm=3.), run('b', jitter_mm=3.), run('c', jitter_mm=3., seed=1)
    d = (a - base).abs().to_numpy()
    assert (d <= 3 + 1e-6).all() and (d > 0).any() and a.equals(b) and not a.equals(c)
    located = _points([point]).assign(source='located')          # cut as at test time: never jittered
    loc = lambda name, **kw: _crops(data, located, tmp_path / name, **kw)[0].set_index('column')[['x', 'y']]
    assert loc('la', jitter_mm=3.).equals(loc('lb'))


def test_failures_are_recorded_and_the_run_goes_on(tmp_path):
    s1, p1, _ = _study(tmp_path, 1)
    s2, p2, _ = _study(tmp_path, 2)
    s3, _, _ = _study(tmp_path, 3)
    (tmp_path / 'train_images' / '2' / '23').rename(tmp_path / 'gone')     # study 2 loses its axial series
    p4 = (1, 999, 1, 'l2_l3', 1., 1., 'annotated')                          # a point on a series the study does not have
    idx, fail = _crops(_data(tmp_path, s1 + s2 + s3), _points([p1, p2, p4]), tmp_path / 'crops')
    assert list(idx.columns) == list(CROP_COLUMNS) and list(fail.columns) == list(CROP_FAILURE_COLUMNS)
    assert list(pd.read_csv(tmp_path / 'crops' / 'index.csv').columns) == list(CROP_COLUMNS)
    assert list(pd.read_csv(tmp_path / 'crops' / 'failures.csv').columns) == list(CROP_FAILURE_COLUMNS)
    by = lambda sid, col: fail[(fail.study_id == sid) & (fail.column == col)].reason.tolist()
    assert set(idx.study_id) == {1, 2} and len(idx[idx.study_id == 2]) == 3
    assert by(2, 'left_subarticular_stenosis_l1_l2')[0].endswith('series folder not found')
    assert by(1, 'spinal_canal_stenosis_l2_l3') == ["the point's series 999 is not a series of this study"]
    assert len(fail[fail.study_id == 3]) == 25 and (fail[fail.study_id == 3].reason == 'no level points for this study').all()


def test_resume_skips_done_crops_and_redoes_changed_ones(tmp_path):
    series, point, inst = _study(tmp_path, 1)
    data, pts, dest = _data(tmp_path, series), _points([point]), tmp_path / 'crops'
    run = lambda p=pts, **kw: _crops(data, p, dest, **kw)[0]
    first = run()
    assert first.attrs['reasons'] == {'new': 5}
    again = run()
    assert (again.attrs['made'], again.attrs['skipped']) == (0, 5) and again.equals(first)
    f = tmp_path / 'train_images' / '1' / '12' / f'{inst[T1][0]}.dcm'
    st = f.stat(); os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))     # a T1 file changes
    assert run().attrs['reasons'] == {'source': 2}
    assert run(pts.assign(x=pts.x + 1)).attrs['reasons'] == {'options': 5}       # the point moved
    png = dest / first.png.iloc[0]
    png.write_bytes(png.read_bytes()[:-3])
    assert run(pts.assign(x=pts.x + 1)).attrs['reasons'] == {'damaged': 1}
    assert run(pts.assign(x=pts.x + 1), crop_mm=30.).attrs['reasons'] == {'options': 5}
    assert run(pts.assign(x=pts.x + 1), crop_mm=30., resume=False).attrs['reasons'] == {'overwrite': 5}


def test_bad_options_and_cli(tmp_path):
    series, point, _ = _study(tmp_path, 1)
    with pytest.raises(ValueError, match='neighbours must be 0 or 1'):
        make_crops(_data(tmp_path, series), _points([point]), tmp_path / 'c', opts=CropOptions(neighbours=2), offsets=default_offsets())
    assert crops_cli(str(tmp_path / 'nowhere'), str(tmp_path / 'p.csv'), str(tmp_path / 'c'), quiet=True) == 2


# ---- the anatomical phantom ---------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def anat(tmp_path_factory):
    root = make_synthetic(tmp_path_factory.mktemp('anat') / 'data', n_train=8, n_test=2, image_size=96, seed=0, n_workers=1,
                          phantom='anatomical', mess=None)   # clean: the messy set's crops are tested end to end in test_levels
    data = load_rsna(root)
    offsets = learn_offsets(data, n_workers=1)
    dest = root.parent / 'crops'
    idx, fail = make_crops(data, annotated_points(data), dest, offsets=offsets, n_workers=1)
    return data, offsets, idx, fail, dest


def test_learned_offsets_are_the_phantoms(anat):
    data, off, *_ = anat
    jobs = _study_jobs(data.path, n_train=8, n_test=2, seed=0, image_size=96, phantom='anatomical')[:8]
    spines = [draw_anatomy(np.random.default_rng([j.seed, j.index]), difficulty=j.difficulty).spine for j in jobs]
    foramen, recess = np.median([s.foramen for s in spines], axis=0), np.median([s.recess for s in spines])
    scale = np.median([s.scale for s in spines])
    assert off.learned and all(off.counts[c] >= 6 for c in LABEL_COLUMNS[5:]), off.counts
    for k, l in enumerate(LEVELS):
        left, right = off.foraminal[f'left_neural_foraminal_narrowing_{l}'], off.foraminal[f'right_neural_foraminal_narrowing_{l}']
        assert abs(left[0] - foramen[k]) < 1.0 and abs(right[0] + foramen[k]) < 1.0, (l, left, right, foramen[k])
        for v in (left, right): assert np.allclose(v[1:], (-3 * scale, 5 * scale), atol=0.2), v   # the foramen: 3 mm anterior, 5 mm up
        sl, sr = off.subarticular[f'left_subarticular_stenosis_{l}'], off.subarticular[f'right_subarticular_stenosis_{l}']
        assert abs(sl[0] - recess) < 0.75 and abs(sr[0] + recess) < 0.75, (l, sl, sr, recess)
        assert abs(sl[1] + 3 * scale) < 0.3 and abs(sr[1] + 3 * scale) < 0.3                       # 3 mm anterior
    default = learn_offsets(RSNAData(data.path, coords=data.coords.iloc[:0]), n_workers=1)
    assert not default.learned and default == default_offsets()


def test_phantom_crops_sit_on_the_annotations(anat):
    "Foraminal crops on the annotated side and slice, subarticular crops on the annotated axial slice, centred near the labels"
    data, _, idx, fail, _ = anat
    assert len(idx) + len(fail) == 8 * 25 and fail.reason.str.startswith('no annotated point').all()
    c = data.coords.set_index(['study_id', 'column'])
    same, mm = {}, {}
    for r in idx[~idx.column.str.startswith('spinal')].itertuples():
        s = read_slices(series_dir(data.path, 'train', r.study_id, r.series_id))
        i = s.find(r.instance_number)
        if 'foraminal' in r.column:
            off = midline_offsets(s.geoms)[i]
            assert off > 10 if r.column.startswith('left') else off < -10, (r.column, off)
        if (r.study_id, r.column) not in c.index: continue
        a, g = c.loc[(r.study_id, r.column)], condition_group(r.column)
        same.setdefault(g, []).append(a.instance_number == r.instance_number)
        if same[g][-1]: mm.setdefault(g, []).append(np.linalg.norm(pixel_to_patient(s.geoms[i], r.x, r.y) - pixel_to_patient(s.geoms[i], a.x, a.y)))
    assert np.mean(same['subarticular']) > 0.95 and np.mean(same['foraminal']) > 0.8, {g: np.mean(v) for g, v in same.items()}
    assert all(np.median(v) < 1.5 and np.max(v) < 4 for v in mm.values()), {g: (np.median(v), np.max(v)) for g, v in mm.items()}


def test_parallel_crops_equal_serial(anat, tmp_path):
    data, off, idx, _, dest = anat
    par, _ = make_crops(data, annotated_points(data), tmp_path / 'par', offsets=off, n_workers=2)
    assert par.equals(idx) and all((tmp_path / 'par' / p).read_bytes() == (dest / p).read_bytes() for p in idx.png)


def _within(df):
    "Correlation of grade and crop brightness within study and level (a study's labels share its degeneration)"
    dm = lambda s: s - s.groupby(df.study_id).transform('mean') - s.groupby(df.level).transform('mean') + s.mean()
    return np.corrcoef(dm(df.grade.astype(float)), dm(df.v))[0, 1]


def test_the_grade_signal_is_in_the_crops(tmp_path):
    "Crop centres darken with the grade; the middle-slice approach (foramina read on the mid-sagittal T1) does not"
    root = make_synthetic(tmp_path / 'data', n_train=12, n_test=1, image_size=128, seed=0, n_workers=1, phantom='anatomical',
                          difficulty=0.2, mess=None)
    data = load_rsna(root)
    grade = long_labels(data.train).set_index(['study_id', 'column']).grade_index
    off = learn_offsets(data, n_workers=1)
    middle = off._replace(foraminal={c: (0., *v[1:]) for c, v in off.foraminal.items()})

    def centres(name, offsets):
        idx, _ = make_crops(data, annotated_points(data), tmp_path / name, offsets=offsets, n_workers=1)
        v = [cv2.imread(str(tmp_path / name / p))[40:56, 40:56, 1].mean() for p in idx.png]
        df = idx.assign(v=v, grade=[grade.get(k, -1) for k in zip(idx.study_id, idx.column)],
                        group=[condition_group(c) for c in idx.column], level=[split_column(c)[1] for c in idx.column])
        return df[df.grade >= 0]
    crops, mid = centres('crops', off), centres('middle', middle)
    r = {g: _within(crops[crops.group == g]) for g in ('spinal', 'foraminal', 'subarticular')}
    r_mid = _within(mid[mid.group == 'foraminal'])
    sub = crops[crops.group == 'subarticular']
    sag = crops[crops.group == 'spinal'].set_index(['study_id', 'level']).v          # subarticular read on the mid-sagittal T2
    r_sub_mid = _within(sub.assign(v=[sag.get(k, np.nan) for k in zip(sub.study_id, sub.level)]).dropna())
    assert r['spinal'] < -0.6 and r['foraminal'] < -0.35 and abs(r_mid) < 0.2, (r, r_mid)
    assert r['subarticular'] < -0.3 and r['subarticular'] < r_sub_mid - 0.1, (r, r_sub_mid)


def test_mirrored_right_crops_look_like_the_left(anat, tmp_path):
    "With `mirror`, a right recess crop is the one cut without it turned left to right, a right foramen's has its slices in the other order, and both look like the left side's crops (the recess on the same side of the image); no other crop changes"
    data, off, idx, _, dest = anat
    mi, _ = make_crops(data, annotated_points(data), tmp_path / 'm', offsets=off, n_workers=1, opts=CropOptions(mirror=True))
    assert mi.drop(columns='png').equals(idx.drop(columns='png')) and mi.png.tolist() == idx.png.tolist()   # same slices and centres
    read = lambda d, p: cv2.imread(str(d / p)).astype(float)
    corr = lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1]
    gain = {}
    for r in mi.itertuples():
        a, b = read(tmp_path / 'm', r.png), read(dest, r.png)
        if r.column not in MIRRORED: assert np.array_equal(a, b), r.column; continue
        assert np.abs(a - (b[:, ::-1] if 'subarticular' in r.column else b[..., ::-1])).max() <= 1, r.column
        left = r.png.replace('_right_', '_left_')
        if (dest / left).is_file(): gain.setdefault(condition_group(r.column), []).append(corr(read(dest, left), a) - corr(read(dest, left), b))
    assert np.mean(gain['subarticular']) > 0.3 and np.mean(gain['foraminal']) > 0.02, {g: np.mean(v) for g, v in gain.items()}
    assert {png_info(tmp_path / 'm' / p)['params']['mirror'] for p in mi[mi.column.isin(MIRRORED)].png} == {True}
