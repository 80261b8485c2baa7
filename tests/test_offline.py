"""Offline install (lsdc.offline): a wheel folder built for this interpreter with `have=KAGGLE_HAS` installs with
`pip install --no-index` into a fresh virtual environment that has, like a Kaggle GPU image, only the distributions
KAGGLE_HAS names and what they need (linked from this environment, not reinstalled). Building the folder needs PyPI,
which CI has: without it the test fails, saying so."""
import os, platform, subprocess, sys, time
from importlib import metadata
from pathlib import Path
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from lsdc.offline import KAGGLE_HAS, OfflineError, Target, needed, never_download, read_have, wheel_folder, wheel_info

PY = f'{sys.version_info.major}.{sys.version_info.minor}'


def test_needed_filters_requirements(tmp_path):
    "Names normalised, markers evaluated for the target, extras off unless asked for, a freeze's versions honoured"
    have = read_have(['opencv_python_headless', 'Scikit_Learn', 'torch'])
    reqs = ['opencv-python-headless>=4.8', 'scikit-learn>=1.3', 'torch>=2.4', 'pylibjpeg-rle>=2.0', 'pytest>=8.0; extra == "dev"',
            'pywin32; sys_platform == "win32"', 'tomli>=2; python_version < "3.11"', 'safetensors[numpy]>=0.4']
    assert [str(r) for r in needed(reqs, have, Target('3.11'))] == ['pylibjpeg-rle>=2.0', 'safetensors[numpy]>=0.4']
    assert [r.name for r in needed(reqs, have, Target('3.10'))] == ['pylibjpeg-rle', 'tomli', 'safetensors']
    assert [r.name for r in needed(reqs, have, Target('3.11'), extras=('dev',))] == ['pylibjpeg-rle', 'pytest', 'safetensors']
    (tmp_path/'freeze.txt').write_text('opencv_python_headless==4.5.5.64\nscikit-learn==1.6.1\ntorch==2.1.0+cu121\n')
    frozen = read_have(tmp_path/'freeze.txt')
    assert [r.name for r in needed(reqs[:2], frozen)] == ['opencv-python-headless']   # 4.5 does not meet >=4.8
    with pytest.raises(OfflineError, match='torch 2.1.0'): needed(['torch>=2.4'], frozen)
    # lsdc's own runtime requirements (of the installed lsdc): no dev extra, nothing that the Kaggle image has
    names = {canonicalize_name(r.name) for r in needed(metadata.requires('lsdc'), read_have(KAGGLE_HAS))}
    assert 'pydicom' in names and not names & {'nbdev', 'pytest', 'pydicom-data', 'torch', 'torchvision', 'fastai', 'numpy'}


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "A wheel folder for this interpreter and `have=KAGGLE_HAS`; fails (does not skip) when PyPI cannot be reached"
    if sys.platform != 'linux' or platform.machine() != 'x86_64': pytest.skip('the wheel folder is for Linux x86_64 (Kaggle)')
    t0 = time.perf_counter()
    try: out = wheel_folder(tmp_path_factory.mktemp('offline')/'lsdc-wheels', have=KAGGLE_HAS, python_version=PY)
    except OfflineError as e: pytest.fail(f'building the wheel folder needs PyPI (CI reaches it):\n{e}')
    print(f'wheel folder built in {time.perf_counter() - t0:.1f} s')
    return out


def test_folder_holds_no_torch(folder):
    "Never torch, torchvision or CUDA wheels, nor anything else the Kaggle image has; lsdc and what it lacks are there"
    names = {wheel_info(f).name for f in folder.glob('*.whl')}
    assert not [n for n in names if never_download(n)], names
    assert not names & set(read_have(KAGGLE_HAS)), names
    assert {'lsdc', 'pydicom', 'pylibjpeg-rle'} <= names, names
    listing = (folder/'requirements.txt').read_text().splitlines()
    assert sorted(l.split('==')[0] for l in listing if not l.startswith('#')) == sorted(names)


def _have_closure(names) -> dict:
    "`{name: Distribution}` of this environment: `names` and, transitively, what they need here"
    top, seen, todo = {canonicalize_name(n) for n in names}, {}, [(canonicalize_name(n), frozenset()) for n in names]
    while todo:
        n, extras = todo.pop()
        if n in seen and extras <= seen[n][1]: continue
        try: d = metadata.distribution(n)
        except metadata.PackageNotFoundError:
            if n in top: continue   # e.g. opencv-python: on Kaggle, but lsdc does not need it
            raise
        extras = extras | (seen[n][1] if n in seen else frozenset())
        seen[n] = (d, extras)
        for r in map(Requirement, d.requires or []):
            if r.marker and not any(r.marker.evaluate({'extra': e}) for e in (*extras, '')): continue
            todo.append((canonicalize_name(r.name), frozenset(r.extras)))
    return {n: d for n, (d, _) in seen.items()}


def _link_installed(dists:dict, dest:Path):
    "Symlink into `dest` the top-level packages, modules and .dist-info folders of `dists`: installed, for pip and Python"
    dest.mkdir()
    for n, d in dists.items():
        root = Path(d.locate_file(''))
        tops = {f.parts[0] for f in d.files or [] if f.parts[0] not in ('..', '__pycache__')}
        assert tops, f'{n}: installed without a RECORD, cannot be linked'
        for t in tops:
            if (root/t).exists() and not (dest/t).exists(): (dest/t).symlink_to(root/t)


def test_offline_install(folder, tmp_path):
    "`pip install --no-index --find-links FOLDER lsdc` in a fresh venv that has only KAGGLE_HAS (+ deps); lsdc then runs"
    t0 = time.perf_counter()
    venv, image = tmp_path/'venv', tmp_path/'kaggle-image'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', venv], check=True)
    py = venv/'bin'/'python'
    site = subprocess.run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, check=True).stdout.strip()
    have = _have_closure(KAGGLE_HAS)
    assert 'torch' in have and 'lsdc' not in have and 'pydicom' not in have
    _link_installed(have, image)
    (Path(site)/'kaggle-image.pth').write_text(f'{image}\n')
    # nothing from this machine's pip configuration (its indexes, find-links): only the folder
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PIP_', 'PYTHON'))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK='1')
    run = lambda *a: subprocess.run(list(map(str, a)), capture_output=True, text=True, cwd=tmp_path, env=env)
    p = run(sys.executable, '-m', 'pip', '--python', py, 'install', '--no-index', '--find-links', folder, 'lsdc')
    assert p.returncode == 0, f'offline install failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}'
    done = next(l for l in p.stdout.splitlines() if l.startswith('Successfully installed'))
    assert 'lsdc-' in done and 'torch' not in done and 'fastai' not in done, done   # the image's own were kept
    p = run(py, '-c', 'import lsdc, lsdc.learners, lsdc.inference, lsdc.dicom; print(lsdc.__file__)')
    assert p.returncode == 0, p.stderr[-3000:]
    assert Path(p.stdout.strip()).resolve().is_relative_to(venv.resolve()), p.stdout   # the installed lsdc, not the checkout
    p = run(venv/'bin'/'lsdc', '--help')
    assert p.returncode == 0 and 'convert' in p.stdout, p.stdout + p.stderr
    print(f'venv, offline install and imports in {time.perf_counter() - t0:.1f} s')
