"""The anatomical phantom: geometry read back from the DICOM headers, where each grade shows, determinism."""
import hashlib, subprocess, sys
from functools import lru_cache

import numpy as np, pandas as pd, pydicom, pytest

from lsdc.core import *
from lsdc.data import load_rsna, series_dir
from lsdc.geometry import FORAMEN_MM
from lsdc.synth import GRADE_PROBS, degenerated_grades, make_synthetic

SIZE = 128


@pytest.fixture(scope="module")
def anat(tmp_path_factory):
    "A small anatomical data set (40 train + 2 test studies, 128 px) loaded back, with a reader of its series"
    root = make_synthetic(tmp_path_factory.mktemp("anat") / "data", n_train=40, n_test=2, image_size=SIZE, seed=3,
                          phantom="anatomical", n_workers=2, mess=None)   # the phantom's own geometry: its mess has its own tests
    data = load_rsna(root)
    assert data.warnings == []

    @lru_cache(maxsize=None)
    def series(study_id, series_id):
        "{instance: dataset} of a train series, pixels decoded"
        return {int(p.stem): pydicom.dcmread(p) for p in series_dir(root, "train", study_id, series_id).glob("*.dcm")}
    data.series = series
    return data


def _geom(ds):
    "ImagePositionPatient, row and column directions, normal and pixel spacing of a slice"
    o = np.array(ds.ImageOrientationPatient, float)
    return np.array(ds.ImagePositionPatient, float), o[:3], o[3:], np.cross(o[:3], o[3:]), float(ds.PixelSpacing[0])


def _point(ds, x, y):
    "Patient position of a label's (x, y) on slice `ds` (the phantom's convention: pixel i spans i to i+1)"
    ipp, row, col, _, ps = _geom(ds)
    return ipp + x * ps * row + y * ps * col   # pixel centres count from 0 (DICOM)


def _stack(dss):
    "x of each slice's position (by instance), their centre, and the slice spacing from the positions"
    xs = {i: float(ds.ImagePositionPatient[0]) for i, ds in dss.items()}
    v = np.sort(list(xs.values()))
    return xs, v.mean(), float(np.diff(v).mean())


def _coords(d, word):
    c = d.coords[d.coords.condition.str.contains(word)]
    return c.assign(grade=[GRADES.index(d.train.set_index("study_id").loc[r.study_id, r.column]) for r in c.itertuples()])


def _series_id(d, study_id, desc):
    s = d.train_series
    return int(s[(s.study_id == study_id) & (s.series_description == desc)].series_id.iloc[0])


# ---- geometry -----------------------------------------------------------------------------------------------------
def test_series_geometry(anat):
    counts, kinds = {}, set()
    for r in anat.train_series.itertuples():
        dss = anat.series(r.study_id, r.series_id)
        _, row, col, normal, ps = _geom(next(iter(dss.values())))
        pos = np.sort([float(np.dot(normal, np.array(ds.ImagePositionPatient, float))) for ds in dss.values()])
        gaps = np.diff(pos)
        counts.setdefault(r.series_description, []).append(len(dss))
        if r.series_description == "Axial T2":
            assert np.allclose(row, [1, 0, 0]) and abs(col[0]) < 1e-6 and np.isclose(np.linalg.norm(col), 1, atol=1e-5)
            tilts = {round(float(ds.ImageOrientationPatient[5]), 3) for ds in dss.values()}
            kinds.add("stack" if gaps.max() < 6 else "tilted groups" if len(tilts) > 1 else "groups")
            assert 200 / SIZE <= ps <= 250 / SIZE
        else:
            assert np.allclose([*row, *col], [0, 1, 0, 0, 0, -1]) and 15 <= len(dss) <= 21
            assert 3.5 <= gaps.min() and gaps.max() <= 5.5 and np.allclose(gaps, gaps[0], atol=1e-3)
            ds = next(iter(dss.values()))
            assert abs(float(ds.SpacingBetweenSlices) - gaps[0]) < 1e-3 and float(ds.SliceThickness) <= gaps[0] + 1e-3
            assert 300 / SIZE <= ps <= 360 / SIZE
    assert kinds == {"stack", "groups", "tilted groups"}
    assert min(counts["Axial T2"]) >= 15 and max(counts["Axial T2"]) > 30


