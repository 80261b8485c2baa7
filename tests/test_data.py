"""Schema round-trips, data-folder validation on malformed fixtures, and the synthetic data set."""
import hashlib, shutil, subprocess, sys, warnings
from pathlib import Path

import numpy as np, pandas as pd, pydicom, pytest

from lsdc.core import *
from lsdc.data import DataError, DataWarning, load_rsna, long_labels, pick_series, read_coords, series_dir
from lsdc.synth import make_synthetic

KAGGLE_COLUMNS = {
    "train_series_descriptions.csv": ["study_id", "series_id", "series_description"],
    "test_series_descriptions.csv": ["study_id", "series_id", "series_description"],
    "train_label_coordinates.csv": ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"],
    "sample_submission.csv": ["row_id", "normal_mild", "moderate", "severe"],
}


# ---- schema ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("col", LABEL_COLUMNS)
def test_schema_round_trips(col):
    cond, lvl = condition_label(col)
    assert label_column(cond, lvl) == col
    assert cond.lower().replace(" ", "_") + "_" + lvl.lower().replace("/", "_") == col
    assert parse_row_id(row_id(12345, col)) == (12345, col)
    assert condition_group(col) == condition_group(row_id(1, col))
    assert series_for_condition(col) in SAGITTAL
    assert series_for_condition(col, "Sagittal T1") == "Sagittal T1"


def test_schema_shapes():
    assert len(LABEL_COLUMNS) == 25 and len(set(LABEL_COLUMNS)) == 25
    assert [grade_index(g) for g in GRADES] == [0, 1, 2] == [grade_index(k) for k in GRADE_KEYS]
    assert [grade_weight(g) for g in GRADES] == [1, 2, 4]
    assert sum(condition_group(c) == "foraminal" for c in LABEL_COLUMNS) == 10


# ---- validation ---------------------------------------------------------------------------------------------------
@pytest.fixture
def folder(synth_data, tmp_path):
    "A private copy of the CSVs of the synthetic set, with its image folders linked"
    d = tmp_path / "rsna"
    d.mkdir()
    for f in synth_data.glob("*.csv"): shutil.copy(f, d / f.name)
    for s in ("train_images", "test_images"): (d / s).symlink_to(synth_data / s)
    return d


def _edit(path, fn):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = fn(df)
    df.to_csv(path, index=False)


