"""Evaluate a trained reward model (CoPL or a baseline) on held-out pairs.

    python jobs/evaluate.py dataset=D gnn_dir=G reward_dir=R output_dir=O [adapt_dir=A]

Seen users are scored on ``annotations/test`` with the embeddings the model was trained with
(GNN ``gnn_dir``, or the learned table for ``no_gnn``); unseen users on ``annotations/test_unseen``
with embeddings from adaptation (``adapt_dir``, written by ``jobs/adapt_users.py``). Without
``adapt_dir`` the unseen figures say ``available: false`` and why: they are not zero. Uniform and
G-Oracle need no user embedding (G-Oracle scores each user with the model of their true group).

Writes ``metrics.json`` (``seen_accuracy``, ``unseen_accuracy``, ``seen``/``unseen`` blocks with
accuracy by kind, by group, per-user distribution and minority users), ``config.yaml`` and, with
``plots=true``, ``tsne_users.png`` and ``expert_allocation.png`` (MoLE methods).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pydantic import Field  # noqa: E402

from copl_ray.config import JobConfig, parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.dataset import exit_on_dataset_error, read_table, validate_dataset  # noqa: E402
from copl_ray.eval import plots  # noqa: E402
from copl_ray.eval.reward_metrics import accuracy_report, pair_correct, score_pairs  # noqa: E402
from copl_ray.graph.id_map import IdMap  # noqa: E402
from copl_ray.reward.artifacts import RewardDir, load_reward_dir  # noqa: E402
from copl_ray.reward.baselines import UserConditionedRM  # noqa: E402
from copl_ray.reward.data import PairDataset, PairTable, load_pairs, tokenize_responses  # noqa: E402
from copl_ray.reward.encoding import TextEncoding  # noqa: E402


class EvaluateConfig(JobConfig):
    """jobs/evaluate.py: accuracy of a trained reward model on seen and unseen users' test pairs."""

    dataset: str
    gnn_dir: str | None = None
    reward_dir: str
    output_dir: str
    adapt_dir: str | None = None
    batch_size: int = Field(64, ge=1, description="pairs per scoring batch (2x sequences)")
    max_pairs: int | None = Field(None, ge=1, description="score a seeded random subset of each split")
    max_length: int | None = Field(None, ge=8, description="default: the training run's")
    plots: bool = True
    tsne_max_points: int = Field(5000, ge=5)
    seed: int = 0


def _models(cfg: EvaluateConfig, rd: RewardDir) -> dict:
    """{group or None: UserConditionedRM} with user tables covering every user it can score."""
    table = rd.user_table(cfg.gnn_dir, cfg.adapt_dir)
    if table is not None:
        return {g: UserConditionedRM(rm, table.index, table.emb, False) for g, rm in rd.models.items()}
    # Uniform / G-Oracle ignore the user: a zero table over the dataset's users keeps one harness.
    users = read_table(cfg.dataset, "users")
    all_ids = IdMap(users.column("user_id").combine_chunks())
    return {g: UserConditionedRM(rm, all_ids, torch.zeros(len(all_ids), 1), False) for g, rm in rd.models.items()}


def _score_split(cfg, models, pairs: PairTable, encoding: TextEncoding) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """(correct [N], expert_index [N, ...] or None, reason-if-unavailable)."""
    correct = np.zeros(len(pairs), dtype=bool)
    experts = None
    for group, model in models.items():
        sel = np.arange(len(pairs)) if group is None else np.flatnonzero(pairs.group == group)
        if len(sel) == 0:
            continue
        sub = pairs.take(sel)
        known = np.isin(sub.user_id, np.asarray(model.user_ids.ids.to_pylist(), dtype=object))
        if not known.all():
            missing = sub.user_id[~known][0]
            return correct, None, f"no embedding for user {missing!r} ({int((~known).sum())} pairs)"
        tokens = tokenize_responses(cfg.dataset, list(sub.chosen_id) + list(sub.rejected_id),
                                    model.rm.tokenizer, encoding=encoding)
        chosen, rejected, exp = score_pairs(model, PairDataset.from_pairs(sub, model.user_ids, tokens),
                                            tokens, cfg.batch_size)
        correct[sel] = pair_correct(chosen, rejected)
        if exp is not None and group is None:
            experts = exp
    if set(models) != {None}:  # G-Oracle: users outside every true group cannot be scored
        covered = np.isin(pairs.group, list(models))
        if not covered.all():
            return correct, None, f"{int((~covered).sum())} pairs of users without a trained group"
    return correct, experts, None


