"""Reports of models trained on level crops (`lsdc.report` with `crops` and `points`).

A hand-made study: a conversion folder (Sagittal T1 and T2/STIR middle slices, the T2 slice 256 x 128 DICOM pixels
saved as a 64 px square PNG), a crops folder (an annotated and a located RGB crop per column, each column's crops
different) and a points table (located and annotated disc levels at different places). The checks: each finding's
heatmap is computed on, and drawn over, the located crop of its own column; the points are drawn at their positions
scaled from DICOM pixels to the image; a finding or study without a crop says so and the rest is written."""
import base64, re, warnings
from pathlib import Path
import cv2, numpy as np, pandas as pd, pytest, torch
from PIL import Image

from lsdc.core import GRADE_KEYS, GRADES, LABEL_COLUMNS, LEVELS
from lsdc.report import (CROPS_DISCLAIMER, DISCLAIMER, ReportWarning, gradcam, overlay_heatmap, read_rgb, render_study_html,
                         render_study_markdown, report_cli, study_report, write_reports, _LEVEL_COLOURS)

A, B = 'spinal_canal_stenosis_l4_l5', 'left_neural_foraminal_narrowing_l5_s1'   # a severe and a moderate finding with crops
C = 'right_subarticular_stenosis_l3_l4'                                          # a moderate finding without a crop
ROWS, COLS, PX = 256, 128, 128             # the T2 slice in DICOM pixels, and the size the pages draw at
LOCATED = [(32., 40. * (k + 1)) for k in range(5)]     # (x, y) of L1/L2 .. L5/S1 in DICOM pixels
ANNOTATED = [(100., 40. * (k + 1)) for k in range(5)]


@pytest.fixture(scope='module')
def learn(tmp_path_factory):
    "An untrained resnet18 learner on a few 64 px RGB images, the grades as its classes"
    from fastai.vision.all import CategoryBlock, ImageDataLoaders, Resize, vision_learner, resnet18
    d, rng = tmp_path_factory.mktemp('learn'), np.random.default_rng(1)
    items = pd.DataFrame({'fname': [f'{i}.png' for i in range(6)], 'label': [GRADES[i % 3] for i in range(6)]})
    for f in items.fname: Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d/f)
    dls = ImageDataLoaders.from_df(items, d, valid_pct=1/3, seed=0, y_block=CategoryBlock(vocab=list(GRADES)), item_tfms=Resize(64),
                                   bs=2, num_workers=0)
    torch.manual_seed(0)
    return vision_learner(dls, resnet18, pretrained=False)


def _crop(fn, centre:int, sides:int, corner:int):
    "An RGB crop: centre channel `centre` and the other two `sides` (+ noise), a bright block in one corner"
    rng = np.random.default_rng(corner)
    a = np.dstack([np.full((64, 64), v, np.uint8) for v in (sides, centre, sides)])
    a = (a + rng.integers(0, 25, a.shape)).clip(0, 255).astype(np.uint8)
    y, x = divmod(corner, 2)
    a[8 + 32*y:24 + 32*y, 8 + 32*x:24 + 32*x, 1] = 255
    Path(fn).parent.mkdir(parents=True, exist_ok=True); Image.fromarray(a).save(fn)


def _preds(sid, findings):
    rows = [[f'{sid}_{c}', *({'Severe': [.1, .2, .7], 'Moderate': [.2, .6, .2]}.get(findings.get(c), [.8, .15, .05]))]
            for c in LABEL_COLUMNS]
    return pd.DataFrame(rows, columns=['row_id', *GRADE_KEYS])


@pytest.fixture
def study(tmp_path):
    "Folders and tables of studies 7 (crops of A and B, points) and 8 (no crops, no points)"
    conv, crops = tmp_path/'conv', tmp_path/'crops'
    idx = pd.DataFrame({'study_id': [7, 7, 8, 8], 'series_id': [71, 72, 81, 82], 'png': ['7/71.png', '7/72.png', '8/81.png', '8/82.png'],
                        'series_description': ['Sagittal T1', 'Sagittal T2/STIR'] * 2, 'n_slices': 15, 'instance_number': 8,
                        'rows': ROWS, 'columns': COLS})
    for p in idx.png:
        (conv/p).parent.mkdir(parents=True, exist_ok=True); Image.fromarray(np.full((64, 64), 90, np.uint8)).save(conv/p)
    idx.to_csv(conv/'index.csv', index=False)
    looks = {A: dict(centre=30, sides=220), B: dict(centre=210, sides=20)}   # centre channels dark (A) and bright (B)
    rows = []
    for k, (c, sr, desc) in enumerate(((A, 72, 'Sagittal T2/STIR'), (B, 71, 'Sagittal T1'))):
        for j, src in enumerate(('annotated', 'located')):
            png = f'7/{c}_{src}.png'
            _crop(crops/png, **(looks[c] if src == 'located' else dict(centre=128, sides=128)), corner=2*k + j)
            rows.append((7, c, src, png, sr, desc, 6 + k, 32., 32., 30.))
    pd.DataFrame(rows, columns=['study_id', 'column', 'source', 'png', 'series_id', 'series_description', 'instance_number',
                                'x', 'y', 'size_mm']).to_csv(crops/'index.csv', index=False)
    points = pd.DataFrame([(7, 72, 8, l, x, y, src, 0) for src, xy in (('located', LOCATED), ('annotated', ANNOTATED))
                           for l, (x, y) in zip(LEVELS, xy)],
                          columns=['study_id', 'series_id', 'instance_number', 'level', 'x', 'y', 'source', 'fold'])
    sub = pd.concat([_preds(7, {A: 'Severe', B: 'Moderate', C: 'Moderate'}), _preds(8, {A: 'Severe'})])
    return dict(conv=conv, crops=crops, points=points, sub=sub, out=tmp_path/'reports')


