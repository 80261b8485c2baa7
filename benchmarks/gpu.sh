#!/usr/bin/env bash
# GPU figures for lsdc.learners, in steps short enough for a 10-minute job each (run from the repository root):
#   benchmarks/gpu.sh loaders        the data paths alone (bench_loader.py), then training images/s of one column with each
#   benchmarks/gpu.sh compare        images/s of one column: fp32 / mixed precision x contiguous / channels-last
#   benchmarks/gpu.sh data           a synthetic set of RSNA size (2,000 training studies) written and converted
#   benchmarks/gpu.sh shard I/N      train shard I of N of the 25 columns (ResNet34, 256 px, epochs 4/5/10) into one folder
#   benchmarks/gpu.sh results        the merged results table of all shards
# ROOT (default runs/gpu) holds data, PNGs and models. Without internet pass PRETRAINED=--no-pretrained.
set -euo pipefail
R=${ROOT:-runs/gpu}
W=${WORKERS:-$(nproc)}
case ${1:-} in
  loaders) python benchmarks/bench_loader.py --device cuda --n-train 400 --root "$R/loaders"
           python benchmarks/bench_learners.py --device cuda --loader-compare --mixed-precision --n-train 400 --epochs 2 --bs 64 --lr-find-iters 50 --workers "$W" --root "$R/compare" ;;
  compare) python benchmarks/bench_learners.py --device cuda --compare --n-train 400 --epochs 2 --bs 64 --lr-find-iters 50 --workers "$W" --root "$R/compare" ;;
  data)    /usr/bin/time -f "synth: %e s" python -m lsdc.cli synth "$R/data" --n-train 2000 --n-test 10 --workers "$W"
           /usr/bin/time -f "convert: %e s" python -m lsdc.cli convert "$R/data" "$R/converted" --split train --workers "$W" --quiet ;;
  shard)   /usr/bin/time -f "shard $2: %e s" python -m lsdc.cli train "$R/converted" "$R/models" --data "$R/data" --shard "$2" ${PRETRAINED:-} ;;
  results) python -c "import pandas as pd; d = pd.read_csv('$R/models/results.csv'); print(d.to_string()); print('trained:', int((d.status == 'ok').sum()), 'of', len(d))" ;;
  *) sed -n 2,9p "$0"; exit 2 ;;
esac
