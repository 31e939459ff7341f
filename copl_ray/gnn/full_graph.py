"""Full-graph propagation for training: adjacencies built once, a batch's own edges masked cheaply.

``mode=full`` computes every user's and response's final embedding at every step (the official
code's way, LightGCN's). Each step must also keep the batch's own edges out of the messages
(`copl_ray.gnn.target_edges`), and the generic `mask_target_edges` does that by building a new
edge list whose sparse matrices are then sorted and built afresh: at a million users ~5 s per step
(`jobs/bench_spmm.py`: CSR build 4.9 s), more than the products themselves.

`FullGraph` builds the four CSR matrices (two signs x two message directions) once, remembers
where every edge sits in each of them, and per step returns a `MaskedView` that shares their
structure (row pointers, column indices) and carries fresh weight vectors with the batch's edges
set to 0: a copy of the weights (O(E) floats, no sort) plus a binary search per triple. The
result equals `mask_target_edges` (``tests/test_full_graph.py``): same edges, same degree
normalisation (masked edges get weight 0; the others keep the full graph's alpha / beta).

Only full-graph, symmetric weights (alpha_{u,r} in both directions, as `SignedEdges.from_graph`
gives); sampled subgraphs keep using `mask_target_edges`.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from copl_ray.gnn.sampler import SignedEdges
from copl_ray.gnn.sparse import Adjacency, row_major_order

__all__ = ["FullGraph", "MaskedView"]


def _csr_tensor(crow: Tensor, col: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, vals, shape)


class _Sign:
    """One sign's edges as two CSR structures: users <- responses and responses <- users.

    ``keys [E]`` (user * n_resps + resp, ascending) locate an edge by binary search; its weight is
    ``vals_u[i]`` in the user-side matrix (row-major = key order) and ``vals_r[pos_r[i]]`` in the
    response-side one.
    """

    def __init__(self, user: Tensor, resp: Tensor, norm: Tensor, n_users: int, n_resps: int):
        self.shape = (n_users, n_resps)
        order = row_major_order(user, resp, n_resps)
        user, resp, norm = user[order], resp[order], norm[order]
        self.keys = user * n_resps + resp
        self.crow_u = _crow(user, n_users)
        self.col_u = resp
        self.vals_u = norm.float().contiguous()
        by_resp = row_major_order(resp, user, n_users)
        self.crow_r = _crow(resp[by_resp], n_resps)
        self.col_r = user[by_resp]
        self.vals_r = self.vals_u[by_resp]
        self.pos_r = torch.empty_like(by_resp)
        self.pos_r[by_resp] = torch.arange(by_resp.numel(), device=by_resp.device)

    def edge_index(self, user: Tensor, resp: Tensor) -> Tensor:
        """Index (in key order) of each (user, resp) edge present in the graph; absent pairs dropped."""
        if self.keys.numel() == 0 or user.numel() == 0:
            return self.keys.new_empty(0)
        query = user * self.shape[1] + resp
        at = torch.searchsorted(self.keys, query).clamp_(max=self.keys.numel() - 1)
        return at[self.keys[at] == query]

    def adjacencies(self, masked: Tensor | None) -> tuple[Adjacency, Adjacency]:
        """(A users <- responses, its transpose), with the edges ``masked`` (key order) weighted 0."""
        vu, vr = self.vals_u, self.vals_r
        if masked is not None and masked.numel():
            vu = vu.index_fill(0, masked, 0.0)
            vr = vr.index_fill(0, self.pos_r[masked], 0.0)
        n_u, n_r = self.shape
        to_user = Adjacency.from_csr(_csr_tensor(self.crow_u, self.col_u, vu, (n_u, n_r)))
        to_resp = Adjacency.from_csr(_csr_tensor(self.crow_r, self.col_r, vr, (n_r, n_u)), transpose=to_user)
        to_user.set_transpose(to_resp)
        return to_user, to_resp


def _crow(sorted_rows: Tensor, n_rows: int) -> Tensor:
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=sorted_rows.device)
    torch.cumsum(torch.bincount(sorted_rows, minlength=n_rows), 0, out=crow[1:])
    return crow


class MaskedView:
    """The full graph for one step: what `CoPLGNN.forward` reads (``adjacency``, hop sizes None)."""

    user_hops = resp_hops = None

    def __init__(self, adjacencies: dict, n_users: int, n_resps: int):
        self._adj = adjacencies
        self._shape = (n_users, n_resps)

    def adjacency(self, positive: bool, to: str, n_users: int, n_resps: int, n_out: int | None = None) -> Adjacency:
        if (n_users, n_resps) != self._shape or n_out is not None:
            raise ValueError(f"full-graph view of {self._shape} users/responses asked for ({n_users}, {n_resps})"
                             f" with n_out={n_out}")
        return self._adj[(positive, to)]


class FullGraph:
    """The full signed graph's sparse matrices, built once; `view` masks a batch's edges.

    Args:
        edges: `SignedEdges.from_graph(graph)` on the training device (symmetric weights).
        n_users, n_resps: table sizes.
    """

    def __init__(self, edges: SignedEdges, n_users: int, n_resps: int):
        if edges.pos_norm_to_resp is not None or edges.neg_norm_to_resp is not None:
            raise ValueError("FullGraph needs the full graph's symmetric weights (SignedEdges.from_graph)")
        self.n_users, self.n_resps = int(n_users), int(n_resps)
        self._signs = {True: _Sign(edges.pos_user, edges.pos_resp, edges.pos_norm, self.n_users, self.n_resps),
                       False: _Sign(edges.neg_user, edges.neg_resp, edges.neg_norm, self.n_users, self.n_resps)}
        self._unmasked: MaskedView | None = None

    def view(self, user: Tensor | None = None, chosen: Tensor | None = None,
             rejected: Tensor | None = None) -> MaskedView:
        """The graph with the triples' edges masked: (user, chosen) positive and (user, rejected)
        negative get weight 0 in both directions. ``user``, ``chosen``, ``rejected``: [B] global
        ids on the graph's device; None: nothing masked (cached)."""
        if user is None:
            if self._unmasked is None:
                self._unmasked = self._make(None, None)
            return self._unmasked
        return self._make(self._signs[True].edge_index(user, chosen),
                          self._signs[False].edge_index(user, rejected))

    def _make(self, pos_masked: Tensor | None, neg_masked: Tensor | None) -> MaskedView:
        adj = {}
        for positive, masked in ((True, pos_masked), (False, neg_masked)):
            adj[(positive, "user")], adj[(positive, "resp")] = self._signs[positive].adjacencies(masked)
        return MaskedView(adj, self.n_users, self.n_resps)
