"""Alignment scores, softmax weights and the weighted embedding of Eq. 11 (paper Section 4.3).

For an unseen user u* with annotated pairs D_{u*} = {(a > b)} and a candidate neighbour u:

    gamma(u, u*) = sum_{(a > b) in D_{u*}} log sigma(s_{u,a} - s_{u,b}),   s_{u,r} = e_u . e_r
    w(u, u*)     = softmax over u in N+_{u*}(k) of gamma(u, u*) / kappa
    e_{u*}       = sum_u w(u, u*) e_u

Only the final GNN embeddings are needed: with Delta_p = e_a - e_b per pair, gamma is
``logsigmoid(E_nbr @ Delta^T).sum(1)``. The batch path evaluates the (neighbour, pair) products of
blocks of users as padded batched matrix products (``bmm``, bounded memory), then segment
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
                delta: torch.Tensor, pair_indptr: np.ndarray, chunk_elems: int = 1 << 23) -> torch.Tensor:
    """gamma of every (user, neighbour) entry of a batch.

    Users are sorted by neighbour count and cut into blocks; each block is one padded ``bmm``
    ``[b, N_max, d] @ [b, d, P_max]`` (users of similar N share a block, so padding stays small),
    holding about ``chunk_elems`` floats at once.

    Args:
        e_user: [U, d] seen users' embeddings.
        nbr_indptr: [B + 1], nbr_users: [M] CSR of the neighbour sets (batch user b owns entries
            ``nbr_indptr[b]:nbr_indptr[b+1]``).
        delta: [P, d] e_chosen - e_rejected of the batch's pairs, grouped by user along
            ``pair_indptr`` [B + 1].
    Returns:
        [M] float32 gamma per neighbour entry.
    """
    n_nbr, n_pair = np.diff(nbr_indptr), np.diff(pair_indptr)
    gamma = torch.zeros(len(nbr_users), dtype=torch.float32)
    d = e_user.shape[1]
    order = np.argsort(n_nbr, kind="stable")
    order = order[n_nbr[order] > 0]
    if order.size == 0:
        return gamma
    p_max = int(n_pair[order].max())
    cost = n_nbr[order] * (d + p_max + 1)  # floats per user when padded to its own N (ascending)
    i = 0
    while i < order.size:
        ks = np.arange(i + 1, order.size + 1)
        fits = (ks - i) * cost[ks - 1] <= chunk_elems
        k = int(ks[fits][-1]) if fits.any() else i + 1
        blk = order[i:k]
        nm, pm = int(n_nbr[blk].max()), int(n_pair[blk].max())
        nmask = np.arange(nm)[None, :] < n_nbr[blk][:, None]                      # [b, nm]
        npos = np.where(nmask, nbr_indptr[blk][:, None] + np.arange(nm)[None, :], 0)
        e = e_user[torch.from_numpy(np.where(nmask, nbr_users[npos], 0))]          # [b, nm, d]
        pmask = np.arange(pm)[None, :] < n_pair[blk][:, None]                      # [b, pm]
        ppos = np.where(pmask, pair_indptr[blk][:, None] + np.arange(pm)[None, :], 0)
        dl = delta[torch.from_numpy(ppos)] * torch.from_numpy(pmask)[..., None]    # [b, pm, d]
        ls = F.logsigmoid(torch.bmm(e, dl.transpose(1, 2)))                        # [b, nm, pm]
        g = (ls * torch.from_numpy(pmask)[:, None, :]).sum(-1)                     # [b, nm]
        gamma[torch.from_numpy(npos[nmask])] = g[torch.from_numpy(nmask)]
        i = k
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
                    w: torch.Tensor, chunk_elems: int = 1 << 23) -> torch.Tensor:
    """Per batch user sum_u w_u e_u: returns [B, d] (zero rows for empty segments). Entries are
    gathered ``chunk_elems / d`` at a time (a 1M-user graph gives ~6.5k neighbours per user)."""
    n_seg = len(nbr_indptr) - 1
    seg = torch.from_numpy(np.repeat(np.arange(n_seg), np.diff(nbr_indptr)))
    out = torch.zeros(n_seg, e_user.shape[1])
    step = max(1, chunk_elems // max(1, e_user.shape[1]))
    for s in range(0, len(nbr_users), step):
        rows = e_user[torch.from_numpy(nbr_users[s:s + step])] * w[s:s + step, None]
        out.index_add_(0, seg[s:s + step], rows)
    return out
