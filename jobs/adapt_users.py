"""Adapt every unseen user of a dataset without retraining (paper Section 4.3, Eq. 11).

    python jobs/adapt_users.py dataset=D gnn_dir=G output_dir=O
    python jobs/adapt_users.py --config configs/adapt_users/default.yaml dataset=D gnn_dir=G output_dir=O

Steps: validate the dataset; load the GNN artifacts once; read the unseen users and their ``fewshot`` annotations;
adapt them all (CoPL's weighted k-hop neighbours, batch path); write their embeddings
(CONTRACT 3, with ``resolution``/``n_neighbors``/``n_annotations`` columns) to
``output_dir/users.parquet``; score ``test_unseen`` by dot product. With ``compare=true`` the
Table 5 baselines (Naive Avg, User Opt) are scored side by side and every method is re-run with the
first n fewshot annotations of each user for n in ``given_counts`` (accuracy curve, table in
``metrics.json`` and ``curve.png``). Users with fewer than n annotations give all they have.
"""


import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from pydantic import Field  # noqa: E402

from copl_ray.adapt import AdaptParams, adapt_batch, load_gnn_artifacts  # noqa: E402
from copl_ray.adapt.baselines import naive_avg, user_opt  # noqa: E402
from copl_ray.adapt.evaluation import accuracy_report, first_n_per_user, first_n_rank, plot_curves  # noqa: E402
from copl_ray.adapt.selection import candidate_params, cross_validate  # noqa: E402
from copl_ray.config import JobConfig, parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.dataset import exit_on_dataset_error, read_annotations, read_table, validate_dataset  # noqa: E402
from copl_ray.embeddings import write_embeddings  # noqa: E402
from copl_ray.gnn.gnn_dir import users_path  # noqa: E402

METHODS = ("copl", "naive_avg", "user_opt")


class AdaptUsersConfig(JobConfig):
    """jobs/adapt_users.py: optimization-free adaptation of a dataset's unseen users."""

    dataset: str
    gnn_dir: str
    output_dir: str
    method: Literal["copl", "naive_avg", "user_opt"] = Field("copl", description="written to users.parquet")
    adapt: AdaptParams = Field(default_factory=AdaptParams)
    compare: bool = Field(True, description="score all three methods and the annotation-count curve")
    given_counts: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    user_opt_steps: int = Field(50, ge=1, description="paper App. B: 50 gradient steps")
    user_opt_lr: float = Field(0.05, gt=0)
    user_opt_weight_decay: float = Field(1e-4, ge=0)
    seed: int = Field(0, description="priority rank of seen users (caps and global fallback sample)")
    select: bool = Field(True, description=(
        "choose adapt.hops and adapt.kappa from the candidates below by 2-fold cross-validation on the"
        " fewshot pairs (copl_ray/adapt/selection.py; test_unseen is never read). A value set"
        " explicitly under adapt: is kept"))
    hops_candidates: list[int] = Field(default_factory=lambda: [2, 4])
    kappa_candidates: list[float] = Field(default_factory=lambda: [0.07, 0.003, 0.01, 0.03, 0.3, 1.0],
                                          description="the paper's 0.07 first: it wins ties")
    select_max_users: int = Field(2000, ge=1, description="users scored by the cross-validation (a seeded sample)")
    fewshot_holdout: int = Field(0, ge=0, description=(
        "> 0: keep each unseen user's last m fewshot rows out of adaptation and score them "
        "(unseen_fewshot_holdout_accuracy). They are survey pairs, so in the graph, unlike "
        "make_synthetic's test_unseen pairs whose responses have no edge at all"))


def run_method(method: str, art, fewshot: pa.Table, users: pa.Array, cfg: AdaptUsersConfig):
    if method == "copl":
        return adapt_batch(art, fewshot, cfg.adapt, user_ids=users)
    if method == "naive_avg":
        return naive_avg(art, fewshot, cfg.adapt, user_ids=users)
    return user_opt(art, fewshot, user_ids=users, steps=cfg.user_opt_steps, lr=cfg.user_opt_lr,
                    weight_decay=cfg.user_opt_weight_decay)


