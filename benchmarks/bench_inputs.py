"""The two inputs side by side: middle slices (the middle-slice method) against level crops, on one anatomical synthetic set, decided by
the study-level cross-validation.

    python benchmarks/bench_inputs.py --seed S [--root DIR] [--inputs levels,middle] [--n-train 128] [--n-test 40]

One synthetic data set with the anatomical phantom at the demo's size, then the demo's pipeline
(`lsdc.pipeline.run_pipeline` with the `CPU` settings of `lsdc.demo`: the same folds, learners, schedule and
calibration, each input's body pretrained on its own images of a second synthetic set), once per input:
  - middle: each column's learner on the middle slice of its series (the middle-slice method);
  - levels: the level localizer and the axial slice selector, then each column's learner on its 2.5D crop around its
    level (`--axial nearest`: the axial slice nearest the located level instead of the selector's).
Each run's out-of-fold CV is printed with its 95 % intervals, then the paired comparison of the two CVs over the same
studies (`lsdc compare`), and last the test studies' scores of both written submissions beside the best constant.
A run folder that holds a finished run (`summary.json`) is reused: `lsdc demo --out ROOT/levels --seed S` followed by
`ln -s levels/data ROOT/data` makes the levels side of this benchmark.
"""
import argparse, json, shutil, sys, tempfile, time, warnings
from pathlib import Path
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)

from lsdc.metrics import SCORE_TERMS
from lsdc.synth import make_synthetic
from lsdc.demo import CPU, pretrain_synthetic_body
from lsdc.pipeline import run_pipeline, compare_runs, format_comparison, format_cv
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
    s = CPU.changed(n_train=args.n_train, n_test=args.n_test, image_size=args.image_size, phantom='anatomical', n_workers=args.workers)
    s = s.changed(levels=s.method.levels._replace(axial=args.axial))
    print(f"lsdc bench_inputs: seed {args.seed}, {s.n_train} training and {s.n_test} test studies, anatomical phantom, "
          f"{s.image_size} px, {s.method.folds} folds; learners: {s.method.learner}", flush=True)
    data = root/'data'
    if not (data/'test_labels.csv').exists():
        make_synthetic(data, n_train=s.n_train, n_test=s.n_test, seed=args.seed, image_size=s.image_size, n_workers=args.workers,
                       phantom='anatomical')
    res = {}
    for inputs in ('middle', 'levels'):
        if (root/inputs/'summary.json').is_file():
            res[inputs] = json.loads((root/inputs/'summary.json').read_text()); print(f"{inputs}: reused {root/inputs}"); continue
        method, t = s.method._replace(inputs=inputs), time.perf_counter()
        if s.pretrain_studies:   # as `lsdc demo` does: a body pretrained on another synthetic set, on this input's images
            method = method._replace(learner=method.learner._replace(
                weights=pretrain_synthetic_body(root/inputs, s.changed(inputs=inputs), seed=args.seed, progress=False)))
        res[inputs] = run_pipeline(data, root/inputs, method, s.compute, test_labels=data/'test_labels.csv', max_reports=0, progress=False)
        print(f"{inputs}: {time.perf_counter() - t:.0f} s", flush=True)
    for inputs in ('middle', 'levels'): print(f"\n{inputs}:\n{format_cv(res[inputs]['cv'])}")
    print('\n' + format_comparison(compare_runs(root/'levels'/'models', root/'middle'/'models'), 'levels', 'middle'))
    base = res['middle']['best_constant']
    print(f"\nthe test studies (calibrated submissions, as written):\n{'term':<20}{'middle':>10}{'levels':>10}{'levels/middle':>15}{'best constant':>15}")
    for t in (*SCORE_TERMS, 'score'):
        m, l = res['middle']['score'][t], res['levels']['score'][t]
        print(f"{t:<20}{m:>10.4f}{l:>10.4f}{l / m:>15.3f}{base[t]:>15.4f}")
    m = root/'levels'/'models'
    v = json.loads((m/'localizer'/'localizer.json').read_text())['validation']
    print(f"localizer, out of fold: median {v['median_mm']:.2f} mm, p95 {v['p95_mm']:.2f} mm, {v['within_5mm']:.1%} within 5 mm")
    if args.axial == 'learned': print(f"axial slice selector: {axial_summary(json.loads((m/'axial'/'axial.json').read_text()))}")
    if not args.root: shutil.rmtree(root, ignore_errors=True)
