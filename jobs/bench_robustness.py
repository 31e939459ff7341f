"""Do the job defaults learn on data they were not tuned on? A varied suite, run as a user runs it.

    python jobs/bench_robustness.py output_dir=O                      # the default suite, seed 0
    python jobs/bench_robustness.py output_dir=O 'seeds=[0,1,2]' n_users=4000

For every case of the suite (`copl_ray.data.latent_suite`: 2-6 groups, imbalance up to 1:9,
correlated attributes, label noise 0-10%, dense and sparse 2..12 annotations, opaque ids) and seed:

1. write the dataset;
2. ``jobs/train_gnn.py dataset=D output_dir=G`` with its built-in defaults (model selection inside);
3. ``jobs/adapt_users.py dataset=D gnn_dir=G output_dir=A`` with its defaults (CoPL's Eq. 11 beside
   Naive Avg and User Opt, on the unseen users' test pairs);
4. the references on the same train / validation split (`copl_ray.eval.references`): one shared
   preference, free embeddings without a graph (dim and L2 tuned on validation), groups inferred
   from agreement by spectral clustering (no GNN), and a learner given the true groups.

The "+5 over shared" bar cannot be met where no learner can: a case's headroom is what the
true-groups learner gains over shared, and groups are recoverable from the annotations only where
the clustering reference (or the GNN) gets near it. The criteria say which cases those are.

Prints one row per case (seen-user test accuracy; unseen accuracy) and the issue-14 criteria;
writes ``metrics.json`` with every figure and each job's chosen settings.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from pydantic import Field  # noqa: E402

from copl_ray.config import JobConfig, parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.latent_suite import LatentCase, generate_latent_dataset  # noqa: E402
from copl_ray.eval.references import fit_references_for  # noqa: E402
from copl_ray.runtime import init_ray, load_job  # noqa: E402

DEFAULT_SUITE: list[dict] = [
    dict(name="g2_even_dense", n_groups=2, label_noise=0.0),
    dict(name="g2_1to9_sparse", n_groups=2, group_ratios=[1, 9], label_noise=0.10, annotations="sparse"),
    dict(name="g3_125_corr_dense", n_groups=3, group_ratios=[1, 2, 5], attribute_correlation=0.3),
    dict(name="g3_125_corr_sparse", n_groups=3, group_ratios=[1, 2, 5], attribute_correlation=0.3,
         annotations="sparse"),
    dict(name="g4_corr06_dense", n_groups=4, attribute_correlation=0.6),
    dict(name="g5_imb_6attr_sparse", n_groups=5, group_ratios=[1, 1, 2, 3, 4], n_attributes=6,
         attribute_correlation=0.5, annotations="sparse"),
    dict(name="g6_8attr_noisy_dense", n_groups=6, n_attributes=8, attribute_correlation=0.3, label_noise=0.10),
    dict(name="g6_8attr_sparse", n_groups=6, n_attributes=8, label_noise=0.02, annotations="sparse"),
]


class BenchRobustnessConfig(JobConfig):
    """jobs/bench_robustness.py: job defaults against references on a varied latent-factor suite."""

    output_dir: str = "runs/bench_robustness"
    cases: list[dict] = Field(default_factory=lambda: [dict(c) for c in DEFAULT_SUITE],
                              description="LatentCase fields per case (n_users and seed come from below)")
    seeds: list[int] = Field(default_factory=lambda: [0])
    n_users: int = Field(2000, ge=10)
    adapt: bool = Field(True, description="also run adapt_users (defaults) on each GNN")
    train_overrides: list[str] = Field(default_factory=list, description="extra key=value for train_gnn (none = defaults)")


def run_case(case: LatentCase, root: Path, cfg: BenchRobustnessConfig) -> dict:
    data, gnn, adapt = root / "data", root / "gnn", root / "adapt"
    info = generate_latent_dataset(case, data)
    t0 = time.perf_counter()
    g = load_job("train_gnn").main([f"dataset={data}", f"output_dir={gnn}", *cfg.train_overrides])
    row = {"case": case.name, "seed": case.seed, "data": info, "copl": g["gnn_test_accuracy"],
           "copl_selection": {k: g["selection"].get(k) for k in ("chosen", "best_epoch", "val_accuracy")},
           "train_gnn_seconds": time.perf_counter() - t0}
    for name, ref in fit_references_for(data, gnn).items():  # on train_gnn's validation split
        row[name], row[f"{name}_settings"] = ref.test_accuracy, ref.settings
    if cfg.adapt:
        a = load_job("adapt_users").main([f"dataset={data}", f"gnn_dir={gnn}", f"output_dir={adapt}"])
        for method, m in a["methods"].items():
            row[f"unseen_{method}"] = m["unseen_accuracy_in_graph"]
    return row


def criteria(rows: list[dict]) -> dict:
    """Issue 14's bars, per case and overall (margins in accuracy points)."""
    d_free = [100 * (r["copl"] - r["free"]) for r in rows]
    d_shared = [100 * (r["copl"] - r["shared"]) for r in rows]
    sparse = [d for d, r in zip(d_free, rows) if "sparse" in r["case"]]
    out = {"copl_minus_free_mean": float(np.mean(d_free)), "copl_minus_free_min_sparse": min(sparse, default=None),
           "copl_minus_shared_min": min(d_shared),
           "gnn_beats_free_by_3_on_average": bool(np.mean(d_free) >= 3),
           "gnn_beats_free_by_3_on_every_sparse_case": all(d >= 3 for d in sparse) if sparse else None,
           "gnn_beats_shared_by_5_on_every_case": all(d >= 5 for d in d_shared)}
    # Where even the learner told the true groups gains < 5 over shared, no learner meets that bar.
    headroom = [100 * (r["true_groups"] - r["shared"]) for r in rows]
    attainable = [d for d, h in zip(d_shared, headroom) if h >= 5]
    out.update({"cases_with_true_group_headroom_5": len(attainable), "cases": len(rows),
                "copl_minus_shared_min_where_headroom_5": min(attainable, default=None),
                "clusters_minus_shared_max": max(100 * (r["clusters"] - r["shared"]) for r in rows)})
    if all("unseen_copl" in r for r in rows):
        out["adaptation_beats_naive_avg_and_user_opt_every_case"] = all(
            r["unseen_copl"] > max(r["unseen_naive_avg"], r["unseen_user_opt"]) for r in rows)
    return out


