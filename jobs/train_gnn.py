"""Train CoPL's signed GNN (paper Section 4.1) or a baseline on Ray Train; export embeddings.

    python jobs/train_gnn.py dataset=D output_dir=O
    python jobs/train_gnn.py --config configs/train_gnn/paper.yaml dataset=D output_dir=O
    python jobs/train_gnn.py dataset=D output_dir=O model=learnable   # baselines: learnable|uniform|lore

Steps: build the graph from ``annotations/train`` with Ray Data; read the test pairs; carve
validation pairs from train; put them in the object store once; train with a ``TorchTrainer`` (N
workers, checkpoint per epoch, resume after a failure), once per grid candidate; keep the best epoch
and candidate on validation, or, where validation cannot beat chance, refit the first candidate on
every train pair for every epoch (`copl_ray.gnn.selection`); load that checkpoint on the driver,
compute all embeddings with full-graph propagation, export the gnn_dir (docs/ARCHITECTURE.md) and
write ``metrics.json`` with ``gnn_test_accuracy`` overall, by kind and by group, the per-epoch loss
and accuracy, and ``selection`` (what was chosen, from what, and why).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from copl_ray.config import parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.dataset import exit_on_dataset_error, validate_dataset  # noqa: E402
from copl_ray.eval.gnn_metrics import gnn_accuracy  # noqa: E402
from copl_ray.gnn.agreement_init import AGREEMENT_RANK, agreement_spectrum  # noqa: E402
from copl_ray.gnn.gnn_dir import export_gnn_dir  # noqa: E402
from copl_ray.gnn.latent_classes import latent_class_start  # noqa: E402
from copl_ray.gnn.selection import (Score, beats_chance, best_index, candidate_grid, chance_threshold,  # noqa: E402
                                    split_validation)
from copl_ray.gnn.train import TrainGNNConfig, load_trained_model, resolve_mode, run_training  # noqa: E402
from copl_ray.graph.build import build_graph, index_annotations, signed_graph_from_sorted  # noqa: E402
from copl_ray.runtime import init_ray, largest_node_cpus  # noqa: E402

# Keys the grid varies; an explicitly set one stays as given (each set goes together: the layer
# kind is transform + activation + target-edge masking, the depth is num_layers + fanouts).
_GRID_UNITS = ({"num_layers", "fanouts"}, {"lr"}, {"l2"}, {"transform", "activation", "exclude_target_edges"},
               {"user_init"}, {"user_init_norm"})


def _accuracy_metrics(prefix: str, acc: dict, split: str) -> dict:
    """Flatten one `gnn_accuracy` result under ``prefix`` (e.g. gnn_test_accuracy_by_kind); when
    no pair could be scored, ``<prefix>_accuracy_reason`` says why (``split`` names the pairs)."""
    reason = {}
    if acc["n_pairs"] == 0:
        reason[f"{prefix}_accuracy_reason"] = (
            f"{split} has no pair" if acc["n_pairs_total"] == 0 else
            f"none of the {acc['n_pairs_total']} {split} pairs has both responses in the training graph"
            " (a response no train annotation names has no trained embedding; make_synthetic's default"
            " test split lies on held-out prompts: test_pool=survey or holdout_fraction>0 scores the GNN)")
    return {
        **reason,
        f"{prefix}_accuracy": acc["accuracy"],
        f"{prefix}_accuracy_by_kind": {k: v["accuracy"] for k, v in acc.get("by_kind", {}).items()},
        f"{prefix}_accuracy_by_group": {k: v["accuracy"] for k, v in acc.get("by_group", {}).items()},
        f"{prefix}_pairs": {"counted": acc["n_pairs"], "total": acc["n_pairs_total"],
                            "coverage": acc["coverage"], "ties": acc["ties"],
                            "by_kind": {k: v["n_pairs"] for k, v in acc.get("by_kind", {}).items()},
                            "by_group": {k: v["n_pairs"] for k, v in acc.get("by_group", {}).items()}},
    }


def grid_candidates(cfg: TrainGNNConfig, n_train_pairs: int) -> list[dict]:
    """`candidate_grid` without the keys the user set explicitly (their value is a choice already);
    duplicates dropped, so a fully pinned config trains once."""
    out = []
    for cand in candidate_grid(cfg.grid, n_train_pairs, cfg.grid_max_train_pairs, cfg.model):
        for unit in _GRID_UNITS:
            if unit & cfg.model_fields_set:
                for key in unit:
                    cand.pop(key, None)
        if "user_init" not in cand:  # a candidate's start norm goes with the start it names
            cand.pop("user_init_norm", None)
        if cand not in out:
            out.append(cand)
    return out or [{}]


def _best_score(state: dict) -> Score:
    best = (state.get("early_stopping") or {}).get("best")
    return Score(*best) if best else Score(float("nan"), float("nan"))


def _graph_data(graph, triples) -> dict:
    """The arrays a training run reads: the signed graph's edges and the triples it trains on."""
    return {"pos_user": graph.pos_user.numpy(), "pos_response": graph.pos_response.numpy(),
            "neg_user": graph.neg_user.numpy(), "neg_response": graph.neg_response.numpy(),
            "train_user": triples.user, "train_chosen": triples.chosen, "train_rejected": triples.rejected,
            "response_in_graph": graph.response_in_graph()}