def check_responses_known(art, dataset: str, gnn_dir: str) -> None:
    """Every response of ``fewshot`` and ``test_unseen`` must be one the GNN embedded; if not,
    gnn_dir was trained on another dataset: say so, naming the shard and row."""
    for split in ("fewshot", "test_unseen"):
        table = read_annotations(dataset, split, with_source=True)
        for name in ("chosen_id", "rejected_id"):
            unknown = pc.invert(pc.is_in(table.column(name), value_set=art.response_ids))
            bad = np.flatnonzero(unknown.to_numpy(zero_copy_only=False))
            if bad.size:
                i = int(bad[0])
                raise SystemExit(
                    f"error: {table.column('_file')[i].as_py()}: row {table.column('_row')[i].as_py()}: field"
                    f" {name!r} names response {table.column(name)[i].as_py()!r}, which gnn_dir {gnn_dir} has no"
                    f" embedding for ({bad.size} rows): gnn_dir must be a train_gnn output of this dataset")


def select_params(cfg: AdaptUsersConfig, art, fewshot: pa.Table) -> tuple[AdaptUsersConfig, dict]:
    """(cfg with the chosen adapt.hops / adapt.kappa and select=false, what was tried)."""
    candidates = candidate_params(cfg.adapt, cfg.hops_candidates, cfg.kappa_candidates)
    table = cross_validate(art, fewshot, pc.unique(fewshot.column("user_id").combine_chunks()), candidates,
                           max_users=cfg.select_max_users, seed=cfg.seed)
    scored = [i for i, row in enumerate(table) if row["accuracy"] is not None]
    if not scored:
        return cfg, {"reason": "no unseen user has two fewshot pairs: the configured hops/kappa are kept",
                     "candidates": table}
    best = max(scored, key=lambda i: (table[i]["accuracy"], -i))  # first of the best in grid order
    chosen = candidates[best]
    cfg = cfg.model_copy(update={"adapt": chosen, "select": False})
    return cfg, {"chosen": {"hops": chosen.hops, "kappa": chosen.kappa}, "cv_accuracy": table[best]["accuracy"],
                 "cv_pairs": table[best]["n_pairs"], "candidates": table}