def main(argv=None) -> dict:
    cfg = parse_job_args(BenchRobustnessConfig, argv)
    write_resolved_config(cfg, cfg.output_dir)
    init_ray()
    import torch

    torch.set_num_threads(1)  # references: tiny tensors, one thread (the jobs' workers set their own)
    rows = []
    for seed in cfg.seeds:
        for fields in cfg.cases:
            case = LatentCase(**{**fields, "n_users": cfg.n_users, "seed": seed})
            row = run_case(case, Path(cfg.output_dir) / f"{case.name}-s{seed}", cfg)
            rows.append(row)
            print(f"[robustness] {row['case']:24s} s{seed} copl {100 * row['copl']:.1f}  free {100 * row['free']:.1f}"
                  f"  shared {100 * row['shared']:.1f}  clusters {100 * row['clusters']:.1f}"
                  f"  true-groups {100 * row['true_groups']:.1f}"
                  + (f" | unseen copl {100 * row['unseen_copl']:.1f} naive {100 * row['unseen_naive_avg']:.1f}"
                     f" user_opt {100 * row['unseen_user_opt']:.1f}" if cfg.adapt else "")
                  + f"  ({row['train_gnn_seconds']:.0f} s)", flush=True)
    out = {"rows": rows, "criteria": criteria(rows)}
    print("[robustness] " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in out["criteria"].items()))
    write_metrics(out, cfg.output_dir)
    return out


if __name__ == "__main__":
    main()
