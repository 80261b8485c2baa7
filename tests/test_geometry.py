"Behaviour of `lsdc.geometry` on hand-built stacks (sagittal, reversed, shuffled, rotated, mirrored, tilted axial groups) and on the headers of pydicom's real MR files"
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from lsdc.geometry import (GeometryError, FORAMEN_MM, SliceGeometry, axial_side, image_centre, midline_offsets, nearest_slice,
                           order_slices, parallel_stack, patient_to_pixel, pixel_to_patient, read_geometry,
                           sagittal_slice_for_offset, slice_normal, slice_side)

SAGITTAL = (0., 1., 0., 0., 0., -1.)          # rows go posterior, columns go down: normal -x (patient right)
MIRRORED = (0., -1., 0., 0., 0., -1.)         # rows go anterior: normal +x (patient left)


def rotated_sagittal(deg):
    "A sagittal orientation rotated `deg` degrees about the patient z axis"
    a = np.deg2rad(deg)
    return (np.sin(a), np.cos(a), 0., 0., 0., -1.)


def tilted_axial(deg):
    "An axial orientation tilted `deg` degrees about the patient x axis"
    t = np.deg2rad(deg)
    return (1., 0., 0., 0., np.cos(t), np.sin(t))


def positions(geoms): return np.stack([g.position for g in geoms])


# ---------------------------------------------------------------- sagittal stacks
@pytest.mark.parametrize("orientation, normal_x", [(SAGITTAL, -1.), (MIRRORED, 1.)])
def test_offsets_are_positive_on_the_patients_left(orientation, normal_x):
    geoms = parallel_stack(orientation, 7, gap=4.48, centre=(-2., 30., 100.))
    assert slice_normal(geoms[0])[0] == normal_x
    off = midline_offsets(geoms)
    np.testing.assert_allclose(off, positions(geoms)[:, 0] + 2., atol=1e-9)   # the offset is the x distance from x = -2
    np.testing.assert_allclose(np.sort(off), np.arange(-3, 4) * 4.48, atol=1e-9)
    sides = slice_side(off, order_slices(geoms).spacing)
    assert list(sides[off > 1]) == ['left'] * 3 and list(sides[off < -1]) == ['right'] * 3
    assert list(sides[np.abs(off) < 1]) == ['middle']


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_order_and_offsets_do_not_depend_on_input_order(seed):
    geoms = parallel_stack(SAGITTAL, 15, gap=4.48, centre=(5., 0., 0.))
    perm = np.random.default_rng(seed).permutation(15)
    shuffled = [geoms[i]._replace(instance=int(k), file=f'{k}.dcm') for i, k in zip(perm, perm[::-1] + 1)]
    ref, got = order_slices(geoms), order_slices(shuffled)
    np.testing.assert_array_equal(perm[got.order], ref.order)                 # the same slices, in the same place
    np.testing.assert_allclose(got.positions, ref.positions, atol=1e-9)
    assert got.spacing == pytest.approx(4.48) and ref.spacing == pytest.approx(4.48)
    np.testing.assert_allclose(midline_offsets(shuffled), midline_offsets(geoms)[perm], atol=1e-9)
    rev = order_slices(geoms[::-1])
    np.testing.assert_array_equal(rev.order, np.arange(15)[::-1])
    np.testing.assert_allclose(rev.positions, ref.positions)


def test_spacing_ignores_header_tags_and_uneven_gaps():
    geoms = parallel_stack(SAGITTAL, 6, gap=4.)
    geoms[5] = geoms[5]._replace(position=geoms[5].position + [-3., 0., 0.])  # one gap of 7 mm
    assert order_slices(geoms).spacing == pytest.approx(4.)


def test_rotated_stack_measures_offsets_along_its_oblique_normal():
    geoms = parallel_stack(rotated_sagittal(10), 5, gap=4.5, centre=(3., 10., 20.))
    a = np.deg2rad(10)
    np.testing.assert_allclose(slice_normal(geoms[0]), [-np.cos(a), np.sin(a), 0.], atol=1e-12)
    off = midline_offsets(geoms)
    np.testing.assert_allclose(off, [9., 4.5, 0., -4.5, -9.], atol=1e-9)
    np.testing.assert_allclose([image_centre(g)[0] - 3. for g in geoms], off * np.cos(a), atol=1e-9)
    # the midline plane through x = 3 - 4.5 / cos(10°) lies 4.5 mm to the right along the normal
    np.testing.assert_allclose(midline_offsets(geoms, midline_x=3. - 4.5 / np.cos(a)), off + 4.5, atol=1e-9)


