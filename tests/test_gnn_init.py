"""GNN initialisations: ``weight_init="identity"`` starts the paper layer as signed propagation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from copl_ray.gnn.layers import SignedBipartiteConv
from copl_ray.gnn.model import CoPLGNN, GNNConfig
from copl_ray.gnn.sampler import SignedEdges
from copl_ray.graph.signed_graph import SignedGraph

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _edges(seed=0, n_u=7, n_r=9, n=40) -> SignedEdges:
    rng = np.random.default_rng(seed)
    u, a = rng.integers(0, n_u, n), rng.integers(0, n_r, n)
    b = (a + rng.integers(1, n_r, n)) % n_r
    return SignedEdges.from_graph(SignedGraph.from_triples(u, a, b, n_u, n_r))


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_identity_init_equals_the_no_transform_layer(variant):
    torch.manual_seed(0)
    edges, e_u, e_r = _edges(), torch.randn(7, 5), torch.randn(9, 5)
    ident = SignedBipartiteConv(5, activation=False, variant=variant, weight_init="identity")
    plain = SignedBipartiteConv(5, activation=False, transform=False)
    for got, want in zip(ident(e_u, e_r, edges), plain(e_u, e_r, edges)):
        torch.testing.assert_close(got, want)


def test_identity_init_is_not_a_dead_start():
    """W2/W4 start at zero but get gradients; the model still trains every matrix."""
    torch.manual_seed(0)
    model = CoPLGNN(GNNConfig(n_users=7, n_responses=9, dim=4, num_layers=2, weight_init="identity"))
    e_u, e_r = model(_edges())
    (e_u.sum() * e_r.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_unknown_weight_init_is_rejected():
    with pytest.raises(ValueError, match="weight_init"):
        SignedBipartiteConv(4, weight_init="orthogonal")
