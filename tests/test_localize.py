"""The level localizer (`lsdc.localize`) on a tiny synthetic set: targets, out-of-fold points, the exported model,
the figures in mm and points.csv."""
import json, shutil, subprocess, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np, pandas as pd, pydicom, pytest
from fastcore.script import anno_parser
from lsdc.core import LEVELS
from lsdc.data import load_rsna, series_dir
from lsdc.dicom import convert_dataset
from lsdc.files import read_index, file_sha256
from lsdc.synth import make_synthetic
from lsdc.crops import POINT_COLUMNS
from lsdc.localize import (LocalizerSettings, LOCATE_SERIES, FINAL_FOLD, OOF_FILE, POINTS_FILE, RECORD_FILE, FIGURE_FILE, localizer_dir,
                           spinal_points, level_targets, train_localizer, locate_levels, write_points, slice_spacing,
                           point_errors, localize_cli)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    "24 training and 3 test studies at 128 px, their middle slices converted to 64 px PNGs"
    root = tmp_path_factory.mktemp("localize")
    data = make_synthetic(root/"data", n_train=24, n_test=3, image_size=128, seed=0, n_workers=1)
    for split in ("train", "test"):
        convert_dataset(data, root/"conv"/split, split=split, size=64, n_workers=1, progress=False)
    return SimpleNamespace(root=root, data=data, conv=root/"conv", rsna=load_rsna(data, check_images=False))


@pytest.fixture(scope="module")
def trained(synth):
    "The localizer trained on the synthetic set (2 folds and a final model, 64 px, 30 epochs), and its record"
    models = synth.root/"models"
    rec = train_localizer(synth.conv, synth.rsna.coords, models, data=synth.data, settings=LocalizerSettings(size=64, epochs=30, bs=4),
                          folds=2, seed=0, progress=False, device="cpu")
    return SimpleNamespace(models=models, rec=rec, folder=localizer_dir(models))


def _truth(synth) -> pd.DataFrame:
    "The annotated spinal canal points with their middle slice's size, indexed by (study_id, level)"
    idx = read_index(synth.conv)
    t2 = idx[idx.series_description == LOCATE_SERIES][["study_id", "series_id", "rows", "columns"]]
    return spinal_points(synth.rsna.coords).merge(t2, on=["study_id", "series_id"]).set_index(["study_id", "level"])


def test_targets_scale_to_png(synth):
    "A DICOM point (x, y) is (x, y) * 64 / the slice's size in the PNG, whatever that size; the slice's centre is the PNG's centre; studies are counted"
    idx, coords = read_index(synth.conv), synth.rsna.coords
    t = level_targets(idx, coords)
    sp = spinal_points(coords).set_index(["study_id", "level"])
    assert {128} < set(t["columns"])          # the phantom's mess wrote some series at another size than 128 px
    for _, r in pd.concat([t[t["columns"] == 128].head(1), t[t["columns"] != 128].head(1)]).iterrows():
        assert r["columns"] == r["rows"] and (r.width, r.height) == (64, 64)
        want = np.array([[sp.loc[(r.study_id, l), "x"], sp.loc[(r.study_id, l), "y"]] for l in LEVELS]) * 64 / r["columns"]
        np.testing.assert_allclose(r.points, want, rtol=1e-6)
    n_train = coords.study_id.nunique()
    assert len(t) + len(t.attrs["skipped"]) == n_train and len(t) >= n_train - 3
    size = idx.drop_duplicates(["study_id", "series_id"]).set_index(["study_id", "series_id"])[["columns", "rows"]]
    mid = coords.join(size, on=["study_id", "series_id"]).dropna(subset=["columns"])
    centre = level_targets(idx, mid.assign(x=mid["columns"] / 2, y=mid["rows"] / 2).drop(columns=["columns", "rows"]))
    np.testing.assert_allclose(np.stack(centre.points.tolist()), 32.)   # (columns/2, rows/2) of each slice, whatever its size


