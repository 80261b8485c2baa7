"""Every CLI error a user can cause ends in one line on stderr, `lsdc CMD: ...`, and a non-zero exit, never a traceback;
`LSDC_TRACEBACK=1` brings the traceback back. Quick cases only: damaged inputs, no training."""
import os, subprocess, sys

import pytest

from lsdc import cli
from lsdc.core import study_row_ids

INDEX = "study_id,series_id,series_description,png,n_slices,instance_number,rows,columns\n1,10,Sagittal T2/STIR,1/10.png,15,8,48,48\n"


def run_cli(*args, **env):
    "Run `lsdc ARGS` in a child process with extra environment variables; the finished `CompletedProcess`"
    return subprocess.run([sys.executable, "-m", "lsdc.cli", *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LSDC_TRACEBACK": "", **env})


def one_line(r, cmd) -> str:
    "The single stderr line of a failed `lsdc cmd` (asserting exit 1, nothing else printed, no traceback)"
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and len(lines) == 1 and not r.stdout and "Traceback" not in r.stderr, (r.returncode, r.stdout, r.stderr)
    assert lines[0].startswith(f"lsdc {cmd}: "), lines
    return lines[0]


@pytest.fixture
def converted(tmp_path):
    "A conversion folder whose index lists one series (its PNG is never read: the reports fail first)"
    d = tmp_path / "conv"
    d.mkdir()
    (d / "index.csv").write_text(INDEX)
    return d


def test_report_submission_without_row_id(converted, tmp_path):
    (tmp_path / "sub.csv").write_text("a,b\n1,2\n")
    line = one_line(run_cli("report", tmp_path / "sub.csv", converted, tmp_path / "out", "--quiet"), "report")
    assert "row_id" in line


def test_report_malformed_row_id(converted, tmp_path):
    (tmp_path / "sub.csv").write_text("row_id,normal_mild,moderate,severe\n1_spinal,0.5,0.3,0.2\n")
    line = one_line(run_cli("report", tmp_path / "sub.csv", converted, tmp_path / "out", "--quiet"), "report")
    assert "Malformed row_id '1_spinal'" in line


def test_predict_nonsense_levels_entry(tmp_path):
    "A manifest that is valid JSON but whose `levels` entry is a string, not a table"
    data, models = tmp_path / "data", tmp_path / "models"
    data.mkdir(); models.mkdir()
    (data / "test_series_descriptions.csv").write_text("study_id,series_id,series_description\n1,10,Sagittal T2/STIR\n")
    (data / "sample_submission.csv").write_text("row_id,normal_mild,moderate,severe\n" + "".join(f"{r},0.3,0.3,0.4\n" for r in study_row_ids(1)))
    (data / "test_images" / "1" / "10").mkdir(parents=True)
    (models / "manifest.json").write_text('{"levels": "nonsense"}')
    (models / "levels.json").write_text("{}")
    line = one_line(run_cli("predict", data, models, tmp_path / "sub.csv"), "predict")
    assert not (tmp_path / "sub.csv").exists()


def test_traceback_on_request(converted, tmp_path):
    "`LSDC_TRACEBACK=1`: the exception is raised as it was, with its traceback"
    (tmp_path / "sub.csv").write_text("a,b\n1,2\n")
    r = run_cli("report", tmp_path / "sub.csv", converted, tmp_path / "out", "--quiet", LSDC_TRACEBACK="1")
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == "AttributeError: 'DataFrame' object has no attribute 'row_id'"


def boom_key(): raise KeyError("levels")
def boom_interrupt(): raise KeyboardInterrupt


@pytest.mark.parametrize("fn,code,line", [("boom_key", 1, "lsdc boom: KeyError: 'levels'"),
                                          ("boom_interrupt", 130, "lsdc boom: interrupted")])
def test_main_one_line(monkeypatch, capsys, fn, code, line):
    "In-process: a KeyError is named by its type (its message is only the key); Ctrl-C exits 130"
    monkeypatch.setitem(cli.COMMANDS, "boom", (__name__, fn, "fails"))
    monkeypatch.delenv("LSDC_TRACEBACK", raising=False)
    assert cli.main(["boom"]) == code
    out = capsys.readouterr()
    assert out.err == line + "\n" and out.out == ""
    monkeypatch.setenv("LSDC_TRACEBACK", "1")
    with pytest.raises(KeyError if code == 1 else KeyboardInterrupt): cli.main(["boom"])
