"""Keep a batch's own edges out of the messages that score it (target-edge masking).

A training triple (u, a, b) is also two edges of the graph: (u, a) positive and (u, b) negative.
If they carry messages while the triple is scored, e_a^(L) contains u's own embedding (and e_u^(L)
contains a's), so the BTL loss is met by the pair's own edge: s_{u,a} grows with ||e_u||^2 and the
model learns "a response u chose holds u's ID" instead of who else agrees with u. Held-out and test
pairs never have that edge, so this is a train/test mismatch (label leakage, in link-prediction
terms; PyG's ``RandomLinkSplit(disjoint_train_ratio=...)`` avoids it by splitting message and
supervision edges). Here every edge is both: it is removed only while its own triple is scored.

Measured (withheld pairs, `jobs/bench_gnn_variants.py`): docs/ARCHITECTURE.md, "GNN defaults".

This departs from the paper (whose Eq. 5 scores the training pairs over the whole graph); it is
``exclude_target_edges`` in `TrainGNNConfig`, and evaluation/export always use the full graph.

The degree normalisations alpha/beta stay those of the full graph (a masked edge gets weight 0,
the others keep theirs): one edge of a node's |N| changes the scale of its sum by 1/|N| at most.
"""

from __future__ import annotations

import torch
from torch import Tensor

from copl_ray.gnn.sampler import SignedEdges

__all__ = ["mask_target_edges"]


def _hits(edge_user: Tensor, edge_resp: Tensor, user: Tensor, resp: Tensor, n_resp: int) -> Tensor:
    """[E] bool: edge (edge_user, edge_resp) is one of the (user, resp) pairs."""
    if edge_user.numel() == 0 or user.numel() == 0:
        return torch.zeros(edge_user.shape, dtype=torch.bool, device=edge_user.device)
    # Binary search in the sorted batch keys: about half of torch.isin's time on a 1M-user
    # sampled step (600k edges vs 1k keys; 45 -> 18 ms measured, one thread).
    keys = torch.sort(user * n_resp + resp).values
    query = edge_user * n_resp + edge_resp
    at = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return keys[at] == query


def mask_target_edges(edges: SignedEdges, n_resp: int, user: Tensor, chosen: Tensor, rejected: Tensor,
                      user_nodes: Tensor | None = None, resp_nodes: Tensor | None = None) -> SignedEdges:
    """``edges`` without the batch's own edges: (user, chosen) positive and (user, rejected)
    negative get weight 0 in both message directions.

    Args:
        edges: full-graph or sampled `SignedEdges`.
        n_resp: number of responses the response ids index (any upper bound works).
        user, chosen, rejected: [B] ids of the batch's triples, on ``edges``' device: global ids
            when ``user_nodes``/``resp_nodes`` are given, else the ids ``edges`` uses.
        user_nodes, resp_nodes: a sampled subgraph's local -> global id maps (`Subgraph`).
    Returns:
        a new `SignedEdges` (fresh adjacency cache) sharing the index tensors; weights copied.
    """
    to_global = lambda ids, nodes: ids if nodes is None else nodes[ids]  # noqa: E731
    pos_u, pos_r = to_global(edges.pos_user, user_nodes), to_global(edges.pos_resp, resp_nodes)
    neg_u, neg_r = to_global(edges.neg_user, user_nodes), to_global(edges.neg_resp, resp_nodes)
    pos_hit = _hits(pos_u, pos_r, user, chosen, n_resp)
    neg_hit = _hits(neg_u, neg_r, user, rejected, n_resp)

    def zeroed(w: Tensor | None, fallback: Tensor, hit: Tensor) -> Tensor:
        return (fallback if w is None else w).masked_fill(hit, 0.0)

    return SignedEdges(
        edges.pos_user, edges.pos_resp, edges.pos_norm.masked_fill(pos_hit, 0.0),
        edges.neg_user, edges.neg_resp, edges.neg_norm.masked_fill(neg_hit, 0.0),
        pos_norm_to_resp=zeroed(edges.pos_norm_to_resp, edges.pos_norm, pos_hit),
        neg_norm_to_resp=zeroed(edges.neg_norm_to_resp, edges.neg_norm, neg_hit),
        user_hops=edges.user_hops, resp_hops=edges.resp_hops)