def test_loads_cleanly(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = load_rsna(folder)
    assert d.warnings == [] and len(d.missing_series) == 0
    assert d.train.shape == (16, 26) and d.train.study_id.dtype == np.int64
    assert len(d.sample_submission) == 3 * 25


def test_missing_file(folder):
    (folder / "train_series_descriptions.csv").unlink()
    with pytest.raises(DataError, match=r"train_series_descriptions.csv: file not found"):
        load_rsna(folder)
    # a test-only load does not need it
    assert load_rsna(folder, splits="test").test_series is not None


def test_missing_column(folder):
    _edit(folder / "train.csv", lambda df: df.drop(columns=["left_subarticular_stenosis_l3_l4"]))
    with pytest.raises(DataError, match=r"train.csv: missing column\(s\) left_subarticular_stenosis_l3_l4"):
        load_rsna(folder)


def test_extra_column_warns(folder):
    _edit(folder / "test_series_descriptions.csv", lambda df: df.assign(scanner="x"))
    with pytest.warns(DataWarning, match=r"test_series_descriptions.csv: ignoring unexpected column\(s\) scanner"):
        d = load_rsna(folder)
    assert list(d.test_series.columns) == ["study_id", "series_id", "series_description"]


def test_bad_grade_names_study_and_column(folder):
    sid = pd.read_csv(folder / "train.csv").study_id[3]
    def bad(df):
        df.loc[3, "right_neural_foraminal_narrowing_l4_l5"] = "mild"
        return df
    _edit(folder / "train.csv", bad)
    with pytest.raises(DataError, match=rf"study {sid} column right_neural_foraminal_narrowing_l4_l5 \('mild'\)"):
        load_rsna(folder)


def test_empty_labels_kept_missing(folder):
    sid = pd.read_csv(folder / "train.csv").study_id[0]
    def empty(df):
        df.loc[0, "spinal_canal_stenosis_l1_l2"] = ""
        return df
    _edit(folder / "train.csv", empty)
    d = load_rsna(folder)
    assert pd.isna(d.train.set_index("study_id").loc[sid, "spinal_canal_stenosis_l1_l2"])
    ll = long_labels(d.train)
    assert ((ll.study_id == sid) & (ll.column == "spinal_canal_stenosis_l1_l2")).sum() == 0


def test_duplicate_study(folder):
    _edit(folder / "train.csv", lambda df: pd.concat([df, df.iloc[[2]]]))
    sid = pd.read_csv(folder / "train.csv").study_id[2]
    with pytest.raises(DataError, match=rf"train.csv: duplicate study_id {sid}"):
        load_rsna(folder)


@pytest.mark.parametrize("fname,col,value", [("train.csv", "study_id", "12.5"),
                                              ("train_series_descriptions.csv", "series_id", "../../etc"),
                                              ("test_series_descriptions.csv", "study_id", "abc"),
                                              ("train_label_coordinates.csv", "instance_number", "-1")])
def test_non_integer_ids(folder, fname, col, value):
    def bad(df):
        df.loc[1, col] = value
        return df
    _edit(folder / fname, bad)
    with pytest.raises(DataError, match=rf"{fname}: {col} must be a non-negative integer; bad value\(s\) at row 3 \('{__import__('re').escape(value)}'\)"):
        load_rsna(folder)


def test_missing_series_folder_warns_and_goes_on(folder):
    ser = pd.read_csv(folder / "test_series_descriptions.csv")
    extra = pd.DataFrame({"study_id": [ser.study_id[0]], "series_id": [999], "series_description": ["Axial T2"]})
    pd.concat([ser, extra]).to_csv(folder / "test_series_descriptions.csv", index=False)
    with pytest.warns(DataWarning, match=rf"1 listed series have no folder on disk: {ser.study_id[0]}/999"):
        d = load_rsna(folder)
    assert d.missing_series[["study_id", "series_id", "split"]].values.tolist() == [[ser.study_id[0], 999, "test"]]
    assert len(d.test_series) == len(ser) + 1


def test_unknown_coordinate_level(folder):
    def bad(df):
        df.loc[0, "level"] = "L6/S1"
        return df
    _edit(folder / "train_label_coordinates.csv", bad)
    with pytest.raises(DataError, match=r"train_label_coordinates.csv: Unknown level 'L6/S1'"):
        load_rsna(folder)


def _bad_x(df):
    df.loc[3, "x"] = "12,5"
    return df

def _spinal_l4_l5_twice(df):
    i = df.index[(df.condition == "Spinal Canal Stenosis") & (df.level == "L4/L5")][0]
    return pd.concat([df, df.loc[[i]].assign(x="1.0")], ignore_index=True)

def _coord_row(folder, i):
    r = pd.read_csv(folder / "train_label_coordinates.csv").iloc[i]
    return f"study {r.study_id} {r.condition} {r.level}"


def test_non_numeric_coordinate(folder):
    _edit(folder / "train_label_coordinates.csv", _bad_x)
    with pytest.raises(DataError, match=rf"train_label_coordinates.csv: x must be a finite number; bad value\(s\) at row 5 \({_coord_row(folder, 3)}\): '12,5'"):
        load_rsna(folder)


def test_duplicate_coordinates(folder):
    "Two points for one study's canal at L4/L5 would leave the crops and levels stages to pick one: the rows are named"
    f = folder / "train_label_coordinates.csv"
    _edit(f, _spinal_l4_l5_twice)
    c = pd.read_csv(f)
    i = c.index[(c.condition == "Spinal Canal Stenosis") & (c.level == "L4/L5")][0]
    with pytest.raises(DataError, match=rf"{f}: 1 point\(s\) given more than once, at rows {i+2}, {len(c)+1} \({_coord_row(folder, i)}\); keep one row"):
        read_coords(f)
    with pytest.raises(DataError, match=rf"rows {i+2}, {len(c)+1} \({_coord_row(folder, i)}\)"):
        load_rsna(folder)


@pytest.mark.parametrize("edit,row", [(_bad_x, "row 5 "), (_spinal_l4_l5_twice, "given more than once, at rows ")])
def test_cli_check_bad_coordinates(folder, edit, row):
    "`lsdc check` on a bad coordinates file: one line naming the rows, exit status 1, no traceback"
    _edit(folder / "train_label_coordinates.csv", edit)
    r = subprocess.run([sys.executable, "-m", "lsdc.cli", "check", str(folder)], capture_output=True, text=True)
    out = (r.stdout + r.stderr).splitlines()
    assert r.returncode == 1 and len(out) == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert out[0].startswith("lsdc check: ") and "train_label_coordinates.csv" in out[0] and row in out[0], out


def test_missing_folder():
    with pytest.raises(DataError, match="data folder not found"):
        load_rsna("/nonexistent/rsna")


# ---- the synthetic data set ----------------------------------------------------------------------------------------
def test_synthetic_layout(synth_data):
    d = synth_data
    assert list(pd.read_csv(d / "train.csv").columns) == ["study_id", *LABEL_COLUMNS]
    for f, cols in KAGGLE_COLUMNS.items(): assert list(pd.read_csv(d / f).columns) == cols, f
    sub = pd.read_csv(d / "sample_submission.csv")
    test = pd.read_csv(d / "test_series_descriptions.csv")
    assert sub.row_id.tolist() == [r for s in test.study_id.unique() for r in study_row_ids(s)]
    data = load_rsna(d)
    for split, ser in (("train", data.train_series), ("test", data.test_series)):
        assert all(sorted(g) == sorted(SERIES_DESCRIPTIONS) for _, g in ser.groupby("study_id").series_description)
        for r in ser.itertuples():
            assert series_dir(d, split, r.study_id, r.series_id).is_dir()


def test_every_dicom_decodes(synth_data):
    files = sorted(synth_data.rglob("*.dcm"))
    assert len(files) > 16 * 3 * 10
    seen_rescale = False
    for f in files:
        ds = pydicom.dcmread(f)
        a = ds.pixel_array
        assert ds.Modality == "MR" and a.dtype == np.uint16 and a.shape == (128, 128)
        assert int(f.stem) == ds.InstanceNumber
        assert ds.SeriesInstanceUID and ds.StudyInstanceUID and ds.SOPInstanceUID
        assert len(ds.ImagePositionPatient) == 3 and len(ds.ImageOrientationPatient) == 6 and len(ds.PixelSpacing) == 2
        seen_rescale |= "RescaleSlope" in ds
    assert seen_rescale


def _spatial_order(folder):
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in folder.glob("*.dcm")]
    o = np.array(dss[0].ImageOrientationPatient, float)
    normal = np.cross(o[:3], o[3:])
    dss.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
    return [ds.InstanceNumber for ds in dss]