def test_foraminal_instance_on_its_side(anat):
    "Each foraminal label sits on a parasagittal T1 slice on its own side, 13-21 mm out (give or take half a slice)"
    rows = []
    for r in _coords(anat, "Foraminal").itertuples():
        xs, centre, step = _stack(anat.series(r.study_id, r.series_id))
        dx = xs[r.instance_number] - centre
        side = 1 if r.condition.startswith("Left") else -1
        assert side * dx > 0, r
        assert 13 - step / 2 <= abs(dx) <= 21 + step / 2, (r, dx, step)
        rows.append((r.level, abs(dx)))
    by_level = pd.DataFrame(rows, columns=["level", "dx"]).groupby("level").dx.mean()
    assert np.allclose(by_level.loc[list(LEVEL_NAMES.values())], FORAMEN_MM, atol=1.0)   # 14.9 .. 18.9 mm
    assert by_level.is_monotonic_increasing


def test_spinal_point_on_the_midline(anat):
    for r in _coords(anat, "Spinal").itertuples():
        xs, centre, step = _stack(anat.series(r.study_id, r.series_id))
        assert abs(xs[r.instance_number] - centre) <= step, r


def test_subarticular_side_and_level(anat):
    "The recess of a label lies on the patient's side (+x left) and its axial plane passes through the level's spinal point"
    sub, spinal = _coords(anat, "Subarticular"), _coords(anat, "Spinal").set_index(["study_id", "level"])
    for r in sub.itertuples():
        ds = anat.series(r.study_id, r.series_id)[r.instance_number]
        t2 = _series_id(anat, r.study_id, "Sagittal T2/STIR")
        _, midline, _ = _stack(anat.series(r.study_id, t2))
        side = 1 if r.condition.startswith("Left") else -1
        assert 5 < side * (_point(ds, r.x, r.y)[0] - midline) < 12, r
        if (r.study_id, r.level) in spinal.index:
            s = spinal.loc[(r.study_id, r.level)]
            p = _point(anat.series(r.study_id, t2)[int(s.instance_number)], s.x, s.y)
            ipp, _, _, normal, _ = _geom(ds)
            assert abs(np.dot(p - ipp, normal)) < 3.0, r
    # on one slice the patient's left recess is on the image's right (columns grow toward +x)
    pair = sub.groupby(["study_id", "level", "instance_number"]).filter(lambda g: len(g) == 2)
    left = pair[pair.condition.str.startswith("Left")].set_index(["study_id", "level"]).x
    right = pair[pair.condition.str.startswith("Right")].set_index(["study_id", "level"]).x
    assert len(left) > 50 and (left > right.loc[left.index]).all()


# ---- where the grades show ----------------------------------------------------------------------------------------
def _window(ds, x, y, h=1):
    a = ds.pixel_array.astype(float) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    return a[int(y) - h:int(y) + h + 1, int(x) - h:int(x) + h + 1].mean() / np.percentile(a, 99)


def _middle(dss):
    xs, centre, _ = _stack(dss)
    return dss[min(xs, key=lambda i: abs(xs[i] - centre))]


def _corr_in_level(c, values):
    """Correlation of grade and `values` within study and level: a study's labels share its degeneration and its
    brightness, and lower levels are both more degenerate and elsewhere in the image"""
    df = c.assign(v=values)
    dm = lambda s: s - s.groupby(df.study_id).transform("mean") - s.groupby(df.level).transform("mean") + s.mean()
    return np.corrcoef(dm(df.grade.astype(float)), dm(df.v))[0, 1]


def test_foraminal_grade_on_the_parasagittal_slice_only(anat):
    "Around a foraminal point the labelled T1 slice darkens with the grade; the same window on the middle slice does not"
    c = _coords(anat, "Foraminal")
    on = [_window(anat.series(r.study_id, r.series_id)[r.instance_number], r.x, r.y) for r in c.itertuples()]
    mid = [_window(_middle(anat.series(r.study_id, r.series_id)), r.x, r.y) for r in c.itertuples()]
    r_on, r_mid = _corr_in_level(c, on), _corr_in_level(c, mid)
    assert len(c) > 300 and r_on < -0.35 and abs(r_mid) < 0.12, (r_on, r_mid)


def test_spinal_and_subarticular_grades_on_their_slices(anat):
    for word, bound in (("Spinal", -0.5), ("Subarticular", -0.35)):
        c = _coords(anat, word)
        on = [_window(anat.series(r.study_id, r.series_id)[r.instance_number], r.x, r.y) for r in c.itertuples()]
        assert _corr_in_level(c, on) < bound, word


