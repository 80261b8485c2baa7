#!/usr/bin/env bash
# GPU figures for lsdc.learners, in steps short enough for a 10-minute job each (run from the repository root):
#   benchmarks/gpu.sh loaders        the data paths alone (bench_loader.py), then training images/s of one column with each
#   benchmarks/gpu.sh compare        images/s of one column: fp32 / mixed precision x contiguous / channels-last
#   benchmarks/gpu.sh data           a synthetic set of RSNA size (2,000 training studies) written and converted
#   benchmarks/gpu.sh shard I/N      train shard I of N of the 25 columns (ResNet34, 256 px, epochs 4/5/10) into one folder
#   benchmarks/gpu.sh results        the merged results table of all shards
#   benchmarks/gpu.sh levels [K]     the levels method end to end at full size on the data of 'data' (mid-sagittal PNGs at
#                                    96 px for the localizer, crops at 256 px, 25 columns x K folds, default 5; FOLDS=0 trains
#                                    fold 0 only), then the test studies predicted: the time of each stage (hours on one GPU:
#                                    for a session with the time, not a 10-minute job)
# ROOT (default runs/gpu) holds data, PNGs and models; N_TRAIN (default 2000) studies; SIZE, ARCH and EPOCHS (default 256,
# resnet34, 4,5,10) set the levels step's learners (small values check the script on a CPU). Without internet pass PRETRAINED=--no-pretrained.
set -euo pipefail
R=${ROOT:-runs/gpu}
W=${WORKERS:-$(nproc)}
case ${1:-} in
  loaders) python benchmarks/bench_loader.py --device cuda --n-train 400 --root "$R/loaders"
           python benchmarks/bench_learners.py --device cuda --loader-compare --mixed-precision --n-train 400 --epochs 2 --bs 64 --lr-find-iters 50 --workers "$W" --root "$R/compare" ;;
  compare) python benchmarks/bench_learners.py --device cuda --compare --n-train 400 --epochs 2 --bs 64 --lr-find-iters 50 --workers "$W" --root "$R/compare" ;;
  data)    /usr/bin/time -f "synth: %e s" python -m lsdc.cli synth "$R/data" --n-train ${N_TRAIN:-2000} --n-test 10 --workers "$W"
           /usr/bin/time -f "convert: %e s" python -m lsdc.cli convert "$R/data" "$R/converted" --split train --workers "$W" --quiet ;;
  shard)   /usr/bin/time -f "shard $2: %e s" python -m lsdc.cli train "$R/converted" "$R/models" --data "$R/data" --shard "$2" ${PRETRAINED:-} ;;
  levels)  K=${2:-5}; TF=${FOLDS:+--train-folds $FOLDS}
           /usr/bin/time -f "convert (96 px, localizer): %e s" python -m lsdc.cli convert "$R/data" "$R/conv96" --split train --size 96 --workers "$W" --quiet
           /usr/bin/time -f "levels method, $K folds (localizer, slice selector, crops, 25 columns per fold, OOF, calibration, CV): %e s" \
             python -m lsdc.cli train "$R/conv96" "$R/levels" --data "$R/data" --folds "$K" $TF --jobs "${JOBS:-1}" ${PRETRAINED:-} \
               --size "${SIZE:-256}" --arch "${ARCH:-resnet34}" --epochs "${EPOCHS:-4,5,10}"
           /usr/bin/time -f "predict the test studies (convert, locate, crops, the mean of the folds): %e s" \
             python -m lsdc.cli predict "$R/data" "$R/levels" "$R/levels-submission.csv" --converted "$R/conv96-test" --workers "$W"
           cat "$R/levels/cv.md" ;;
  results) python -c "import pandas as pd; d = pd.read_csv('$R/models/results.csv'); print(d.to_string()); print('trained:', int((d.status == 'ok').sum()), 'of', len(d))" ;;
  *) sed -n 2,12p "$0"; exit 2 ;;
esac
