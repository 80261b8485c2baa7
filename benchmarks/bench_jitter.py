"""The level crops' training jitter: stage 1's measured errors against the uniform jitter, on one data set.

    python benchmarks/bench_jitter.py --seed S [--n-train 128] [--n-test 40] [--root DIR] [--quick]

Builds one anatomical synthetic set at the demo's size (`lsdc.demo.CPU`, the phantom's default mess), pretrains the
learners' body once and trains stage 1 once (the level localizer and the axial slice selector, on the study-level split
every run uses; `bench_share.prepare`). Then the levels method (the demo's learners and views) twice on the same data, folds,
seed, stage 1 and body (`lsdc.pipeline.train_pipeline`, then `predict_folds` on the test studies):
  - uniform: each annotated training crop's centre moved up to 2 mm along each of its axes (`LevelSettings.jitter_mm`),
    the setting until now;
  - errors: each annotated level point moved by the out-of-fold localizer's error at the same level of another training
    study, and its axial slice by the slice selector's error measured with it (`lsdc.levels.error_shifts`).
Printed: stage 1's measured errors, the CV's four terms and score per setting (calibrated, out of fold, with the 95 %
intervals of cv.json), the test studies' score, the paired comparison of errors against uniform over the same studies
(`lsdc.pipeline.compare_runs`), and last `errors vs uniform CV score ratio: <r>`. `--quick` only checks that the script
runs; its figures mean nothing. A --root that holds finished runs is resumed.
"""
import argparse, json, shutil, time
from bench_share import add_common_args, prepare, run_arm, print_cv_table
from lsdc.levels import format_errors
from lsdc.pipeline import compare_runs, format_comparison

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    a = p.parse_args()
    root, s, method, d, stage1, t0 = prepare(a, 'bench_jitter')
    res = {}
    for jitter, crops in (('uniform', 'train'), ('errors', 'train_errors')):
        m = method._replace(levels=method.levels._replace(jitter=jitter))
        res[jitter] = run_arm(jitter, d, root, m, s.compute, stage1, crops=crops)
        print(f"{jitter}: trained in {res[jitter]['seconds']:.0f} s{'' if res[jitter]['reused'] else ' (stage 1 NOT reused: trained again)'}", flush=True)
    errs = json.loads((res['errors']['models']/'levels.json').read_text()).get('errors') or {}
    print(f"\nstage 1's errors the 'errors' run moved its training points by: {format_errors(errs)}")
    print_cv_table(res, s.n_test)
    print("\n== errors against uniform, paired over the same studies\n"
          + format_comparison(compare_runs(res['errors']['models'], res['uniform']['models']), 'errors', 'uniform'))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; runs in {root}")
    score = lambda k: res[k]['cv']['scores']['calibrated']['score']['value']
    print(f"errors vs uniform CV score ratio: {score('errors') / score('uniform'):.3f}")
    if not a.root: shutil.rmtree(root, ignore_errors=True)
