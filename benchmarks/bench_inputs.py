"""The two inputs side by side (issue 10): middle slices (seed 001) against level crops, on one anatomical synthetic set.

    python benchmarks/bench_inputs.py --seed S [--root DIR] [--n-train 128] [--n-test 40] [--image-size 128]

One synthetic data set with the anatomical phantom (`lsdc synth`'s default: the foramina on the parasagittal T1
slices, the subarticular recesses on the axial T2 slices through each disc, the canal on the mid-sagittal T2 slices)
at the demo's size, then the demo's pipeline (`lsdc.demo.run_pipeline` with the `CPU` settings: the same learners,
schedule and calibration, each input's body pretrained on its own images of a second synthetic set) twice, once per
input:
  - middle: each column's learner on the middle slice of its series (seed 001);
  - levels: the level localiser and the axial slice selector, then each column's learner on its 2.5D crop around its
    level (`--axial nearest`: the axial slice nearest the located level instead of the selector's).
Both are scored on the same test studies with the competition metric. It prints the four-term table of each side by
side, the prior-only baseline, the wall time of each run (with its body's pretraining), the localiser's and the slice
selector's out-of-fold figures, and last the line
`levels vs middle score ratio: <r>` (lower is better).
"""
import argparse, json, shutil, sys, tempfile, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)

from lsdc.metrics import SCORE_TERMS
from lsdc.synth import make_synthetic
from lsdc.demo import CPU, run_pipeline, demo_body
from lsdc.axial import axial_summary


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seed', type=int, default=0, help='seed of the synthetic set (the learners use their own fixed seed)')
    p.add_argument('--n-train', type=int, default=CPU.n_train)
    p.add_argument('--n-test', type=int, default=CPU.n_test)
    p.add_argument('--image-size', type=int, default=CPU.image_size)
    p.add_argument('--workers', type=int, default=None, help='workers of synthesis, conversion and crops')
    p.add_argument('--axial', default='learned', choices=('learned', 'nearest'), help="the levels method's axial slices: the selector's or the nearest")
    p.add_argument('--root', default=None, help='output folder (default: a temporary folder, removed at the end)')
    args = p.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix='bench_inputs_'))
    s = CPU.but(n_train=args.n_train, n_test=args.n_test, image_size=args.image_size, phantom='anatomical')
    s = s.but(levels=s.levels._replace(axial=args.axial))
    print(f"lsdc bench_inputs: seed {args.seed}, {s.n_train} training and {s.n_test} test studies, anatomical phantom, "
          f"{s.image_size} px; learners: {s.train}", flush=True)
    data = root/'data'
    if not (data/'test_labels.csv').exists():
        make_synthetic(data, n_train=s.n_train, n_test=s.n_test, seed=args.seed, image_size=s.image_size, n_workers=args.workers,
                       phantom='anatomical')
    res = {}
    for inputs in ('middle', 'levels'):
        train, t = dict(s.train), time.perf_counter()
        if s.pretrain_studies:   # as `lsdc demo` does: a body pretrained on another synthetic set, on this input's images
            train['weights'] = demo_body(root/inputs, s.but(inputs=inputs), seed=args.seed, n_workers=args.workers, progress=False)
        res[inputs] = run_pipeline(data, root/inputs, test_labels=data/'test_labels.csv', n_workers=args.workers,
                                   max_reports=0, progress=False, inputs=inputs, levels=s.levels, **train)
        res[inputs]['wall'] = time.perf_counter() - t
        print(f"{inputs}: {res[inputs]['wall']:.0f} s, score {res[inputs]['score']['score']:.4f}", flush=True)
    base = res['middle']['baseline']
    print(f"\n{'term':<20}{'middle':>10}{'levels':>10}{'levels/middle':>15}{'prior only':>12}")
    for t in (*SCORE_TERMS, 'score'):
        m, l = res['middle']['score'][t], res['levels']['score'][t]
        print(f"{t:<20}{m:>10.4f}{l:>10.4f}{l / m:>15.3f}{base[t]:>12.4f}")
    print(f"(calibrated submissions; raw: middle {res['middle']['score_raw']['score']:.4f}, levels {res['levels']['score_raw']['score']:.4f})")
    m = root/'levels'/'models'
    v = json.loads((m/'localizer'/'localizer.json').read_text())['validation']
    print(f"localiser, out of fold: median {v['median_mm']:.2f} mm, p95 {v['p95_mm']:.2f} mm, {v['within_5mm']:.1%} within 5 mm")
    if args.axial == 'learned': print(f"axial slice selector: {axial_summary(json.loads((m/'axial'/'axial.json').read_text()))}")
    if not args.root: shutil.rmtree(root, ignore_errors=True)
    print(f"levels vs middle score ratio: {res['levels']['score']['score'] / res['middle']['score']['score']:.3f}")
