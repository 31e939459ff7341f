"""Characterize a preference dataset ("Personalization meets reality", Sec. 4.2) and its graph.

    python jobs/dataset_stats.py dataset=D output_dir=O [split=train]
    python jobs/dataset_stats.py --config configs/dataset_stats.yaml dataset=D output_dir=O

Steps: validate the dataset; read one annotation split; annotations per user; graph connectivity and 2/4-hop positive
reachability (`SignedGraph`); preference divergence rate and high-divergence share; per-user
majority-vote accuracy and minority users; room for personalization. Definitions are in
`copl_ray.eval.dataset_stats`. Writes ``metrics.json``, ``per_user.parquet`` (user_id,
n_annotations, mv_acc, mv_acc_loo, minority) and ``config.yaml`` to ``output_dir``, and prints
the metrics as a table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from copl_ray.config import parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.dataset import SEEN_SPLITS, exit_on_dataset_error, read_table, validate_dataset, write_table  # noqa: E402
from copl_ray.eval.dataset_stats import (  # noqa: E402
    DatasetStatsConfig, annotation_counts, divergence_stats, format_table, graph_stats, load_triples,
)


def main(argv=None) -> dict:
    cfg = parse_job_args(DatasetStatsConfig, argv)
    t0 = time.perf_counter()
    with exit_on_dataset_error():  # a broken dataset named by file, row and field, not a lookup error
        validate_dataset(cfg.dataset)
    triples, user_map = load_triples(cfg.dataset, cfg.split)
    t_load = time.perf_counter() - t0
    # The split's own users: seen users for train/test, unseen users for fewshot/test_unseen.
    split_col = read_table(cfg.dataset, "users").column("split").to_numpy(zero_copy_only=False)
    users = np.flatnonzero(split_col == ("seen" if cfg.split in SEEN_SPLITS else "unseen"))

    metrics: dict = {"split": cfg.split}
    metrics.update(annotation_counts(triples, users))
    t1 = time.perf_counter()
    metrics.update(graph_stats(triples, cfg.reach_sources, cfg.seed))
    t_graph = time.perf_counter() - t1
    t1 = time.perf_counter()
    div, per_user = divergence_stats(triples, cfg.high_divergence)
    metrics.update(div)
    metrics.update({"seconds_load": round(t_load, 3), "seconds_graph": round(t_graph, 3),
                    "seconds_divergence": round(time.perf_counter() - t1, 3),
                    "seconds_total": round(time.perf_counter() - t0, 3)})

    counts = np.bincount(triples.user, minlength=triples.n_users)
    mv = per_user["mv_acc"]
    write_table(pa.table({
        "user_id": user_map.ids.take(pa.array(users)),
        "n_annotations": pa.array(counts[users]),
        "mv_acc": pa.array(mv[users], from_pandas=True),  # NaN -> null: no pair shared with another user
        "mv_acc_loo": pa.array(per_user["mv_acc_loo"][users], from_pandas=True),
        "minority": pa.array(mv[users] < 0.5),
    }), Path(cfg.output_dir) / "per_user.parquet")
    write_resolved_config(cfg, cfg.output_dir)
    write_metrics(metrics, cfg.output_dir)
    print(f"dataset statistics of {cfg.dataset} (split {cfg.split})")
    print(format_table(metrics))
    return metrics


if __name__ == "__main__":
    main()