def _selection_metrics(runs: list, chosen: int | None, val, refit: dict | None = None) -> dict:
    """What was chosen on validation and from what: candidates with their best epoch and score;
    ``refit``: why validation was not trusted and what was trained instead."""
    rows = []
    for update, run_cfg, _, state in runs:
        es = state.get("early_stopping") or {}
        best = es.get("best") or [None, None]
        rows.append({"settings": {k: getattr(run_cfg, k) for k in ("transform", "activation", "exclude_target_edges",
                                                                 "num_layers", "fanouts", "lr", "l2", "dim", "user_init",
                                                                 "user_init_norm")},
                     "varied": sorted(update), "best_epoch": es.get("best_epoch"), "epochs_run": len(state["history"]),
                     "val_accuracy": best[0], "val_loss": best[1]})
    if val is None:
        return {"val_pairs": 0, "reason": "val_fraction=0 or no user has two train pairs: the last epoch is kept",
                "candidates": rows}
    if refit is not None:
        return {"val_pairs": len(val), "chosen_candidate": 0, "chosen": rows[0]["settings"], "best_epoch": None,
                "val_accuracy": None, "refit": refit, "candidates": rows}
    return {"val_pairs": len(val), "chosen_candidate": chosen, "chosen": rows[chosen]["settings"],
            "best_epoch": rows[chosen]["best_epoch"], "val_accuracy": rows[chosen]["val_accuracy"],
            "candidates": rows}


