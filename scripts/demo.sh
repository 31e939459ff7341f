#!/usr/bin/env sh
# `make demo`: the CoPL pipeline on the embedded default (synthetic data, local Ray, CPU), sized to
# finish in a few minutes on 2 cores. Each step is a job from jobs/, run exactly as
# `ray job submit --working-dir . -- python jobs/<job>.py ...` would run it on a cluster.
set -eu
OUT="${1:-runs/demo}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$OUT"

echo "== 1. synthetic dataset: UF-P-4 analogue, 600 seen + 100 unseen users, AVG annotations"
"$PY" jobs/make_synthetic.py --config configs/make_synthetic/ufp4.yaml n_users=600 annotations=avg \
    seed=0 output_dir="$OUT/data"

echo "== 2. dataset statistics (divergence, connectivity, minority users)"
"$PY" jobs/dataset_stats.py dataset="$OUT/data" output_dir="$OUT/stats"

echo "== 3. user embeddings: signed GNN, Ray Data graph build, Ray Train with 2 workers"
"$PY" jobs/train_gnn.py --config configs/train_gnn/default.yaml dataset="$OUT/data" \
    output_dir="$OUT/gnn" epochs=10

echo "== 4. unseen users without retraining (Eq. 11) vs Naive Avg and User Opt"
"$PY" jobs/adapt_users.py --config configs/adapt_users/default.yaml dataset="$OUT/data" \
    gnn_dir="$OUT/gnn" output_dir="$OUT/adapt"

echo "== 5. personalized reward model: MoLE on a tiny Llama, FSDP2 over 2 Ray Train workers"
"$PY" jobs/train_reward.py --config configs/train_reward/tiny_llama_cpu.yaml dataset="$OUT/data" \
    gnn_dir="$OUT/gnn" output_dir="$OUT/reward" max_pairs=2000

echo "== 6. evaluation: seen and unseen accuracy, by kind and group; t-SNE and expert heatmap"
"$PY" jobs/evaluate.py --config configs/evaluate/default.yaml dataset="$OUT/data" \
    gnn_dir="$OUT/gnn" reward_dir="$OUT/reward" adapt_dir="$OUT/adapt" output_dir="$OUT/eval" \
    max_pairs=1000

echo "== done: outputs under $OUT (metrics.json and config.yaml in every step's folder)"
