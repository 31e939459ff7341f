#!/usr/bin/env sh
# `make demo`: the CoPL pipeline on the embedded default (synthetic data, local Ray, CPU).
# Each step is a job from jobs/, run exactly as `ray job submit` would run it.
set -eu
OUT="${1:-runs/demo}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$OUT"

echo "== 1. synthetic dataset (UF-P-4 analogue, 600 seen users, AVG annotations)"
"$PY" jobs/make_synthetic.py preset=ufp4 n_users=600 annotations=avg seed=0 output_dir="$OUT/data"

echo "== 2. dataset statistics"
"$PY" jobs/dataset_stats.py dataset="$OUT/data" output_dir="$OUT/stats"
