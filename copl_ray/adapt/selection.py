"""Choose adaptation's k (hops) and kappa on the new users' own few-shot pairs (2-fold cross-validation).

Eq. 11's two knobs depend on the data: k sets how many seen users are candidates (N+(k); on a
sparse survey 2 hops found ~24 users per new user, 4 hops ~490) and kappa how sharply the alignment
softmax picks among them (its input, a sum of log-sigmoids, scales with the embeddings' norms and
the number of annotations, so the paper's 0.07 is not scale-free). `jobs/adapt_users.py` picks
them per dataset, reading only ``fewshot``:

each user's few-shot rows are split into two folds by position (even / odd); every candidate adapts
from one fold and scores the other, then the reverse; the candidate with the best accuracy over
all held-out rows wins (ties: the first in grid order, which lists the paper's values first).
Users with one row appear in both adaptations with it and are never scored. ``test_unseen`` is not
read.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from copl_ray.adapt.core import AdaptParams, adapt_batch
from copl_ray.adapt.evaluation import first_n_rank, pair_correct

__all__ = ["candidate_params", "cross_validate"]


def candidate_params(base: AdaptParams, hops: list[int], kappas: list[float]) -> list[AdaptParams]:
    """``base`` with every (hops, kappa) of the grid; a key set explicitly on ``base`` stays."""
    hops = [base.hops] if "hops" in base.model_fields_set else hops
    kappas = [base.kappa] if "kappa" in base.model_fields_set else kappas
    return [base.model_copy(update={"hops": h, "kappa": k}) for h in hops for k in kappas]


def _folds(fewshot: pa.Table) -> np.ndarray:
    """[P] fold (0/1) of each row: position within its user's rows, mod 2; -1 for a user's only row."""
    rank = first_n_rank(fewshot)
    uid = fewshot.column("user_id").combine_chunks()
    codes = pc.index_in(uid, value_set=pc.unique(uid)).to_numpy(zero_copy_only=False)
    count = np.bincount(codes)[codes]
    return np.where(count >= 2, rank % 2, -1)


def cross_validate(art, fewshot: pa.Table, user_ids: pa.Array, candidates: list[AdaptParams],
                   max_users: int | None = None, seed: int = 0) -> list[dict]:
    """Held-out accuracy of each candidate: ``[{"hops", "kappa", "accuracy", "n_pairs"}]`` in order.

    Args:
        art: `GNNArtifacts`; fewshot: annotation rows of ``user_ids``; user_ids: [B] users.
        max_users: score at most this many users with two or more rows (a seeded sample), since each
            candidate adapts every one of them twice.
    """
    fold = _folds(fewshot)
    users = pc.unique(fewshot.column("user_id").combine_chunks())
    if max_users is not None:
        multi = pc.unique(fewshot.filter(pa.array(fold >= 0)).column("user_id").combine_chunks())
        if len(multi) > max_users:
            keep = np.random.default_rng(seed).choice(len(multi), max_users, replace=False)
            users = multi.take(pa.array(np.sort(keep)))
            mask = pc.is_in(fewshot.column("user_id"), value_set=users).to_numpy(zero_copy_only=False)
            fewshot, fold = fewshot.filter(pa.array(mask)), fold[mask]
    out = []
    for params in candidates:
        correct = []
        for held in (0, 1):
            given = fewshot.filter(pa.array(fold != held))
            scored = fewshot.filter(pa.array(fold == held))
            if scored.num_rows == 0:
                continue
            res = adapt_batch(art, given, params, user_ids=users)
            pu = pc.index_in(scored.column("user_id"), value_set=users).to_numpy(zero_copy_only=False)
            chosen = art.response_index(scored.column("chosen_id").to_pylist(), "chosen_id", "fewshot")
            rejected = art.response_index(scored.column("rejected_id").to_pylist(), "rejected_id", "fewshot")
            correct.append(pair_correct(res.embeddings, art.e_resp, pu.astype(np.int64), chosen, rejected))
        c = np.concatenate(correct) if correct else np.zeros(0)
        out.append({"hops": params.hops, "kappa": params.kappa,
                    "accuracy": float(c.mean()) if c.size else None, "n_pairs": int(c.size)})
    return out
