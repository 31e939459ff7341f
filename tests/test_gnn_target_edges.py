"""Target-edge masking (copl_ray.gnn.target_edges): a batch's own edges carry no message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from copl_ray.gnn.model import CoPLGNN, GNNConfig
from copl_ray.gnn.sampler import NeighborSampler, SignedEdges
from copl_ray.gnn.target_edges import mask_target_edges
from copl_ray.graph.signed_graph import SignedGraph

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _triples(seed=0, n_u=8, n_r=12, n=60):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_u, n)
    a = rng.integers(0, n_r, n)
    b = (a + rng.integers(1, n_r, n)) % n_r
    return u, a, b, n_u, n_r


def _dense(edges: SignedEdges, positive: bool, to: str, n_u: int, n_r: int) -> torch.Tensor:
    return edges.adjacency(positive, to, n_u, n_r).csr.to_dense()


def test_masked_edges_carry_nothing_and_others_keep_their_weight():
    u, a, b, n_u, n_r = _triples()
    g = SignedGraph.from_triples(u, a, b, n_u, n_r)
    full = SignedEdges.from_graph(g)
    bu, ba, bb = (torch.from_numpy(x[:5]) for x in (u, a, b))
    masked = mask_target_edges(full, n_r, bu, ba, bb)
    for positive, other in ((True, ba), (False, bb)):
        ref_user = _dense(full, positive, "user", n_u, n_r).clone()
        ref_user[bu, other] = 0.0  # exactly the batch's edges of this sign, nothing else
        torch.testing.assert_close(_dense(masked, positive, "user", n_u, n_r), ref_user)
        torch.testing.assert_close(_dense(masked, positive, "resp", n_u, n_r), ref_user.T)


def test_masking_removes_the_scored_users_own_embedding_from_the_chosen_response():
    """With the mask, s_{u,a} does not depend on e_u^(0) through the edge (u, a): a one-layer GNN
    with no other path from u to a gives a zero gradient, and a nonzero one without the mask."""
    u = np.array([0, 1]); a = np.array([0, 2]); b = np.array([1, 3])
    g = SignedGraph.from_triples(u, a, b, 2, 4)
    model = CoPLGNN(GNNConfig(n_users=2, n_responses=4, dim=4, num_layers=1))
    edges = SignedEdges.from_graph(g)
    grads = {}
    for name, e in (("full", edges), ("masked", mask_target_edges(edges, 4, *(torch.tensor(x[:1]) for x in (u, a, b))))):
        model.zero_grad()
        e_u, e_r = model(e)
        (e_r[0] @ torch.ones(4)).backward()  # response 0's final embedding only
        grads[name] = model.user_emb.weight.grad[0].abs().sum().item()
    assert grads["full"] > 0 and grads["masked"] == 0.0


def test_sampled_subgraph_masking_uses_local_ids():
    u, a, b, n_u, n_r = _triples(1)
    g = SignedGraph.from_triples(u, a, b, n_u, n_r)
    sampler = NeighborSampler(g, [50, 50], seed=0)
    bu, ba, bb = (torch.from_numpy(x[:6]) for x in (u, a, b))
    seed_u, inv_u = torch.unique(bu, return_inverse=True)
    seed_r, inv_r = torch.unique(torch.cat([ba, bb]), return_inverse=True)
    sub = sampler.sample(seed_u, seed_r)
    nr = len(sub.resp_nodes)
    masked = mask_target_edges(sub.edges, nr, inv_u, inv_r[:6], inv_r[6:])
    # Global (user, response) of every edge that still carries a message towards either side.
    for positive, targets in ((True, set(zip(bu.tolist(), ba.tolist()))), (False, set(zip(bu.tolist(), bb.tolist())))):
        eu = masked.pos_user if positive else masked.neg_user
        er = masked.pos_resp if positive else masked.neg_resp
        w = masked.pos_norm if positive else masked.neg_norm
        w_r = masked.pos_norm_to_resp if positive else masked.neg_norm_to_resp
        live = (w != 0) | (w_r != 0)
        kept = set(zip(sub.user_nodes[eu[live]].tolist(), sub.resp_nodes[er[live]].tolist()))
        assert not kept & targets
        # and the sampler did find some of them (fan-out 50 keeps every neighbour of this tiny graph)
        found = set(zip(sub.user_nodes[eu].tolist(), sub.resp_nodes[er].tolist()))
        assert targets <= found
    # The same mask from global ids through the subgraph's node maps (what the trainer passes).
    by_global = mask_target_edges(sub.edges, n_r, bu, ba, bb, user_nodes=sub.user_nodes, resp_nodes=sub.resp_nodes)
    for name in ("pos_norm", "neg_norm", "pos_norm_to_resp", "neg_norm_to_resp"):
        torch.testing.assert_close(getattr(by_global, name), getattr(masked, name))


@pytest.mark.parametrize("overrides, expected", [
    ({}, True),                                    # job default: propagation-only layer, masked
    ({"transform": True, "activation": True}, False),  # Eq. 2-3: masking measured to hurt
    ({"transform": True, "exclude_target_edges": True}, True),  # explicit choice wins
    ({"model": "uniform"}, False),                 # baselines have no message passing
])
def test_train_config_resolves_target_edge_masking(overrides, expected):
    from copl_ray.gnn.train import TrainGNNConfig

    cfg = TrainGNNConfig(dataset="d", output_dir="o", **overrides)
    assert cfg.exclude_target_edges is expected