def _figures(html:str) -> dict:
    "`{alt text: RGB image}` of the images embedded in a page"
    return {alt: cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(b), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            for alt, b in re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html)}


def _close(a, b, tol=2) -> bool: return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= tol


def test_gradcam_on_the_crop_of_its_column(study, learn):
    paths = write_reports(study['sub'], study['conv'], study['out'], learners={A: learn, B: learn, C: learn},
                          crops=study['crops'], points=study['points'], px=PX)
    out = study['out']
    html, md = (out/'study_7.html').read_text(), (out/'study_7.md').read_text()
    figs = _figures(html)
    located = {c: read_rgb(study['crops']/f'7/{c}_located.png') for c in (A, B)}
    expected = {c: overlay_heatmap(located[c], gradcam(learn, located[c], g), PX) for c, g in ((A, 'Severe'), (B, 'Moderate'))}
    assert _close(figs[f'Grad-CAM {A}'], expected[A]) and _close(figs[f'Grad-CAM {B}'], expected[B])
    assert not _close(figs[f'Grad-CAM {A}'], expected[B], tol=20)                # not the other column's crop
    ann = read_rgb(study['crops']/f'7/{A}_annotated.png')
    assert not _close(figs[f'Grad-CAM {A}'], overlay_heatmap(ann, gradcam(learn, ann, 'Severe'), PX), tol=20)   # nor the annotated one
    # the centre channel is shown: A's is dark and B's bright, whatever the other two channels
    assert figs[f'Grad-CAM {A}'].mean() < 110 < 150 < figs[f'Grad-CAM {B}'].mean()
    assert 'on the level crop of Sagittal T2/STIR series 72, slice 6, L4/L5' in html
    assert 'on the level crop of Sagittal T1 series 71, slice 7, left L5/S1' in html
    # the Markdown links the same images, written beside it
    for c in (A, B):
        assert f'![Grad-CAM {c}](study_7_{c}.png)' in md
        assert _close(read_rgb(out/f'study_7_{c}.png'), figs[f'Grad-CAM {c}'], tol=0)
    assert out/f'study_7_{A}.png' in paths and paths[-1] == out/'index.html'
    assert CROPS_DISCLAIMER in html and CROPS_DISCLAIMER in md and DISCLAIMER not in html


def _t2(out, sid=7): return _figures((out/f'study_{sid}.html').read_text())['Sagittal T2/STIR middle slice']


def _at(img, xy): return img[round(xy[1] / ROWS * PX), round(xy[0] / COLS * PX)]   # DICOM pixels -> the drawn image


def test_points_drawn_at_their_scaled_positions(study):
    write_reports(study['sub'], study['conv'], study['out'], crops=study['crops'], points=study['points'], px=PX)
    img = _t2(study['out'])
    assert img.shape == (PX, PX, 3)
    for k, xy in enumerate(LOCATED): assert _close(_at(img, xy), np.array(_LEVEL_COLOURS[k]), tol=8), (LEVELS[k], _at(img, xy))
    for xy in ANNOTATED: assert _close(_at(img, xy), np.array([90] * 3), tol=8)          # the located ones win
    assert 'levels marked at the located points of the discs' in (study['out']/'study_7.html').read_text()
    assert 'Sagittal T2/STIR, middle slice of series 72: levels marked at the located points' in (study['out']/'study_7.md').read_text()
    # a study with annotated points only gets those
    write_reports(study['sub'], study['conv'], study['out'], points=study['points'].query("source == 'annotated'"), px=PX)
    img = _t2(study['out'])
    for k, xy in enumerate(ANNOTATED): assert _close(_at(img, xy), np.array(_LEVEL_COLOURS[k]), tol=8)
    assert _close(_at(img, LOCATED[0]), np.array([90] * 3), tol=8)