def test_instance_order_differs_from_space_in_some_series(synth_data):
    data = load_rsna(synth_data)
    orders = [_spatial_order(series_dir(synth_data, "train", r.study_id, r.series_id)) for r in data.train_series.itertuples()]
    in_order = [o == sorted(o) or o == sorted(o, reverse=True) for o in orders]
    assert any(in_order) and not all(in_order)


def test_coordinates_point_into_images(synth_data):
    data = load_rsna(synth_data)
    c = data.coords
    assert c.x.between(0, 128).all() and c.y.between(0, 128).all()
    for r in c.itertuples():
        assert (series_dir(synth_data, "train", r.study_id, r.series_id) / f"{r.instance_number}.dcm").exists()
    desc = c.merge(data.train_series, on=["study_id", "series_id"]).set_index("column").series_description
    assert set(desc[[col for col in desc.index if "subarticular" in col]]) == {"Axial T2"}
    # one coordinate per labelled (study, column)
    assert len(c) == data.train[list(LABEL_COLUMNS)].notna().to_numpy().sum()


def test_middle_slice_carries_the_grade(synth_data):
    "A severe canal stenosis darkens the canal at its level on the spatial middle T2 slice, and not on the edge slices"
    data = load_rsna(synth_data)
    coords = data.coords[data.coords.condition == "Spinal Canal Stenosis"]
    sev, norm, edge = [], [], []
    for r in coords.itertuples():
        grade = data.train.set_index("study_id").loc[r.study_id, r.column]
        if grade not in ("Severe", "Normal/Mild"): continue
        folder = series_dir(synth_data, "train", r.study_id, r.series_id)
        mid = pydicom.dcmread(folder / f"{r.instance_number}.dcm")
        def val(ds):
            a = ds.pixel_array.astype(float) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
            return a[int(r.y) - 1:int(r.y) + 2, int(r.x) - 1:int(r.x) + 2].mean() / np.percentile(a, 99)
        (sev if grade == "Severe" else norm).append(val(mid))
    assert len(sev) >= 2 and len(norm) >= 10
    assert max(sev) < min(norm)


def test_same_seed_same_bytes(tmp_path):
    def digest(d):
        h = hashlib.sha256()
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(d)).encode()); h.update(f.read_bytes())
        return h.hexdigest()
    a = make_synthetic(tmp_path / "a", 3, 1, seed=7, image_size=48, n_workers=1, phantom='middle')
    b = make_synthetic(tmp_path / "b", 3, 1, seed=7, image_size=48, n_workers=2, phantom='middle')
    c = make_synthetic(tmp_path / "c", 3, 1, seed=8, image_size=48, n_workers=1, phantom='middle')
    assert digest(a) == digest(b) != digest(c)


def test_grade_balance_and_missing(tmp_path):
    "The label generator follows the real balance; a few labels are missing, mostly upper subarticular"
    from lsdc.synth import missing_mask, sample_grades
    rng = np.random.default_rng(0)
    g = pd.DataFrame([sample_grades(rng) for _ in range(2000)])
    share = np.bincount(g.to_numpy().ravel(), minlength=3) / g.size
    assert np.allclose(share, [0.774, 0.163, 0.063], atol=0.02)
    m = pd.DataFrame([missing_mask(rng) for _ in range(2000)])
    assert 0.003 < m.to_numpy().mean() < 0.03
    assert m["left_subarticular_stenosis_l1_l2"].mean() > 5 * m["spinal_canal_stenosis_l4_l5"].mean()


