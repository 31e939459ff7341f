"""Active survey selection (beyond the paper; its limitations section: adaptation degrades when a
new user's pairs are mostly common pairs, on which every neighbour agrees and gamma separates
nobody).

Given the answers so far, pick the next pairs on which the currently weighted candidate
neighbours disagree most, so that the answer moves the weights of Eq. 11 the most:

    p_{u,c} = sigma(s_{u,a_c} - s_{u,b_c})                    neighbour u's predicted P(a_c > b_c)
    score_c = sum_u w_u (p_{u,c} - sum_v w_v p_{v,c})^2       weighted variance over neighbours

The neighbours and weights are those of `copl_ray.adapt.core.adapt_one` (k-hop set, gamma from
the answers so far) recomputed at ``selection_kappa`` (default 1.0, softer than the 0.07 used for
the embedding: with a sharp softmax a handful of users take all the weight after one answer, and
their agreement would hide the disagreement of the rest of the neighbourhood). Before the first
answer, the fixed global sample of seen users stands in with uniform weights (the most divisive
pairs of the whole population). Only the ``top_neighbors`` heaviest neighbours are scored, and
candidates whose two responses have no positive edge are skipped (an answer on them reaches
nobody through N+(k)).
"""

from __future__ import annotations

import numpy as np
import torch

from copl_ray.adapt import alignment as al
from copl_ray.adapt.artifacts import GNNArtifacts
from copl_ray.adapt.core import AdaptParams, _column, adapt_one

__all__ = ["disagreement_scores", "select_next_pairs"]


def disagreement_scores(e_nbr: torch.Tensor, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Weighted variance of the neighbours' predicted preference on each candidate.

    Args:
        e_nbr: [N, d] neighbour embeddings; w: [N] weights summing to 1; delta: [C, d] e_a - e_b.
    Returns:
        [C] float32 scores (0 where every neighbour agrees).
    """
    p = torch.sigmoid(e_nbr @ delta.T)          # [N, C]
    mean = w @ p                                 # [C]
    return w @ (p - mean).pow(2)


def select_next_pairs(art: GNNArtifacts, answers, cand_a: np.ndarray, cand_b: np.ndarray, n: int = 1,
                      asked: np.ndarray | None = None, params: AdaptParams | None = None,
                      selection_kappa: float = 1.0, top_neighbors: int = 512) -> np.ndarray:
    """Indices (into the candidates) of the ``n`` pairs to ask next.

    Args:
        answers: the user's annotations so far (``chosen_id``, ``rejected_id``; may be empty).
        cand_a, cand_b: [C] dense response indices of the candidate pairs (unordered).
        asked: [C] bool, candidates already asked (never returned again).
    Returns:
        [min(n, available)] int64 candidate indices, most divisive first.
    """
    p = params or AdaptParams()
    res = adapt_one(art, answers, p)
    if res.resolution == "population_mean":
        nbrs = art.users_by_priority(min(p.global_sample_size, art.n_users))
        w = torch.full((len(nbrs),), 1.0 / len(nbrs))
    else:
        nbrs = res.neighbors
        e_nbr = art.e_user[torch.from_numpy(nbrs)]
        if p.weighting == "alignment" and res.n_annotations:
            chosen = art.response_index(_column(answers, "chosen_id"))
            rejected = art.response_index(_column(answers, "rejected_id"))
            delta = art.e_resp[torch.from_numpy(chosen)] - art.e_resp[torch.from_numpy(rejected)]
            w = al.weights_one(al.gamma_one(e_nbr, delta), selection_kappa)
        else:
            w = torch.full((len(nbrs),), 1.0 / len(nbrs))
    if len(nbrs) > top_neighbors:
        top = torch.topk(w, top_neighbors).indices
        nbrs, w = nbrs[top.numpy()], w[top] / w[top].sum()
    deg = np.diff(art.resp_users_indptr)
    ok = (deg[cand_a] > 0) & (deg[cand_b] > 0)
    if asked is not None:
        ok &= ~asked
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return np.empty(0, dtype=np.int64)
    delta = art.e_resp[torch.from_numpy(cand_a[idx])] - art.e_resp[torch.from_numpy(cand_b[idx])]
    scores = disagreement_scores(art.e_user[torch.from_numpy(nbrs)], w, delta)
    k = min(n, idx.size)
    return idx[torch.topk(scores, k).indices.numpy()]
