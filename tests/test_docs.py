"""The documentation site's first step on every chapter: nbdev's own pre-processing (`nbdev-proc-nbs`, what
`nbdev-preview` and `nbdev-docs` run before Quarto renders the pages, and what the publishing workflow runs). It
executes each chapter's exported cells, its hidden set-up cells and every cell holding an import, so an example cell
that imports something would run without the cells before it; the chapters keep their imports in their set-up
cells. Also lsdc's `nbdev_test`, which runs the chapters as tests."""
import json, os, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_chapter_goes_through_nbdevs_docs_processing(tmp_path):
    # on a copy of the notebooks and settings, so that the run writes nothing into the checkout
    shutil.copy(ROOT/'pyproject.toml', tmp_path/'pyproject.toml')
    shutil.copytree(ROOT/'nbs', tmp_path/'nbs')
    nbdev = Path(sys.executable).parent/'nbdev-proc-nbs'
    r = subprocess.run([str(nbdev) if nbdev.exists() else 'nbdev-proc-nbs'], cwd=tmp_path, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    chapters = sorted(p.name for p in (ROOT/'nbs').glob('*.ipynb'))
    done = sorted(p.name for p in (tmp_path/'_proc').glob('*.ipynb'))
    assert done == chapters, f"not processed: {sorted(set(chapters) - set(done))}"
    assert (tmp_path/'_proc'/'_quarto.yml').exists() and 'site-url' in (tmp_path/'_proc'/'nbdev.yml').read_text()


def test_nbdev_test_gives_each_notebook_its_share_of_the_cores(tmp_path):
    # lsdc's `nbdev_test` sets OMP_NUM_THREADS before nbdev starts a process per notebook (torch's default, a thread per
    # core in every one of them, oversubscribes the machine); a value the caller set is kept
    shutil.copy(ROOT/'pyproject.toml', tmp_path/'pyproject.toml')
    (tmp_path/'nbs').mkdir()
    cell = "import os\nassert os.environ.get('OMP_NUM_THREADS') == os.environ['EXPECT'], os.environ.get('OMP_NUM_THREADS')"
    nb = dict(cells=[dict(cell_type='code', execution_count=None, id='c0', metadata={}, outputs=[], source=cell)],
              metadata=dict(kernelspec=dict(display_name='python3', language='python', name='python3')), nbformat=4, nbformat_minor=5)
    for i in (0, 1): (tmp_path/'nbs'/f'a{i}.ipynb').write_text(json.dumps(nb))
    exe = Path(sys.executable).parent/'nbdev_test'
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    for extra, expect in (({}, str(max(1, (os.cpu_count() or 1) // 2))), ({'OMP_NUM_THREADS': '3'}, '3')):
        r = subprocess.run([str(exe) if exe.exists() else 'nbdev_test', '--path', 'nbs', '--n-workers', '2'], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300, env={**env, **extra, 'EXPECT': expect})
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([str(exe) if exe.exists() else 'nbdev_test', '--path', 'nbs', '--n-workers', '2'], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**env, 'EXPECT': 'no such thread count'})
    assert r.returncode != 0 and 'a0.ipynb' in r.stdout + r.stderr   # the check can fail