def main(argv=None) -> dict:
    cfg = parse_job_args(TrainGNNConfig, argv)
    write_resolved_config(cfg, cfg.output_dir)

    # 1. Graph from annotations/train (Ray Data), test pairs the same way. Bad input is one line
    # naming the file, row and field (CONTRACT 1), not a traceback; checked before Ray starts.
    with exit_on_dataset_error():
        t0 = time.perf_counter()
        if cfg.validate_input:
            validate_dataset(cfg.dataset)
        seconds_validate = time.perf_counter() - t0
        ray = init_ray()
        built = build_graph(cfg.dataset, holdout_fraction=cfg.holdout_fraction, seed=cfg.seed)
        t0 = time.perf_counter()
        test = index_annotations(cfg.dataset, "test", built.user_map, built.response_map, with_kind=True)
        seconds_read_test = time.perf_counter() - t0
    # 2. Validation pairs carved from train (never test): kept out of the graph while training,
    # they choose the epoch and the grid candidate; their edges come back for the export.
    fit, val = built.train, None
    if cfg.val_fraction > 0:
        fit, val = split_validation(built.train, cfg.val_fraction, cfg.seed)
        if len(val) == 0:
            fit, val = built.train, None
    g = built.graph if val is None else signed_graph_from_sorted(fit, built.graph.n_users, built.graph.n_responses)
    # Decided on the whole train split, as the grid is (grid_max_train_pairs), so the two agree.
    cfg, mode_info = resolve_mode(cfg, len(built.train), largest_node_cpus())
    write_resolved_config(cfg, cfg.output_dir)  # the concrete mode: a rerun of config.yaml repeats this run

    # 3. Train on Ray Train: one run, or one per grid candidate.
    data = _graph_data(g, fit)
    if val is not None:
        data.update(val_user=val.user, val_chosen=val.chosen, val_rejected=val.rejected)
    # Monitoring only (each epoch's "test_accuracy"): never used to choose anything.
    scored = built.holdout if built.holdout is not None else test
    data.update(eval_user=scored.user, eval_chosen=scored.chosen, eval_rejected=scored.rejected)
    candidates = grid_candidates(cfg, len(built.train)) if val is not None else [{}]
    t0 = time.perf_counter()
    if cfg.model == "copl" and any(c.get("user_init", cfg.user_init) == "agreement" for c in candidates):
        # From the fit pairs only: validation pairs must not shape the start either.
        data["user_spectrum"] = agreement_spectrum(g.n_users, g.n_responses, fit, AGREEMENT_RANK, cfg.seed
                                                   ).astype("float32")
    latent_classes = None
    if cfg.model == "copl" and any(c.get("user_init", cfg.user_init) == "latent_classes" for c in candidates):
        # Fitted on the fit pairs; the validation pairs choose K, as they choose everything else.
        data["user_classes"], latent_classes = latent_class_start(g.n_users, g.n_responses, fit, val, cfg.seed)
    data_ref = ray.put(data)
    runs = []
    for i, update in enumerate(candidates):
        run_cfg = TrainGNNConfig.model_validate({**cfg.model_dump(), **update, "grid": False}) if update else cfg
        result, state = run_training(run_cfg, data_ref, g.n_users, g.n_responses,
                                     run_tag=f"c{i}" if len(candidates) > 1 else "")
        runs.append((update, run_cfg, result, state))
    chosen = best_index([_best_score(state) for *_, state in runs]) if val is not None else None
    update, cfg_used, result, state = runs[chosen or 0]
    refit = None
    best = _best_score(state)
    if val is not None and not beats_chance(best, len(val), cfg.val_min_z):
        # Validation cannot tell better from worse here (selection.beats_chance): choosing an epoch
        # or a candidate by it is choosing by noise. Train the first candidate (the single-run
        # default) on every train pair for every epoch instead, as a run without validation does.
        refit = {"reason": f"best validation accuracy {best.accuracy:.4f} on {len(val)} pairs is under"
                           f" chance + {cfg.val_min_z:g} standard errors"
                           f" ({chance_threshold(len(val), cfg.val_min_z):.4f}): validation cannot choose;"
                           " the first candidate was refit on all train pairs for all epochs",
                 "validation_pick": chosen}
        update = candidates[0]
        # val_fraction stays as given: config.yaml then reruns this refit (the one candidate's
        # validation is at chance too) and the references carve the same split from it.
        cfg_used = TrainGNNConfig.model_validate({**cfg.model_dump(), **update, "grid": False})
        refit_data = {k: v for k, v in data.items() if not k.startswith("val_")}
        refit_data.update(_graph_data(built.graph, built.train))
        result, state = run_training(cfg_used, ray.put(refit_data), built.graph.n_users, built.graph.n_responses,
                                     run_tag="refit")
    seconds_fit = time.perf_counter() - t0
    if update or refit:  # the config.yaml that reproduces the chosen run
        write_resolved_config(cfg_used, cfg.output_dir)

    # 4. Final embeddings over the whole train graph (validation edges back in), export, metrics.
    g = built.graph
    response_in_graph = g.response_in_graph()
    model, e_user, e_resp = load_trained_model(cfg_used, result.checkpoint, g)
    acc = gnn_accuracy(e_user, e_resp, test.user, test.chosen, test.rejected, response_in_graph,
                       kind=test.kind, user_group=built.user_group)
    metrics = _accuracy_metrics("gnn_test", acc, "annotations/test")
    if built.holdout is not None:
        h = built.holdout
        metrics.update(_accuracy_metrics("gnn_holdout", gnn_accuracy(
            e_user, e_resp, h.user, h.chosen, h.rejected, response_in_graph, kind=h.kind,
            user_group=built.user_group), "holdout"))
    export_gnn_dir(cfg.output_dir, g, built.user_map, built.response_map, e_user, e_resp, model,
                   embedding_meta={"model": cfg.model})
    history = state["history"]
    metrics["selection"] = _selection_metrics(runs, chosen, val, refit)
    metrics["mode_resolution"] = mode_info
    if latent_classes is not None:  # the warm start of user_init=latent_classes: K and its validation scores
        metrics["latent_classes"] = latent_classes
    metrics.update({
        "model": cfg.model,
        "epochs_run": len(history),
        "epoch_loss": [h["loss"] for h in history],  # the objective: BTL + l2 penalty
        "epoch_btl_loss": [h.get("btl_loss") for h in history],
        # Scored each epoch on the holdout when there is one, else on annotations/test.
        "epoch_accuracy_pairs": "holdout" if built.holdout is not None else "test",
        "epoch_accuracy": [h["test_accuracy"] for h in history],
        "epoch_val_accuracy": [h.get("val_accuracy") for h in history],
        "evals": state["evals"],
        "steps": state["step"],
        "train_seconds": state["train_seconds"],
        # each rank's process CPU seconds per epoch (not stretched by other load; includes evaluations)
        "epoch_cpu_seconds_per_rank": [h.get("epoch_cpu_seconds_per_rank") for h in history],
        "resumed_from_epoch": state["restored_from_epoch"],
        "worker_nodes": state.get("worker_nodes", []),
        "stopped_early": state["stopped_early"],
        "peak_rss_mb_per_rank": state.get("peak_rss_mb_per_rank"),
        "num_workers": cfg.num_workers,
        "graph": {**built.stats, "seconds_read_test": seconds_read_test, "seconds_validate": seconds_validate},
        "seconds_fit": seconds_fit,
    })
    write_metrics(metrics, cfg.output_dir)
    print(f"train_gnn: model={cfg.model} gnn_test_accuracy={metrics['gnn_test_accuracy']} "
          f"(test coverage {acc['coverage']:.3f}) gnn_holdout_accuracy="
          f"{metrics.get('gnn_holdout_accuracy')} -> {cfg.output_dir}")
    return metrics


if __name__ == "__main__":
    main()