def test_cli_synth_then_check(tmp_path):
    dest = tmp_path / "s"
    run = lambda *a: subprocess.run([sys.executable, "-m", "lsdc.cli", *a], capture_output=True, text=True)
    r = run("synth", str(dest), "--n-train", "4", "--n-test", "2", "--image-size", "64", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "wrote 4 train + 2 test studies" in r.stdout
    assert pd.read_csv(dest / "train.csv").shape == (4, 26)
    assert len(pd.read_csv(dest / "sample_submission.csv")) == 50
    r = run("check", str(dest))
    assert r.returncode == 0 and "RSNAData" in r.stdout, r.stdout + r.stderr
    r = run("synth", str(dest), "--n-train", "4")
    assert r.returncode == 1 and "already holds a data set" in r.stdout
    (dest / "train.csv").write_text("study_id\n1\n")
    r = run("check", str(dest))
    assert r.returncode == 1 and "train.csv: missing column(s) spinal_canal_stenosis_l1_l2" in r.stderr and not r.stdout


def test_check_reports_wrong_coordinates(tmp_path, capsys):
    # an anatomical synthetic set (its foramina marked on their own parasagittal slices, as in the real data), then the
    # same with one canal point moved far off its curve and one right foramen put on its left's slice
    from lsdc.data import check_cli
    d = make_synthetic(tmp_path / 'data', n_train=4, n_test=1, image_size=64, seed=0, n_workers=1, phantom='anatomical')
    assert check_cli(str(d), split='train') == 0
    out = capsys.readouterr().out                                      # the phantom's own points agree
    assert "coordinates: 0 spinal canal points" in out and "coordinates: 0 levels whose left and right foramina" in out, out
    co = pd.read_csv(d / 'train_label_coordinates.csv')
    sid = int(co.study_id.iloc[0])
    canal = co.index[(co.study_id == sid) & (co.condition == 'Spinal Canal Stenosis') & (co.level == 'L3/L4')][0]
    sp = co[(co.study_id == sid) & (co.condition == 'Spinal Canal Stenosis')].sort_values('level')
    co.loc[canal, 'x'] += 1.5 * np.median(np.hypot(np.diff(sp.x), np.diff(sp.y)))   # one and a half level spacings off
    left = co[(co.study_id == sid) & (co.condition == 'Left Neural Foraminal Narrowing') & (co.level == 'L4/L5')].iloc[0]
    right = (co.study_id == sid) & (co.condition == 'Right Neural Foraminal Narrowing') & (co.level == 'L4/L5')
    co.loc[right, ['series_id', 'instance_number']] = [left.series_id, left.instance_number]
    co.to_csv(d / 'train_label_coordinates.csv', index=False)
    assert check_cli(str(d), split='train') == 0
    out = capsys.readouterr().out
    assert f"coordinates: 1 spinal canal points far from where their study's other four put them: study {sid} L3/L4" in out, out
    assert f"coordinates: 1 levels whose left and right foramina are marked on one slice: study {sid} L4/L5" in out, out


def test_a_messy_synthetic_set_keeps_its_images_and_grades(tmp_path):
    # `Mess(displaced=...)` moves canal points in the coordinates table only: the same seed gives the same images and
    # grades, and `displaced_levels` finds the points moved furthest
    from lsdc.synth import Mess
    from lsdc.data import displaced_levels
    kw = dict(n_train=8, n_test=1, image_size=64, seed=3, n_workers=1, phantom='anatomical')
    clean, messy = make_synthetic(tmp_path/'clean', mess=None, **kw), make_synthetic(tmp_path/'messy', mess=Mess(displaced=0.5), **kw)
    for f in ('train.csv', 'train_series_descriptions.csv', 'test_labels.csv'):
        assert (clean/f).read_bytes() == (messy/f).read_bytes(), f
    one = next((clean/'train_images').rglob('*.dcm')).relative_to(clean)
    assert (clean/one).read_bytes() == (messy/one).read_bytes()
    a, b = read_coords(clean/'train_label_coordinates.csv'), read_coords(messy/'train_label_coordinates.csv')
    moved = a.study_id[(a[['x', 'y']].to_numpy() != b[['x', 'y']].to_numpy()).any(axis=1)]
    assert moved.nunique() == len(moved) == 4                                  # one point in each of half the studies
    found = displaced_levels(b, max_offset=0.3)
    assert len(displaced_levels(a, max_offset=0.3)) == 0 and set(found.study_id) <= set(moved) and len(found) >= 3, found
