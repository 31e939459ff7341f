#!/usr/bin/env sh
# `make demo`: the whole system on the embedded default (synthetic data, local Ray, CPU, the bundled
# MiniLM), sized for a 2-core machine. The pipeline job runs every stage exactly as
# `ray job submit --working-dir . -- python jobs/pipeline.py ...` would on a cluster, prints each
# stage's time and the report (seen/unseen accuracy: CoPL against Uniform and the no-graph
# references), and resumes where it stopped if interrupted. Then the Serve app scores one response
# for two users of different groups over HTTP and stops.
set -eu
OUT="${1:-runs/demo}"
PY="${PY:-.venv/bin/python}"
START=$(date +%s)
"$PY" jobs/pipeline.py --config configs/pipeline/demo.yaml output_dir="$OUT"
"$PY" scripts/demo_serve.py "$OUT"
echo "== demo done in $(( $(date +%s) - START )) s: report $OUT/report.md, plots $OUT/*.png"
