"""Accuracy of a reward model on held-out preference pairs (CONTRACT 2, ``metrics.json``).

A pair is correct when the model gives the chosen response a higher reward than the rejected one
for that user: ``r(u, chosen) > r(u, rejected)``; a tie counts as wrong (the model did not pick).
Figures reported for one split:

- ``accuracy`` and ``n_pairs`` over all pairs;
- ``by_kind``: common / controversial (paper Table 3), pairs whose kind is null are left out;
- ``by_group``: per true preference group (users' ``group``), where groups exist;
- ``per_user``: the distribution of per-user accuracy (mean, std, quantiles);
- ``minority``: users whose labels agree with the majority vote less than half the time
  (majority-vote accuracy < 0.5) and the model's accuracy on their pairs. The majority label of a
  pair (prompt, {a, b}) is the one most annotators gave it, counted over the reference
  annotations (train + test); pairs with a tied vote are left out of a user's majority-vote
  accuracy, and users with no such pair are not classified.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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


def _orientation(pairs: PairTable) -> tuple[np.ndarray, np.ndarray]:
    """Key of the unordered pair and +1/-1: +1 when the chosen id sorts first."""
    chosen, rejected = pairs.chosen_id.astype(str), pairs.rejected_id.astype(str)
    first = np.where(chosen < rejected, chosen, rejected)
    second = np.where(chosen < rejected, rejected, chosen)
    key = pairs.prompt_id.astype(str) + "\x1f" + first + "\x1f" + second
    return key, np.where(chosen < rejected, 1, -1)


def majority_vote_accuracy(pairs: PairTable, reference: PairTable) -> pd.Series:
    """Per user: fraction of their (non-tied) pairs whose label matches the majority of
    ``reference`` annotators. Index user_id; users without a decided pair are absent."""
    ref_key, ref_sign = _orientation(reference)
    vote = pd.Series(ref_sign).groupby(ref_key).sum()
    key, sign = _orientation(pairs)
    majority = vote.reindex(key).to_numpy()
    decided = np.nan_to_num(majority) != 0
    agree = np.sign(majority[decided]) == sign[decided]
    return pd.Series(agree).groupby(pairs.user_id[decided]).mean()


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
            "definition": "users whose majority-vote accuracy < 0.5",
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
