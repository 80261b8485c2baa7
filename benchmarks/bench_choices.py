"""The demo's earlier single-run choices, re-decided by the study-level cross-validation.

    python benchmarks/bench_choices.py --seed S --root DIR [--choices balance,pretrain75,slice_jitter3]

One synthetic data set and one split at the demo's size (`lsdc demo`'s `CPU` settings: 128 training / 40 test studies,
the levels inputs, two folds). The baseline is the demo as it ships (`DIR/base`: a finished `lsdc demo --out DIR/base
--seed S` is reused); each choice changes one setting and runs the same pipeline on the same data (`DIR/<choice>`):
  - balance:       the 1/2/4-weighted loss instead of upsampling (`balance='weights'`);
  - pretrain75:    the crops body pretrained on 75 studies of the second synthetic set instead of 150;
  - slice_jitter3: each annotated point moved up to 3 mm up or down before its axial slice is chosen;
  - same:          nothing changed (the base run's body reused): the harness's own check, which should read 0.
Each is compared with the baseline over the same training studies' out-of-fold predictions (`lsdc compare`: the
paired difference of the calibrated CV and of each term, its 95 % bootstrap interval and a verdict), then both runs'
written test submissions are scored beside each other (40 studies: a check, not a decision).
"""
import argparse, json, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)

from lsdc.demo import CPU, demo
from lsdc.pipeline import compare_runs, format_comparison

CHOICES = dict(balance=dict(balance='weights'),
               pretrain75=dict(pretrain_crop_studies=75),
               slice_jitter3=dict(levels=CPU.method.levels._replace(slice_jitter_mm=3.)),
               same=dict())
SAME_BODY = {'balance', 'same'}   # the choices whose pretrained body is the base run's (reused, not trained again)

def run(folder:Path, seed:int, **changes) -> dict:
    "A finished run's summary, or the demo run into `folder` with `changes` (the base run's data set reused)"
    if (folder/'summary.json').exists(): return json.loads((folder/'summary.json').read_text())
    t = time.perf_counter()
    s = demo(folder, seed=seed, progress=False, **changes)
    print(f"{folder.name}: {time.perf_counter() - t:.0f} s", flush=True)
    return s

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seed', type=int, default=0, help='seed of the synthetic data set (the demo uses 0)')
    p.add_argument('--root', required=True, help='working folder; its finished runs are reused')
    p.add_argument('--choices', default='balance,pretrain75,slice_jitter3')
    a = p.parse_args()
    root = Path(a.root); root.mkdir(parents=True, exist_ok=True)
    base = run(root/'base', a.seed)
    for name in [c.strip() for c in a.choices.split(',')]:
        f = root/name
        f.mkdir(exist_ok=True)
        for sub in ('data', *(('pretrain',) if name in SAME_BODY else ())):
            if not (f/sub).exists(): (f/sub).symlink_to((root/'base'/sub).resolve(), target_is_directory=True)
        s = run(f, a.seed, **CHOICES[name])
        print(f"\n== {name} against the demo's setting (seed {a.seed})")
        print(format_comparison(compare_runs(f/'models', root/'base'/'models'), name, 'base'))
        print(f"test studies (40): {name} {s['score']['score']:.4f}, base {base['score']['score']:.4f}", flush=True)
