"""FullGraph (copl_ray.gnn.full_graph): prebuilt full-graph matrices, a batch's edges masked per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from copl_ray.gnn.full_graph import FullGraph
from copl_ray.gnn.model import CoPLGNN, GNNConfig
from copl_ray.gnn.sampler import SignedEdges
from copl_ray.gnn.target_edges import mask_target_edges
from copl_ray.graph.signed_graph import SignedGraph

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _graph(seed=0, n_u=9, n_r=14, n=80):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_u, n)
    a = rng.integers(0, n_r, n)
    b = (a + rng.integers(1, n_r, n)) % n_r
    return SignedGraph.from_triples(u, a, b, n_u, n_r), (u, a, b)


@pytest.mark.parametrize("n_batch", [0, 1, 7, 80])
def test_view_equals_mask_target_edges_in_every_matrix(n_batch):
    g, (u, a, b) = _graph()
    edges = SignedEdges.from_graph(g)
    full = FullGraph(edges, g.n_users, g.n_responses)
    bu, ba, bb = (torch.from_numpy(x[:n_batch]) for x in (u, a, b))
    view = full.view(bu, ba, bb)
    ref = mask_target_edges(edges, g.n_responses, bu, ba, bb)
    for positive in (True, False):
        for to in ("user", "resp"):
            got = view.adjacency(positive, to, g.n_users, g.n_responses)
            want = ref.adjacency(positive, to, g.n_users, g.n_responses)
            torch.testing.assert_close(got.csr.to_dense(), want.csr.to_dense())
            # the backward's matrix is this one's transpose, masked alike
            torch.testing.assert_close(got.t().csr.to_dense(), want.csr.to_dense().T)


def test_a_view_leaves_the_shared_weights_and_later_views_untouched():
    g, (u, a, b) = _graph(1)
    edges = SignedEdges.from_graph(g)
    full = FullGraph(edges, g.n_users, g.n_responses)
    before = full.view().adjacency(True, "user", g.n_users, g.n_responses).csr.to_dense().clone()
    full.view(*(torch.from_numpy(x[:20]) for x in (u, a, b)))
    after = full.view(*(torch.from_numpy(x[:0]) for x in (u, a, b)))
    torch.testing.assert_close(after.adjacency(True, "user", g.n_users, g.n_responses).csr.to_dense(), before)
    torch.testing.assert_close(full.view().adjacency(True, "user", g.n_users, g.n_responses).csr.to_dense(), before)


def test_model_forward_and_gradients_match_the_masked_edge_list():
    g, (u, a, b) = _graph(2)
    edges = SignedEdges.from_graph(g)
    full = FullGraph(edges, g.n_users, g.n_responses)
    batch = [torch.from_numpy(x[:16]) for x in (u, a, b)]
    grads = []
    for e in (full.view(*batch), mask_target_edges(edges, g.n_responses, *batch)):
        torch.manual_seed(0)
        model = CoPLGNN(GNNConfig(n_users=g.n_users, n_responses=g.n_responses, dim=6, num_layers=2,
                                  transform=False, activation=False))
        eu, er = model(e)
        ((eu[batch[0]] * (er[batch[1]] - er[batch[2]])).sum()).backward()
        grads.append((model.user_emb.weight.grad.clone(), model.resp_emb.weight.grad.clone()))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


def test_pairs_that_are_not_edges_are_ignored_and_sampled_weights_refused():
    g, (u, a, b) = _graph(3)
    edges = SignedEdges.from_graph(g)
    full = FullGraph(edges, g.n_users, g.n_responses)
    present = {(int(x), int(y)) for x, y in zip(g.pos_user, g.pos_response)}
    absent = next((x, y) for x in range(g.n_users) for y in range(g.n_responses) if (x, y) not in present)
    view = full.view(torch.tensor([absent[0]]), torch.tensor([absent[1]]), torch.tensor([absent[1]]))
    torch.testing.assert_close(view.adjacency(True, "user", g.n_users, g.n_responses).csr.to_dense(),
                               full.view().adjacency(True, "user", g.n_users, g.n_responses).csr.to_dense())
    one_way = SignedEdges(edges.pos_user, edges.pos_resp, edges.pos_norm, edges.neg_user, edges.neg_resp,
                          edges.neg_norm, pos_norm_to_resp=edges.pos_norm)
    with pytest.raises(ValueError, match="symmetric"):
        FullGraph(one_way, g.n_users, g.n_responses)
