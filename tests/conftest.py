"""Shared fixtures: a tiny synthetic RSNA data set made once per test session."""
import os, re, shutil
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

# pytest-xdist runs a worker process per core, and torch gives each of them (and each `lsdc` subprocess a test starts)
# a thread per core: on 2 cores, 4 busy threads that spin-wait on each other. A worker's share of the cores instead
# (set before torch is imported; inherited by subprocesses) took two test modules from 237 s to 140 s on 2 cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    "Path of a tiny synthetic RSNA data set (16 train + 3 test studies, 128 px, seed 0)"
    from lsdc.synth import make_synthetic
    return make_synthetic(tmp_path_factory.mktemp("rsna") / "data", n_train=16, n_test=3, image_size=128, seed=0, n_workers=1,
                          phantom='middle')


@pytest.fixture(scope="module", autouse=True)
def _module_scratch(tmp_path_factory):
    """Remove the scratch folders a test module's own fixtures made (trained models folders are hundreds of MB each)
    once the module is done: the session's disk use stays that of one module, not the sum of all of them. The
    session's `synth_data` and the folders of failed tests stay."""
    root = tmp_path_factory.getbasetemp()
    before = set(root.iterdir())
    yield
    for d in set(root.iterdir()) - before:
        if d.is_dir() and not d.name.startswith("rsna") and not any(d.name.startswith(f) for f in _failed_prefixes):
            shutil.rmtree(d, ignore_errors=True)


_failed_prefixes = set()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.failed: _failed_prefixes.add(re.sub(r"[\W]", "_", item.name)[:30])   # how pytest names a test's tmp_path
    return rep
