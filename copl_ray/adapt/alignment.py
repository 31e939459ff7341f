"""Alignment scores, softmax weights and the weighted embedding of Eq. 11 (paper Section 4.3).

For an unseen user u* with annotated pairs D_{u*} = {(a > b)} and a candidate neighbour u:

    gamma(u, u*) = sum_{(a > b) in D_{u*}} log sigma(s_{u,a} - s_{u,b}),   s_{u,r} = e_u . e_r
    w(u, u*)     = softmax over u in N+_{u*}(k) of gamma(u, u*) / kappa
    e_{u*}       = sum_u w(u, u*) e_u

Only the final GNN embeddings are needed: with Delta_p = e_a - e_b per pair, gamma is
``logsigmoid(E_nbr @ Delta^T).sum(1)``. The batch path (`align_batch`) does gamma, the softmax and
the weighted sum for blocks of users as padded batched matrix products (``bmm``, bounded memory,
each neighbour embedding gathered once); no Python loop per user.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["gamma_one", "weights_one", "aggregate_one", "align_batch"]


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


def align_batch(e_user: torch.Tensor, nbr_indptr: np.ndarray, nbr_users: np.ndarray,
                delta: torch.Tensor, pair_indptr: np.ndarray, kappa: float, uniform: bool = False,
                chunk_elems: int = 1 << 23) -> torch.Tensor:
    """Eq. 11 for every user of a batch: gamma, softmax(gamma / kappa) and the weighted sum, fused.

    Users are sorted by neighbour count and cut into blocks; each block gathers its neighbours'
    embeddings once into a padded ``[b, N_max, d]`` tensor and does everything with batched
    matrix products (users of similar N share a block, so padding stays small), holding about
    ``chunk_elems`` floats at once. No Python loop per user.

    Args:
        e_user: [U, d] seen users' embeddings.
        nbr_indptr: [B + 1], nbr_users: [M] CSR of the neighbour sets.
        delta: [P, d] e_chosen - e_rejected of the batch's pairs, grouped by user along
            ``pair_indptr`` [B + 1].
        uniform: equal weights 1/N instead of the softmax (Naive Avg).
    Returns:
        [B, d] embeddings (zero rows for users without neighbours).
    """
    n_nbr, n_pair = np.diff(nbr_indptr), np.diff(pair_indptr)
    d = e_user.shape[1]
    out = torch.zeros(len(n_nbr), d)
    order = np.argsort(n_nbr, kind="stable")
    order = order[n_nbr[order] > 0]
    if order.size == 0:
        return out
    p_max = int(n_pair[order].max())
    cost = n_nbr[order] * (2 * d + p_max + 1)  # floats per user padded to its own N (ascending)
    i = 0
    while i < order.size:
        ks = np.arange(i + 1, order.size + 1)
        fits = (ks - i) * cost[ks - 1] <= chunk_elems
        k = int(ks[fits][-1]) if fits.any() else i + 1
        blk = order[i:k]
        nm, pm = int(n_nbr[blk].max()), int(n_pair[blk].max())
        nmask = torch.from_numpy(np.arange(nm)[None, :] < n_nbr[blk][:, None])             # [b, nm]
        npos = np.minimum(nbr_indptr[blk][:, None] + np.arange(nm)[None, :], len(nbr_users) - 1)
        # index_select on a flat index: ~4x faster than advanced indexing with a 2-D index (measured)
        e = e_user.index_select(0, torch.from_numpy(nbr_users[npos].reshape(-1))).view(len(blk), nm, d)
        if uniform:
            logits = torch.zeros(len(blk), nm)
        else:
            pmask = torch.from_numpy(np.arange(pm)[None, :] < n_pair[blk][:, None])         # [b, pm]
            ppos = np.minimum(pair_indptr[blk][:, None] + np.arange(pm)[None, :], len(delta) - 1)
            dl = delta.index_select(0, torch.from_numpy(ppos.reshape(-1))).view(len(blk), pm, d)
            dl = dl * pmask[..., None]                                                   # [b, pm, d]
            ls = F.logsigmoid(torch.bmm(e, dl.transpose(1, 2)))                          # [b, nm, pm]
            logits = (ls * pmask[:, None, :]).sum(-1) / kappa                            # gamma / kappa
        w = torch.softmax(logits.masked_fill(~nmask, -torch.inf), dim=1)                 # [b, nm]
        out[torch.from_numpy(blk)] = torch.bmm(w[:, None, :], e)[:, 0]
        i = k
    return out
