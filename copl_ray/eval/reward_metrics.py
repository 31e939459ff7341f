"""Accuracy of a reward model on held-out preference pairs (CONTRACT 2, ``metrics.json``).

A pair is correct when the model gives the chosen response a higher reward than the rejected one
for that user: ``r(u, chosen) > r(u, rejected)``; a tie counts as wrong (the model did not pick).
Figures reported for one split:

- ``accuracy`` and ``n_pairs`` over all pairs;
- ``by_kind``: common / controversial (paper Table 3), pairs whose kind is null are left out;
- ``by_group``: per true preference group (users' ``group``), where groups exist;
- ``per_user``: the distribution of per-user accuracy (mean, std, quantiles);
- ``minority``: users whose majority-vote accuracy (MV-ACC, "Personalization meets reality"; the
  definition and code of `copl_ray.eval.dataset_stats`) is < 0.5, and the model's accuracy on
  their pairs. MV-ACC is computed over the reference annotations (train + test of the same
  users), since one split alone has few pairs labelled by several users.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from copl_ray.graph.id_map import IdMap
from copl_ray.reward.data import PairTable

QUANTILES = {"p10": 0.10, "p25": 0.25, "median": 0.50, "p75": 0.75, "p90": 0.90}


def pair_correct(chosen_reward: np.ndarray, rejected_reward: np.ndarray) -> np.ndarray:
    """[N] bool: the model ranks the chosen response strictly above the rejected one."""
    chosen_reward, rejected_reward = np.asarray(chosen_reward), np.asarray(rejected_reward)
    if chosen_reward.shape != rejected_reward.shape:
        raise ValueError(f"reward shapes differ: {chosen_reward.shape} vs {rejected_reward.shape}")
    return chosen_reward > rejected_reward


def _grouped(correct: np.ndarray, keys: np.ndarray) -> dict:
    frame = pd.DataFrame({"key": keys, "correct": correct}).dropna(subset=["key"])
    out = {}
    for key, sub in frame.groupby("key", sort=True):
        out[str(key)] = {"accuracy": float(sub["correct"].mean()), "n_pairs": int(len(sub))}
    return out


def per_user_distribution(correct: np.ndarray, user_id: np.ndarray) -> dict:
    """Distribution over users of their own accuracy."""
    acc = pd.DataFrame({"u": user_id, "c": correct}).groupby("u")["c"].mean().to_numpy()
    if acc.size == 0:
        return {"n_users": 0}
    out = {"n_users": int(acc.size), "mean": float(acc.mean()), "std": float(acc.std()),
           "min": float(acc.min()), "max": float(acc.max())}
    out.update({name: float(np.quantile(acc, q)) for name, q in QUANTILES.items()})
    return out


def majority_vote_accuracy(pairs: PairTable, reference: PairTable) -> pd.Series:
    """Per user of ``reference``: MV-ACC as `copl_ray.eval.dataset_stats` defines it (share of the
    user's multi-user pairs whose label is the pair's majority; a tie scores 0.5).

    Returns: a Series indexed by user_id, only users of ``pairs`` that have such a pair.
    """
    from copl_ray.eval.dataset_stats import Triples, divergence_stats

    users = IdMap(np.unique(np.concatenate([reference.user_id, pairs.user_id]).astype(str)))
    responses = IdMap(np.unique(np.concatenate([reference.chosen_id, reference.rejected_id]).astype(str)))
    t = Triples(users.lookup(list(reference.user_id.astype(str))),
                responses.lookup(list(reference.chosen_id.astype(str))),
                responses.lookup(list(reference.rejected_id.astype(str))), len(users), len(responses))
    _, per_user = divergence_stats(t)
    mv = pd.Series(per_user["mv_acc"], index=users.ids.to_pylist()).dropna()
    return mv[mv.index.isin(set(pairs.user_id.astype(str)))]


def accuracy_report(correct: np.ndarray, pairs: PairTable, reference: PairTable | None = None) -> dict:
    """All figures of one split; ``reference`` (annotations for the majority vote) is optional.

    Args:
        correct: [N] bool from `pair_correct`, aligned with ``pairs``.
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.shape != (len(pairs),):
        raise ValueError(f"correct has shape {correct.shape}, expected ({len(pairs)},)")
    report = {
        "accuracy": float(correct.mean()) if len(correct) else None,
        "n_pairs": int(len(correct)),
        "by_kind": _grouped(correct, pairs.kind),
        "by_group": _grouped(correct, pairs.group),
        "per_user": per_user_distribution(correct, pairs.user_id),
    }
    if reference is not None:
        mv = majority_vote_accuracy(pairs, reference)
        minority = set(mv.index[mv < 0.5])
        mask = np.isin(pairs.user_id, list(minority))
        report["minority"] = {
            "definition": "users whose MV-ACC (eval.dataset_stats) < 0.5 over train+test labels",
            "n_users": len(minority),
            "n_users_classified": int(len(mv)),
            "n_pairs": int(mask.sum()),
            "accuracy": float(correct[mask].mean()) if mask.any() else None,
            "majority_vote_accuracy_mean": float(mv.mean()) if len(mv) else None,
        }
    return report


def score_pairs(model, dataset, tokens, batch_size: int = 64, device="cpu"):
    """Rewards of every pair in one pass of mixed-user batches (no per-user loop).

    Args:
        model: a `UserConditionedRM` (``forward(input_ids, attention_mask, user_index)``).
        dataset: `PairDataset` (user rows into ``model``'s table, token rows into ``tokens``).
    Returns:
        chosen [N] float32, rejected [N] float32, expert_index [N, ...] int64 (or None when the
        model has no gate), all numpy.
    """
    import torch

    from copl_ray.reward.data import collate_pairs

    chosen, rejected, experts = [], [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = {k: v.to(device) for k, v in collate_pairs(items, tokens).items()}
            out = model(**batch)
            r = out.rewards.float().cpu()
            chosen.append(r[: len(items)])
            rejected.append(r[len(items):])
            if getattr(out, "expert_index", None) is not None:
                experts.append(torch.as_tensor(out.expert_index)[: len(items)].cpu())
    cat = lambda xs: torch.cat(xs).numpy() if xs else None  # noqa: E731
    return cat(chosen), cat(rejected), cat(experts)
