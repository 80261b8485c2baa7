"""The documentation site's first step on every chapter: nbdev's own pre-processing (`nbdev-proc-nbs`, what
`nbdev-preview` and `nbdev-docs` run before Quarto renders the pages, and what the publishing workflow runs). It
executes each chapter's exported cells, its hidden set-up cells and every cell holding an import, so an example cell
that imports something would run without the cells before it; the chapters keep their imports in their set-up
cells."""
import shutil, subprocess, sys
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