def test_out_of_fold(trained):
    "Every training study is located once, by the model of its fold, which did not train on it"
    rec, oof = trained.rec, pd.read_csv(trained.folder/OOF_FILE)
    folds = {f["fold"]: f for f in rec["fold_models"]}
    assert sorted(folds) == [0, 1] and len(oof) == 5 * rec["n_studies"]
    for study, g in oof.groupby("study_id"):
        assert g.fold.nunique() == 1 and sorted(g.level) == sorted(LEVELS)
        f = folds[int(g.fold.iloc[0])]
        assert study in f["valid_studies"] and study not in f["train_studies"]
    valid = [s for f in folds.values() for s in f["valid_studies"]]
    assert sorted(valid) == sorted(set(oof.study_id)) and len(valid) == len(set(valid))
    assert all(len(f["train_studies"]) == rec["n_studies"] - len(f["valid_studies"]) for f in folds.values())


def test_learns(trained, synth):
    "The out-of-fold median error is well below that of predicting every study's mean point"
    oof = pd.read_csv(trained.folder/OOF_FILE).set_index(["study_id", "level"])
    truth = _truth(synth).loc[oof.index]
    rel = np.stack([truth.x / truth["columns"], truth.y / truth["rows"]], -1)
    mean = pd.DataFrame(rel, index=truth.index).groupby(level="level").transform("mean").to_numpy()
    scale = np.stack([truth["columns"], truth["rows"]], -1)
    err = np.hypot(oof.x - truth.x, oof.y - truth.y).to_numpy()
    base = np.hypot(*((mean - rel) * scale).T)
    assert np.median(err) < 0.6 * np.median(base), (np.median(err), np.median(base))
    assert trained.rec["validation"]["median_px"] == pytest.approx(np.median(err), rel=1e-4)


def test_mm_figures_use_header_spacing(trained, synth):
    "Errors in mm: PixelSpacing from the middle slice's header, columns along x and rows along y"
    rows_mm, cols_mm = 0.5, 0.8
    e = point_errors(np.full((1, 5, 2), [13., 24.]), np.full((1, 5, 2), [10., 20.]), [[rows_mm, cols_mm]])
    np.testing.assert_allclose(e, np.hypot(3 * cols_mm, 4 * rows_mm))
    oof = pd.read_csv(trained.folder/OOF_FILE)
    truth = _truth(synth)
    errs = []
    for r in oof.itertuples():
        ds = pydicom.dcmread(series_dir(synth.data, "train", r.study_id, r.series_id)/f"{r.instance_number}.dcm")
        rs, cs = (float(v) for v in ds.PixelSpacing)
        assert (rs, cs) != (1., 1.)
        np.testing.assert_allclose(slice_spacing(synth.data, r.study_id, r.series_id, r.instance_number), [rs, cs])
        t = truth.loc[(r.study_id, r.level)]
        errs.append(np.hypot((r.x - t.x) * cs, (r.y - t.y) * rs))
    v = trained.rec["validation"]
    assert v["median_mm"] == pytest.approx(np.median(errs), rel=1e-4)
    assert v["p95_mm"] == pytest.approx(np.percentile(errs, 95), rel=1e-4)
    assert v["within_5mm"] == pytest.approx(np.mean(np.array(errs) <= 5), abs=1e-9)
    assert set(v["per_level"]) == set(LEVELS) and v["mean_point"]["median_mm"] > v["median_mm"]
    assert (trained.folder/FIGURE_FILE).stat().st_size > 0


def test_export_loads_in_fresh_process(trained, synth):
    "localizer.pkl loads with fastai's load_learner in a new process, locates points, and matches the record's SHA-256"
    pkl = trained.folder/"localizer.pkl"
    rec = json.loads((trained.folder/RECORD_FILE).read_text())
    assert rec["sha256"] == file_sha256(pkl) and rec["settings"]["size"] == 64 and rec["n_studies"] > 0
    img = read_index(synth.conv).image.iloc[1]
    code = ("import sys, pandas as pd; from fastai.learner import load_learner; l = load_learner(sys.argv[1]); "
            "p, _ = l.get_preds(dl=l.dls.test_dl(pd.DataFrame({'image': [sys.argv[2]]}))); "
            "print(type(l.loss_func).__name__, tuple(p.shape), bool(p.abs().max() <= 1))")
    out = subprocess.run([sys.executable, "-c", code, str(pkl), img], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-4:] == ["LevelLoss", "(1,", "10)", "True"]