def main(argv=None) -> dict:
    cfg = parse_job_args(AdaptUsersConfig, argv)
    with exit_on_dataset_error():  # a bad row named by file, row and field, not a lookup error further on
        validate_dataset(cfg.dataset)
    write_resolved_config(cfg, cfg.output_dir)
    t0 = time.perf_counter()
    art = load_gnn_artifacts(cfg.gnn_dir, seed=cfg.seed)
    check_responses_known(art, cfg.dataset, cfg.gnn_dir)
    users_t = read_table(cfg.dataset, "users")
    unseen = users_t.filter(pc.equal(users_t.column("split"), "unseen"))
    user_ids = unseen.column("user_id").combine_chunks()
    groups = dict(zip(user_ids.to_pylist(), unseen.column("group").to_pylist()))
    fewshot = read_annotations(cfg.dataset, "fewshot")
    test = read_annotations(cfg.dataset, "test_unseen")
    held = None
    if cfg.fewshot_holdout:
        counts = pc.value_counts(fewshot.column("user_id")).to_pylist()
        keep = {c["values"]: c["counts"] - cfg.fewshot_holdout for c in counts}
        rank = first_n_rank(fewshot)
        limit = np.array([keep[u] for u in fewshot.column("user_id").to_pylist()])
        held = fewshot.filter(pa.array(rank >= limit))
        fewshot = fewshot.filter(pa.array(rank < limit))
    load_s = time.perf_counter() - t0
    selection = None
    if cfg.select:
        t0 = time.perf_counter()
        cfg, selection = select_params(cfg, art, fewshot)
        selection["seconds"] = time.perf_counter() - t0
        write_resolved_config(cfg, cfg.output_dir)  # the chosen hops/kappa, so a rerun repeats this run

    t0 = time.perf_counter()
    res = run_method(cfg.method, art, fewshot, user_ids, cfg)
    adapt_s = time.perf_counter() - t0
    write_embeddings(users_path(cfg.output_dir), "user_id", res.user_ids, res.embeddings.numpy(),
                     extra_columns={"resolution": res.resolution.astype(str).tolist(),
                                    "n_neighbors": res.n_neighbors, "n_annotations": res.n_annotations},
                     meta={"producer": "adapt_users", "method": cfg.method, "gnn_dir": str(cfg.gnn_dir),
                           **cfg.adapt.model_dump()})
    report = accuracy_report(art, user_ids, res.embeddings, test, groups, n_given=res.n_annotations)
    metrics = {
        "selection": selection,
        "hops": cfg.adapt.hops, "kappa": cfg.adapt.kappa,
        "method": cfg.method,
        "n_unseen_users": len(user_ids),
        "unseen_accuracy": report["accuracy"],
        "unseen_accuracy_by_group": report.get("by_group", {}),
        "unseen_accuracy_by_n_annotations": report.get("by_n_given", {}),
        "unseen_accuracy_in_graph": report["in_graph"]["accuracy"],
        "unseen_test_pairs": {"counted": report["n_pairs"], "in_graph": report["in_graph"]["n_pairs"],
                              "in_graph_coverage": report["in_graph"]["coverage"]},
        "resolution_counts": {r: int((res.resolution == r).sum()) for r in sorted(set(res.resolution))},
        "n_neighbors": {"mean": float(res.n_neighbors.mean()) if len(res.n_neighbors) else 0.0,
                        "max": int(res.n_neighbors.max()) if len(res.n_neighbors) else 0},
        "seconds": {"load": load_s, "adapt": adapt_s},
        "users_per_second": len(user_ids) / adapt_s if adapt_s > 0 else None,
    }
    if cfg.compare:
        table, curves = {}, {}
        for method in METHODS:
            t0 = time.perf_counter()
            r = res if method == cfg.method else run_method(method, art, fewshot, user_ids, cfg)
            secs = adapt_s if method == cfg.method else time.perf_counter() - t0
            rep = accuracy_report(art, user_ids, r.embeddings, test, groups)
            table[method] = {"unseen_accuracy": rep["accuracy"], "unseen_accuracy_in_graph": rep["in_graph"]["accuracy"],
                             "unseen_accuracy_by_group": rep["by_group"], "seconds": secs}
            if held is not None:
                table[method]["unseen_fewshot_holdout_accuracy"] = accuracy_report(
                    art, user_ids, r.embeddings, held, groups)["accuracy"]
            curves[method] = {}
            for n in cfg.given_counts:
                r_n = run_method(method, art, first_n_per_user(fewshot, n), user_ids, cfg)
                curves[method][n] = accuracy_report(art, user_ids, r_n.embeddings, test)["accuracy"]
        metrics["methods"] = table
        metrics["curve"] = {m: {str(n): a for n, a in c.items()} for m, c in curves.items()}
        have = np.bincount(pc.index_in(fewshot.column("user_id"), value_set=user_ids).to_numpy(
            zero_copy_only=False).astype(np.int64), minlength=len(user_ids))
        metrics["curve_users_with_at_least_n"] = {str(n): int((have >= n).sum()) for n in cfg.given_counts}
        plot_curves(curves, Path(cfg.output_dir) / "curve.png")
    reason = ("the dataset has no unseen users" if len(user_ids) == 0 else
              "annotations/test_unseen holds no pairs" if report["n_pairs"] == 0 else None)
    if reason:  # say why instead of a bare null (NaN) accuracy
        metrics["unseen_accuracy"] = None
        metrics["unseen_accuracy_reason"] = reason
    elif report["in_graph"]["n_pairs"] == 0:
        metrics["unseen_accuracy_in_graph"] = None
        metrics["unseen_accuracy_in_graph_reason"] = (
            "no test_unseen pair has both responses in the graph (no edge in annotations/train);"
            " unseen_accuracy then scores responses the GNN never trained")
    if held is not None:
        metrics["unseen_fewshot_holdout_accuracy"] = accuracy_report(art, user_ids, res.embeddings, held)["accuracy"]
        metrics["unseen_fewshot_holdout_pairs"] = held.num_rows
    write_metrics(metrics, cfg.output_dir)
    acc = metrics["unseen_accuracy"]
    print(f"adapt_users: {len(user_ids)} unseen users, unseen_accuracy="
          f"{reason if reason else format(acc, '.4f')} "
          f"({metrics['resolution_counts']}) -> {cfg.output_dir}")
    return metrics


if __name__ == "__main__":
    main()
