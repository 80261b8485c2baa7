"""Shared fixtures: a tiny synthetic RSNA data set made once per test session."""
import os
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    "Path of a tiny synthetic RSNA data set (16 train + 3 test studies, 128 px, seed 0)"
    from lsdc.synth import make_synthetic
    return make_synthetic(tmp_path_factory.mktemp("rsna") / "data", n_train=16, n_test=3, image_size=128, seed=0, n_workers=1,
                          phantom='middle')
