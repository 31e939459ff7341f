"""Alignment scores, softmax weights and the weighted embedding of Eq. 11 (paper Section 4.3).

For an unseen user u* with annotated pairs D_{u*} = {(a > b)} and a candidate neighbour u:

    gamma(u, u*) = sum_{(a > b) in D_{u*}} log sigma(s_{u,a} - s_{u,b}),   s_{u,r} = e_u . e_r
    w(u, u*)     = softmax over u in N+_{u*}(k) of gamma(u, u*) / kappa
    e_{u*}       = sum_u w(u, u*) e_u

Only the final GNN embeddings are needed: with Delta_p = e_a - e_b per pair, gamma is
``logsigmoid(E_nbr @ Delta^T).sum(1)``. The batch path evaluates the (neighbour, pair) products of
all users as one flat gather in bounded chunks (memory ``chunk_elems`` floats), then segment
softmax / segment sums with ``scatter_reduce`` / ``index_add``; no Python loop per user.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["gamma_one", "weights_one", "aggregate_one", "gamma_batch", "segment_softmax", "aggregate_batch"]


# ----------------------------------------------------------------------------- one user


def gamma_one(e_nbr: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """gamma of each neighbour.

    Args:
        e_nbr: [N, d] neighbour embeddings; delta: [P, d] e_chosen - e_rejected per pair.
    Returns:
        [N] float32 (0 for every neighbour when P = 0).
    """
    return F.logsigmoid(e_nbr @ delta.T).sum(1)


def weights_one(gamma: torch.Tensor, kappa: float) -> torch.Tensor:
    """softmax(gamma / kappa) over the N neighbours, [N]."""
    return torch.softmax(gamma / kappa, dim=0)


def aggregate_one(e_nbr: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_u w_u e_u: [N, d], [N] -> [d]."""
    return w @ e_nbr


# ----------------------------------------------------------------------------- batch


def gamma_batch(e_user: torch.Tensor, nbr_indptr: np.ndarray, nbr_users: np.ndarray,
                delta: torch.Tensor, pair_indptr: np.ndarray, chunk_elems: int = 1 << 24) -> torch.Tensor:
    """gamma of every (user, neighbour) entry of a batch.

    Args:
        e_user: [U, d] seen users' embeddings.
        nbr_indptr: [B + 1], nbr_users: [M] CSR of the neighbour sets (batch user b owns entries
            ``nbr_indptr[b]:nbr_indptr[b+1]``).
        delta: [P, d] e_chosen - e_rejected of the batch's pairs, grouped by user along
            ``pair_indptr`` [B + 1].
        chunk_elems: floats held at once by the gathered (entry, pair) products.
    Returns:
        [M] float32 gamma per neighbour entry.
    """
    n_per = np.diff(nbr_indptr)
    owner = np.repeat(np.arange(len(n_per)), n_per)              # [M] batch user of each entry
    p_count = np.diff(pair_indptr)[owner]                        # [M] pairs to score per entry
    gamma = torch.zeros(len(nbr_users), dtype=torch.float32)
    d = e_user.shape[1]
    # Chunk boundaries over entries so each chunk expands to about chunk_elems / d products.
    cum = np.cumsum(p_count)
    budget = max(1, chunk_elems // max(d, 1))
    start = 0
    while start < len(nbr_users):
        base = cum[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(cum, base + budget, side="right")))
        stop = min(stop, len(nbr_users))
        cnt = p_count[start:stop]
        total = int(cnt.sum())
        if total:
            local = np.repeat(np.arange(stop - start), cnt)       # entry (chunk-local) of each product
            within = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            pair = pair_indptr[owner[start:stop]][local] + within
            eu = e_user[torch.from_numpy(nbr_users[start:stop][local])]
            vals = F.logsigmoid((eu * delta[torch.from_numpy(pair)]).sum(-1))
            gamma[start:stop] = torch.zeros(stop - start).index_add_(0, torch.from_numpy(local), vals)
        start = stop
    return gamma


def segment_softmax(scores: torch.Tensor, indptr: np.ndarray) -> torch.Tensor:
    """Softmax of ``scores [M]`` within each CSR segment of ``indptr [B + 1]`` (empty ones allowed)."""
    n_seg = len(indptr) - 1
    seg = torch.from_numpy(np.repeat(np.arange(n_seg), np.diff(indptr)))
    top = torch.full((n_seg,), -torch.inf).scatter_reduce_(0, seg, scores, "amax", include_self=True)
    ex = torch.exp(scores - top[seg])  # max-shift: gamma / 0.07 overflows exp otherwise
    total = torch.zeros(n_seg).index_add_(0, seg, ex)
    return ex / total[seg]


def aggregate_batch(e_user: torch.Tensor, nbr_indptr: np.ndarray, nbr_users: np.ndarray,
                    w: torch.Tensor) -> torch.Tensor:
    """Per batch user sum_u w_u e_u: returns [B, d] (zero rows for empty segments)."""
    n_seg = len(nbr_indptr) - 1
    seg = torch.from_numpy(np.repeat(np.arange(n_seg), np.diff(nbr_indptr)))
    out = torch.zeros(n_seg, e_user.shape[1])
    return out.index_add_(0, seg, e_user[torch.from_numpy(nbr_users)] * w[:, None])