def test_foramen_slices_lie_three_to_four_slices_from_the_middle():
    geoms = parallel_stack(SAGITTAL, 15, gap=4.48, centre=(1., 0., 0.))
    perm = np.random.default_rng(3).permutation(15)
    shuffled = [geoms[i] for i in perm]
    for sign, side in ((1, 'left'), (-1, 'right')):
        picks = sagittal_slice_for_offset(shuffled, sign * np.array(FORAMEN_MM))
        off = midline_offsets(shuffled)[picks]
        np.testing.assert_allclose(off, sign * 4.48 * np.array([3, 4, 4, 4, 4]), atol=1e-9)
        assert list(slice_side(off, 4.48)) == [side] * 5
        np.testing.assert_allclose(positions([shuffled[i] for i in picks])[:, 0] - 1., off, atol=1e-9)


# ---------------------------------------------------------------- axial groups and the nearest slice
def axial_groups():
    "An axial series in four stacks angled to their discs, listed in a scrambled order"
    groups = [parallel_stack(tilted_axial(t), 5, gap=4., centre=(0., 5., z), pixel_spacing=(0.47, 0.47), shape=(320, 320))
              for t, z in ((-12, -75.), (-4, -30.), (6, 15.), (18, 60.))]
    flat = sum(groups, [])
    perm = np.random.default_rng(7).permutation(len(flat))
    return [flat[i] for i in perm], [int(np.flatnonzero(perm == 5 * k + 2)[0]) for k in range(4)]


def test_level_point_on_the_mid_sagittal_slice_finds_its_axial_stack():
    axial, middles = axial_groups()
    mid = parallel_stack(SAGITTAL, 1, centre=(0., 5., -10.), pixel_spacing=(0.7, 0.7), shape=(256, 256))[0]
    for k, i in enumerate(middles):
        target = image_centre(axial[i])
        px = patient_to_pixel(mid, target)                       # the level as located on the sagittal slice
        assert abs(px.distance) < 1e-9 and 0 <= px.x < 256 and 0 <= px.y < 256
        r = nearest_slice(axial, pixel_to_patient(mid, px.x, px.y) + [0., 0., 1.])
        assert r.index == i and r.inside
        assert r.distance == pytest.approx(np.cos(np.deg2rad((-12, -4, 6, 18)[k])), abs=1e-9)
        assert (r.x, r.y) == pytest.approx((159.5, 159.5 + np.sin(np.deg2rad((-12, -4, 6, 18)[k])) / 0.47), abs=1e-9)


def test_nearest_slice_prefers_an_image_that_holds_the_point():
    axial, middles = axial_groups()
    tilted = axial[middles[3]]
    point = image_centre(tilted) + 100. * tilted.col_dir            # on its plane, 25 mm beyond the edge of its image
    r = nearest_slice(axial, point)
    assert r.index == middles[3] and not r.inside and r.distance == pytest.approx(0., abs=1e-9)
    flat = parallel_stack(tilted_axial(0), 1, centre=point - [0., 0., 3.], pixel_spacing=(0.47, 0.47), shape=(512, 512))
    r = nearest_slice(axial + flat, point)
    assert r.index == len(axial) and r.inside and r.distance == pytest.approx(3., abs=1e-9)
    many = nearest_slice(axial + flat, np.stack([point, image_centre(axial[middles[0]])]))
    assert many.index.tolist() == [len(axial), middles[0]] and many.inside.tolist() == [True, True]



def test_nearest_slice_tie_goes_to_the_image_that_holds_the_point():
    small = parallel_stack(SAGITTAL, 1, pixel_spacing=(0.5, 0.5))[0]                        # 32 mm image at x = 0
    large = parallel_stack(SAGITTAL, 1, centre=(3., 0., 0.), pixel_spacing=(0.5, 0.5), shape=(256, 256))[0]
    point = pixel_to_patient(small, 20., 63.5 + 6)                                            # 3 mm below its lower edge
    for geoms, want in (([small, large], 1), ([large, small], 0)):
        r = nearest_slice(geoms, point)
        assert (r.index, r.inside) == (want, True) and r.distance == pytest.approx(3., abs=1e-12)   # normal is -x

@pytest.mark.parametrize("orientation", [SAGITTAL, rotated_sagittal(10), tilted_axial(18), MIRRORED])
def test_pixel_patient_round_trip(orientation):
    g = parallel_stack(orientation, 1, centre=(12., -40., 33.), pixel_spacing=(0.47, 0.69), shape=(300, 200))[0]
    rng = np.random.default_rng(0)
    x, y, d = rng.uniform(-10, 210, 50), rng.uniform(-10, 310, 50), rng.uniform(-20, 20, 50)
    p = pixel_to_patient(g, x, y) + d[:, None] * slice_normal(g)
    back = patient_to_pixel(g, p)
    np.testing.assert_allclose(np.stack([back.x, back.y, back.distance]), np.stack([x, y, d]), atol=1e-9)
    step = pixel_to_patient(g, 1, 0) - pixel_to_patient(g, 0, 0)   # one column: column spacing along the row direction
    np.testing.assert_allclose(step, 0.69 * np.asarray(orientation[:3]), atol=1e-12)