def main(argv=None) -> dict:
    cfg = parse_job_args(EvaluateConfig, argv)
    t0 = time.perf_counter()
    with exit_on_dataset_error():  # a bad row named by file, row and field, not a lookup error while scoring
        validate_dataset(cfg.dataset)
    try:
        rd = load_reward_dir(cfg.reward_dir, max_length=cfg.max_length)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: reward_dir: {exc}") from None
    models = _models(cfg, rd)
    out = Path(cfg.output_dir)
    metrics: dict = {"method": rd.method}

    seen = load_pairs(cfg.dataset, "test", max_pairs=cfg.max_pairs, seed=cfg.seed)
    reference = _concat(load_pairs(cfg.dataset, "train"), load_pairs(cfg.dataset, "test"))
    correct, experts, reason = _score_split(cfg, models, seen, rd.encoding)
    if reason:
        raise SystemExit(f"error: cannot score seen users: {reason}")
    metrics["seen"] = accuracy_report(correct, seen, reference)
    metrics["seen_accuracy"] = metrics["seen"]["accuracy"]

    unseen_users = _unseen_users(cfg.dataset)
    if not unseen_users:
        metrics["unseen"] = {"available": False, "reason": "the dataset has no unseen users"}
    elif rd.method in ("copl", "no_mole") and cfg.adapt_dir is None:
        metrics["unseen"] = {"available": False,
                             "reason": "no adapt_dir: unseen users' embeddings come from jobs/adapt_users.py"}
    elif rd.method == "no_gnn":
        metrics["unseen"] = {"available": False,
                             "reason": "w/o GNN learns embeddings of seen users only; unseen users have none"}
    else:
        unseen = load_pairs(cfg.dataset, "test_unseen", max_pairs=cfg.max_pairs, seed=cfg.seed)
        ref_u = _concat(load_pairs(cfg.dataset, "fewshot", allow_empty=True), load_pairs(cfg.dataset, "test_unseen"))
        u_correct, _, reason = _score_split(cfg, models, unseen, rd.encoding)
        metrics["unseen"] = {"available": False, "reason": reason} if reason else \
            {"available": True, **accuracy_report(u_correct, unseen, ref_u)}
    metrics["unseen_accuracy"] = metrics["unseen"].get("accuracy")

    if cfg.plots:
        metrics["plots"] = _plots(cfg, models, seen, experts, out)
    metrics["wall_seconds"] = time.perf_counter() - t0
    write_resolved_config(cfg, out)
    write_metrics(metrics, out)
    return metrics


def _concat(a: PairTable, b: PairTable) -> PairTable:
    return PairTable(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in PairTable.__dataclass_fields__))


def _unseen_users(dataset) -> list[str]:
    users = read_table(dataset, "users")
    return [u for u, s in zip(users.column("user_id").to_pylist(), users.column("split").to_pylist()) if s == "unseen"]


def _plots(cfg: EvaluateConfig, models: dict, seen: PairTable, experts, out: Path) -> dict:
    written = {}
    n_users = len(models[None].user_buffer) if None in models else 0
    if None in models and n_users < plots.TSNE_MIN_POINTS:
        written["tsne_users_skipped"] = (f"{n_users} users with an embedding; t-SNE needs at least "
                                         f"{plots.TSNE_MIN_POINTS}")
    elif None in models and not np.all(models[None].user_buffer.numpy() == 0):
        model = models[None]
        users = read_table(cfg.dataset, "users")
        group_of = dict(zip(users.column("user_id").to_pylist(), users.column("group").to_pylist()))
        split_of = dict(zip(users.column("user_id").to_pylist(), users.column("split").to_pylist()))
        ids = model.user_ids.ids.to_pylist()
        path = plots.tsne_by_group(model.user_buffer.numpy(), [group_of.get(u) for u in ids],
                                   out / "tsne_users.png", max_points=cfg.tsne_max_points, seed=cfg.seed,
                                   marked=np.asarray([split_of.get(u) == "unseen" for u in ids]))
        written["tsne_users"] = path.name
    if experts is not None:
        # One row per user: the gate depends on the user only, so any of their pairs gives it.
        _, first = np.unique(seen.user_id.astype(str), return_index=True)
        rm_cfg = models[None].rm.cfg
        per_user = experts[first]
        names = None
        if rm_cfg.gate_scope == "model":
            names = ["one gate for all adapted layers"]
        elif per_user.ndim == 2:
            names = models[None].rm.adapted[: per_user.shape[1]]  # one gate per adapted linear
        path = plots.expert_heatmap(per_user, seen.group[first], rm_cfg.num_experts,
                                    out / "expert_allocation.png", layer_names=names)
        written["expert_allocation"] = path.name
    return written


if __name__ == "__main__":
    main()