# ---- labels and determinism -----------------------------------------------------------------------------------
def test_grade_balance_and_correlation():
    "Grades correlate through the study's degeneration, yet each condition keeps the real grade balance"
    rng = np.random.default_rng(1)
    g = pd.DataFrame([degenerated_grades(rng)[0] for _ in range(4000)])
    for grp, p in GRADE_PROBS.items():
        v = g[[c for c in LABEL_COLUMNS if condition_group(c) == grp]].to_numpy().ravel()
        assert np.allclose(np.bincount(v, minlength=3) / len(v), p, atol=0.015), grp
    worst = g.max(axis=1)   # studies with one severe label have more moderate-or-worse labels elsewhere
    assert (g[worst == 2] > 0).mean(axis=1).mean() > 1.5 * (g[worst < 2] > 0).mean(axis=1).mean()


def _digest(d):
    h = hashlib.sha256()
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(d)).encode()); h.update(f.read_bytes())
    return h.hexdigest()


def test_anatomical_same_seed_same_bytes(tmp_path):
    kw = dict(n_train=3, n_test=1, image_size=48, phantom="anatomical")
    a = make_synthetic(tmp_path / "a", seed=7, n_workers=1, **kw)
    b = make_synthetic(tmp_path / "b", seed=7, n_workers=2, **kw)
    c = make_synthetic(tmp_path / "c", seed=8, n_workers=1, **kw)
    e = make_synthetic(tmp_path / "e", seed=7, n_workers=1, difficulty=0.9, **kw)
    m = make_synthetic(tmp_path / "m", seed=7, n_workers=1, n_train=3, n_test=1, image_size=48, phantom="middle")
    assert _digest(a) == _digest(b) and len({_digest(x) for x in (a, c, e, m)}) == 4
    assert pd.read_csv(a / "train.csv").equals(pd.read_csv(e / "train.csv"))   # difficulty changes the images, not the grades


def test_cli_phantom_options(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "lsdc.cli", "synth", *a], capture_output=True, text=True)
    r = run(str(tmp_path / "s"), "--n-train", "2", "--n-test", "1", "--image-size", "48", "--workers", "1",
            "--phantom", "anatomical", "--difficulty", "0.3")
    assert r.returncode == 0 and "wrote 2 train + 1 test studies" in r.stdout, r.stdout + r.stderr
    assert load_rsna(tmp_path / "s").warnings == []
    r = run(str(tmp_path / "t"), "--n-train", "2", "--phantom", "real")
    assert r.returncode == 1 and "phantom must be one of middle, anatomical, not 'real'" in r.stdout
    r = run(str(tmp_path / "u"), "--n-train", "2", "--phantom", "anatomical", "--difficulty", "1.5")
    assert r.returncode == 1 and "difficulty must be between 0 and 1" in r.stdout


def test_cli_mess_option(tmp_path):
    "`--mess kind=share,...` writes a messy set and its mess.csv; a bad one is one line and status 1; a --clean rewrite drops mess.csv;\n    the default is --mess real"
    run = lambda *a: subprocess.run([sys.executable, "-m", "lsdc.cli", "synth", *a], capture_output=True, text=True)
    small = ("--n-train", "3", "--n-test", "1", "--image-size", "48", "--workers", "1")
    r = run(str(tmp_path / "m"), *small, "--mess", "feet_first=1,axial_stacks=1")
    assert r.returncode == 0 and "4 studies with some mess (mess.csv)" in r.stdout, r.stdout + r.stderr
    m = pd.read_csv(tmp_path / "m" / "mess.csv")
    assert set(m.kind) == {"feet_first", "axial_stacks"} and m.groupby("study_id").size().eq(2).all() and m.study_id.nunique() == 4
    r = run(str(tmp_path / "n"), *small, "--mess", "feet=0.1")
    assert r.returncode == 1 and r.stdout.splitlines() == ["lsdc synth: unknown kind of mess 'feet'; the kinds: displaced, feet_first, "
                                                           "axial_stacks, same_slice, wrong_region, mislabelled, missing, sizes, bias"], r.stdout
    assert not (tmp_path / "n").exists()   # refused before anything is written
    r = run(str(tmp_path / "m"), *small, "--overwrite", "--clean")
    assert r.returncode == 0 and not (tmp_path / "m" / "mess.csv").exists() and "mess.csv" not in r.stdout
    small = ("--n-train", "12", "--n-test", "0", "--image-size", "48", "--workers", "1", "--seed", "1")
    assert run(str(tmp_path / "d"), *small).returncode == 0 and run(str(tmp_path / "r"), *small, "--mess", "real").returncode == 0
    assert (tmp_path / "d" / "mess.csv").is_file() and _digest(tmp_path / "d") == _digest(tmp_path / "r")