def test_axial_side_follows_the_row_direction():
    g = parallel_stack(tilted_axial(6), 1, shape=(320, 320))[0]
    assert list(axial_side(g, [300, 10])) == ['left', 'right']
    assert pixel_to_patient(g, 300, 160)[0] > pixel_to_patient(g, 10, 160)[0]   # column 300 is nearer the patient's left
    m = parallel_stack((-1., 0., 0., 0., 1., 0.), 1, shape=(320, 320))[0]
    assert list(axial_side(m, [300, 10])) == ['right', 'left']
    with pytest.raises(ValueError, match='rows do not run left-right'): axial_side(parallel_stack(SAGITTAL, 1)[0], 5)


# ---------------------------------------------------------------- real headers (pydicom and pydicom-data)
REAL = {  # file: expected slice normal
    'MR_small.dcm': (0., 0., 1.),
    'MR_small_implicit.dcm': (0., 0., 1.),
    'MR_small_bigendian.dcm': (0., 0., 1.),
    'MR2_UNCR.dcm': (-0.822001, 0.569486, 0.),               # pydicom-data: an oblique sagittal, 1024 x 1024
    'MR2_J2KR.dcm': (-0.822001, 0.569486, 0.),
    'MR-SIEMENS-DICOM-WithOverlays.dcm': (0., 0., 1.),        # pydicom-data: axial, 484 x 484
}


def real_file(name):
    "Path of one of pydicom's test files, or skip when it is not installed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            fn = get_testdata_file(name)
    except Exception as e: pytest.skip(f'{name} not available ({e})')
    if fn is None: pytest.skip(f'{name} not available')
    return fn


@pytest.mark.parametrize("name", list(REAL))
def test_real_headers(name):
    fn = real_file(name)
    ds = pydicom.dcmread(fn, stop_before_pixels=True)
    g = read_geometry(fn)
    assert Path(g.file).name == name and (g.rows, g.columns) == (ds.Rows, ds.Columns)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_array_equal(pixel_to_patient(g, 0, 0), ipp)
    n = slice_normal(g)
    assert np.linalg.norm(n) == pytest.approx(1., abs=1e-12)
    np.testing.assert_allclose(n, REAL[name], atol=1e-5)
    rs, cs = (float(v) for v in ds.PixelSpacing)
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    far = pixel_to_patient(g, g.columns - 1, g.rows - 1)
    np.testing.assert_allclose(far, ipp + (g.columns - 1) * cs * iop[:3] + (g.rows - 1) * rs * iop[3:], atol=1e-4)
    xy = np.array([[0., 0.], [g.columns - 1, 0.], [17.25, g.rows / 3], [g.columns - 1, g.rows - 1]])
    back = patient_to_pixel(g, pixel_to_patient(g, xy[:, 0], xy[:, 1]))
    np.testing.assert_allclose(np.stack([back.x, back.y], 1), xy, atol=1e-9)
    np.testing.assert_allclose(back.distance, 0., atol=1e-9)
    ref = SliceGeometry.from_dataset(ds)
    assert all(np.array_equal(a, b) for a, b in zip(g[:4], ref[:4])) and g[4:6] == ref[4:6]


def test_real_axial_and_sagittal_sides():
    axial = read_geometry(real_file('MR-SIEMENS-DICOM-WithOverlays.dcm'))
    assert list(axial_side(axial, [400, 80])) == ['left', 'right']
    sag = read_geometry(real_file('MR2_UNCR.dcm'))
    with pytest.raises(ValueError, match='rows do not run left-right'): axial_side(sag, 10)
    np.testing.assert_allclose(midline_offsets([sag]), [0.])
    x0 = image_centre(sag)[0]
    np.testing.assert_allclose(midline_offsets([sag], midline_x=x0 - 10.), [10. * 0.822001], atol=1e-4)


def test_real_header_errors_name_the_file():
    fn = real_file('MR_small.dcm')
    ds = pydicom.dcmread(fn, stop_before_pixels=True)
    ds.ImageOrientationPatient = [1., 0., 0., 0., 0.5, 0.]
    with pytest.raises(GeometryError, match=r'MR_small.dcm: ImageOrientationPatient .* is not two unit vectors'):
        SliceGeometry.from_dataset(ds)
    ds.ImageOrientationPatient = [1., 0., 0., 0.6, 0.8, 0.]
    with pytest.raises(GeometryError, match='not orthogonal'): SliceGeometry.from_dataset(ds)
    del ds.ImagePositionPatient
    with pytest.raises(GeometryError, match='MR_small.dcm: no ImagePositionPatient'): SliceGeometry.from_dataset(ds)
    with pytest.raises(GeometryError, match='emri_small.dcm: multi-frame file'): read_geometry(real_file('emri_small.dcm'))
    with pytest.raises(GeometryError, match='not a DICOM file'): read_geometry(Path(__file__))