def test_missing_crops_are_said_and_the_rest_is_written(study, learn):
    (study['crops']/f'7/{B}_located.png').unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        write_reports(study['sub'], study['conv'], study['out'], learners={A: learn, B: learn, C: learn},
                      crops=study['crops'], px=PX)
    msgs = [str(w.message) for w in caught if issubclass(w.category, ReportWarning)]
    assert len(msgs) == 1 and 'study 7' in msgs[0] and f'{B}_located.png does not exist' in msgs[0]
    html, md = (study['out']/'study_7.html').read_text(), (study['out']/'study_7.md').read_text()
    assert list(_figures(html)) == ['Sagittal T2/STIR middle slice', 'Sagittal T1 middle slice', f'Grad-CAM {A}']
    assert f'level crops: no level crop for {C}' in html and 'no heatmap: no level crop for this study' in html
    assert f'Right Subarticular Stenosis L3/L4: not available (no level crop for this study)' in md
    assert f'{B}: level crop missing: image' in html
    h8 = (study['out']/'study_8.html').read_text()
    assert 'level crops: no level crops for this study' in h8 and list(_figures(h8)) == ['Sagittal T2/STIR middle slice', 'Sagittal T1 middle slice']
    assert sorted(p.name for p in study['out'].glob('*.png')) == [f'study_7_{A}.png']


def test_middle_slice_reports_write_no_figures(study, learn):
    paths = write_reports(study['sub'], study['conv'], study['out'], learners={A: learn}, px=PX)
    assert [p.name for p in paths] == ['study_7.html', 'study_7.md', 'study_8.html', 'study_8.md', 'index.md', 'index.html']
    html = (study['out']/'study_7.html').read_text()
    assert DISCLAIMER in html and 'level crop' not in html and not list(study['out'].glob('*.png'))
    assert _figures(html)[f'Grad-CAM {A}'].shape == (PX, PX, 3)


def test_cli_with_crops_and_points(study, capsys):
    study['sub'].to_csv(study['out'].parent/'sub.csv', index=False)
    study['points'].to_csv(study['out'].parent/'points.csv', index=False)
    args = dict(submission=str(study['out'].parent/'sub.csv'), converted=str(study['conv']), out=str(study['out']), px=PX, quiet=True)
    assert report_cli(**args, crops=str(study['crops']), points=str(study['out'].parent/'points.csv')) == 0
    assert _close(_at(_t2(study['out']), LOCATED[2]), np.array(_LEVEL_COLOURS[2]), tol=8)
    assert CROPS_DISCLAIMER in (study['out']/'index.md').read_text()
    assert report_cli(**args, crops=str(study['conv'])) == 2                  # a conversion folder is not a crops folder
    assert 'not a level-crop index' in capsys.readouterr().err


def test_outside_text_reaches_the_pages_as_text(study):
    "A path in a problem (from the conversion index) and a series description: escaped in HTML and Markdown, `|` too"
    bad = '<script>alert(1)</script> | x'
    idx = pd.read_csv(study['conv']/'index.csv')
    idx.loc[idx.series_id == 81, 'png'] = f'8/{bad}.png'
    idx.to_csv(study['conv']/'index.csv', index=False)
    with pytest.warns(ReportWarning, match='study 8'):
        write_reports(study['sub'], study['conv'], study['out'], px=PX)
    out, esc = study['out'], '&lt;script&gt;alert(1)&lt;/script&gt;'
    for f in ('study_8.md', 'study_8.html', 'index.md', 'index.html'):
        page = (out/f).read_text()
        assert '<script' not in page and f'{esc} | x.png does not exist' in page.replace('\\|', '|'), f
    assert f'{esc} \\| x.png' in (out/'study_8.md').read_text()
    line = [l for l in (out/'index.md').read_text().splitlines() if l.startswith('| [8]')]
    assert len(line) == 1 and len(re.findall(r'(?<!\\)\|', line[0])) == 4      # still three cells
    rep = study_report(7, study['sub'], {bad: study['conv']/'7/71.png'})          # a description as a heading of an image
    md, html = render_study_markdown(rep), render_study_html(rep, px=PX)
    assert '<script' not in md + html and f'- {esc} \\| x, middle slice' in md and f'<b>{esc} | x</b>, middle slice' in html


@pytest.mark.parametrize('where', ['absolute', 'up', 'symlink'])
def test_index_paths_outside_the_folder_are_not_embedded(study, tmp_path, where):
    "A foreign index.csv whose png leads outside its folder (absolute, `..`, a symlink out) embeds nothing from there"
    secret = tmp_path/'secret'/'private.png'; secret.parent.mkdir()
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(secret)              # a readable image the report must not show
    idx = pd.read_csv(study['conv']/'index.csv')
    if where == 'symlink': (study['conv']/'link').symlink_to(secret.parent)
    idx.loc[idx.series_id == 72, 'png'] = {'absolute': str(secret), 'up': '../secret/private.png', 'symlink': 'link/private.png'}[where]
    idx.to_csv(study['conv']/'index.csv', index=False)
    with pytest.warns(UserWarning, match='1 rows name an image outside the folder'):
        write_reports(study['sub'], study['conv'], study['out'], px=PX)
    html = (study['out']/'study_7.html').read_text()
    assert not [a for a, img in _figures(html).items() if (img == 7).all()], 'the outside image was embedded'
    assert 'Sagittal T2/STIR' in html and 'private.png' not in html