def test_points_csv(trained, synth):
    "points.csv: located points of every study (out-of-fold for training, final model for test) and the annotated ones"
    loc = locate_levels(trained.models, synth.conv, synth.rsna)
    ann = spinal_points(synth.rsna.coords).assign(source="annotated", fold=pd.NA)
    fn = write_points(pd.concat([loc, ann], ignore_index=True), trained.folder)
    assert fn == trained.folder/POINTS_FILE
    p = pd.read_csv(fn)
    assert tuple(p.columns) == POINT_COLUMNS and set(p.source) == {"located", "annotated"}
    test_ids = set(synth.rsna.test_series.study_id)
    located = p[p.source == "located"]
    assert set(located[located.study_id.isin(test_ids)].fold) == {FINAL_FOLD}
    assert located[located.study_id.isin(test_ids)].study_id.nunique() == len(test_ids)
    oof = pd.read_csv(trained.folder/OOF_FILE).set_index(["study_id", "level"])
    mine = located[located.fold >= 0].set_index(["study_id", "level"]).loc[oof.index]
    np.testing.assert_allclose(mine[["x", "y"]], oof[["x", "y"]])
    idx = read_index(synth.conv)
    mid = idx[idx.series_description == LOCATE_SERIES].set_index("study_id").instance_number
    assert (located.instance_number.to_numpy() == mid.loc[located.study_id].to_numpy()).all()
    assert p[p.source == "annotated"].fold.isna().all() and (p[p.source == "annotated"].study_id.isin(test_ids)).sum() == 0


def test_missing_series_is_named(trained, synth, tmp_path):
    "A study whose Sagittal T2/STIR series did not convert gets no points, and a warning names it"
    conv = tmp_path/"conv"
    shutil.copytree(synth.conv, conv)
    ti = pd.read_csv(conv/"test"/"index.csv")
    gone = int(ti.study_id[ti.series_description == LOCATE_SERIES].iloc[0])
    ti[~((ti.study_id == gone) & (ti.series_description == LOCATE_SERIES))].to_csv(conv/"test"/"index.csv", index=False)
    with pytest.warns(UserWarning, match=f"no converted {LOCATE_SERIES} series.*{gone}"):
        loc = locate_levels(trained.models, conv, synth.data)
    assert gone not in set(loc.study_id) and loc.study_id.nunique() == len(set(read_index(conv).study_id)) - 1


@pytest.mark.parametrize('name', ['localizer.safetensors', 'localizer.pkl', 'oof_points.csv'])
def test_tampered_model_is_refused(trained, synth, tmp_path, name):
    "A localizer file that does not match its record is refused (the pickle where it would be loaded: with trust_pickles)"
    models = tmp_path/"models"
    shutil.copytree(trained.models/"localizer", models/"localizer")
    with open(models/"localizer"/name, "ab") as f: f.write(b"0")
    with pytest.raises(ValueError, match=f"{name}: SHA-256 .* does not match"):
        locate_levels(models, synth.conv, trust_pickles=name == 'localizer.pkl')


def test_cli(synth, tmp_path):
    "`lsdc localize CONVERTED MODELS --data DATA ...` trains and writes points.csv into MODELS/localizer/"
    f = localize_cli.__wrapped__
    args = [str(synth.conv), str(tmp_path/"m"), "--data", str(synth.data), "--size", "32", "--epochs", "1", "--folds", "3",
            "--no-pretrained", "--quiet"]
    kw = vars(anno_parser(f).parse_args(args))
    for k in ("pdb", "xtra"): kw.pop(k, None)
    assert kw["pretrained"] is False and kw["folds"] == 3
    assert f(**kw) == 0
    p = pd.read_csv(tmp_path/"m"/"localizer"/POINTS_FILE)
    assert set(p.source) == {"located", "annotated"} and set(p[p.fold >= 0].fold) == {0, 1, 2}
    assert f(**{**kw, "data": str(tmp_path/"nowhere")}) == 2
