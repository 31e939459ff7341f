"""SignedBipartiteConv (copl_ray.gnn.layers) against a direct dense reading of Eq. 2-3 / 12-13.

The reference builds dense adjacency matrices and loops over every edge with an explicit Hadamard
product per edge, i.e. the equations exactly as printed; the layer aggregates sparsely and factors
the Hadamard term out of the sum. Also: edge-order invariance, the Table A4 ablations, the sparse
product's gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from copl_ray.gnn.layers import SignedBipartiteConv
from copl_ray.gnn.sampler import SignedEdges
from copl_ray.gnn.sparse import Adjacency, spmm
from copl_ray.graph.signed_graph import SignedGraph


# Tiny tensors: one OpenMP thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


D = 6


def _graph(seed=0, n_u=7, n_r=9, n=40) -> SignedGraph:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_u, n)
    a = rng.integers(0, n_r, n)
    b = (a + rng.integers(1, n_r, n)) % n_r
    return SignedGraph.from_triples(u, a, b, n_u, n_r)


def _dense_reference(conv: SignedBipartiteConv, e_u, e_r, g: SignedGraph):
    """Eq. 2-3 and 12-13 literally: per-edge messages W1 e_r + W2 (e_r * e_u), summed with alpha."""
    n_u, n_r = e_u.shape[0], e_r.shape[0]
    adj = {}
    for positive in (True, False):
        u = (g.pos_user if positive else g.neg_user).tolist()
        r = (g.pos_response if positive else g.neg_response).tolist()
        A = torch.zeros(n_u, n_r)
        A[u, r] = 1.0
        adj[positive] = A
    official = conv.variant == "official"
    su, sr = conv.user, (conv.user if official else conv.resp)
    ident = torch.eye(e_u.shape[1])
    W = lambda lin: ident if lin is None else lin.weight  # noqa: E731
    out_u, out_r = [], []
    for side, E, O, weights in (("user", e_u, e_r, su), ("resp", e_r, e_u, sr)):
        rows = []
        for i in range(E.shape[0]):
            m = weights.lin_self.weight @ E[i]
            for positive, (w_a, w_b) in ((True, (W(weights.lin1), weights.lin2.weight)),
                                         (False, (W(weights.lin3), weights.lin4.weight))):
                A = adj[positive] if side == "user" else adj[positive].T
                du, dr = adj[positive].sum(1), adj[positive].sum(0)
                msg = torch.zeros(E.shape[1])
                for j in torch.nonzero(A[i]).flatten().tolist():
                    deg_i, deg_j = (du[i], dr[j]) if side == "user" else (dr[i], du[j])
                    norm = 1.0 / torch.sqrt(deg_i * deg_j)
                    msg = msg + norm * (w_a @ O[j] + w_b @ (O[j] * E[i]))
                sign = -1.0 if (official and not positive) else 1.0
                m = m + sign * msg
            rows.append(torch.nn.functional.leaky_relu(m, conv.negative_slope))
        (out_u if side == "user" else out_r).extend(rows)
    return torch.stack(out_u), torch.stack(out_r)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_layer_equals_dense_per_edge_equations(variant):
    torch.manual_seed(0)
    g = _graph()
    conv = SignedBipartiteConv(D, variant=variant)
    e_u, e_r = torch.randn(g.n_users, D), torch.randn(g.n_responses, D)
    out_u, out_r = conv(e_u, e_r, SignedEdges.from_graph(g))
    ref_u, ref_r = _dense_reference(conv, e_u, e_r, g)
    torch.testing.assert_close(out_u, ref_u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_r, ref_r, atol=1e-5, rtol=1e-5)


def test_paper_variant_has_separate_user_and_response_weights_official_shares():
    paper, official = SignedBipartiteConv(D), SignedBipartiteConv(D, variant="official")
    # paper: W_self, W1..W4 for each side = 10 d x d matrices; official: W_self, W2, W4 shared = 3.
    assert sum(p.numel() for p in paper.parameters()) == 10 * D * D
    assert sum(p.numel() for p in official.parameters()) == 3 * D * D
    assert not torch.equal(paper.user.lin1.weight, paper.resp.lin1.weight)


def test_output_invariant_to_edge_order():
    torch.manual_seed(1)
    g = _graph(seed=3)
    conv = SignedBipartiteConv(D)
    e_u, e_r = torch.randn(g.n_users, D), torch.randn(g.n_responses, D)
    edges = SignedEdges.from_graph(g)
    gen = torch.Generator().manual_seed(0)
    pp, pn = torch.randperm(len(edges.pos_user), generator=gen), torch.randperm(len(edges.neg_user), generator=gen)
    shuffled = SignedEdges(edges.pos_user[pp], edges.pos_resp[pp], edges.pos_norm[pp],
                           edges.neg_user[pn], edges.neg_resp[pn], edges.neg_norm[pn])
    a, b = conv(e_u, e_r, edges), conv(e_u, e_r, shuffled)
    torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=1e-6)


def test_no_negative_edges_ignores_them_and_has_no_w3_w4():
    torch.manual_seed(2)
    g = _graph(seed=4)
    conv = SignedBipartiteConv(D, negative_edges=False)
    assert conv.user.lin3 is None and conv.user.lin4 is None
    e_u, e_r = torch.randn(g.n_users, D), torch.randn(g.n_responses, D)
    edges = SignedEdges.from_graph(g)
    no_neg = SignedEdges(edges.pos_user, edges.pos_resp, edges.pos_norm, *(t[:0] for t in
                         (edges.neg_user, edges.neg_resp, edges.neg_norm)))
    a, b = conv(e_u, e_r, edges), conv(e_u, e_r, no_neg)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # The full layer does use them: removing the negative edges changes its output.
    full = SignedBipartiteConv(D)
    assert not torch.allclose(full(e_u, e_r, edges)[0], full(e_u, e_r, no_neg)[0])


def test_no_transform_no_activation_is_parameter_free_and_linear():
    torch.manual_seed(3)
    g = _graph(seed=5)
    conv = SignedBipartiteConv(D, transform=False, activation=False)
    assert len(list(conv.parameters())) == 0
    edges = SignedEdges.from_graph(g)
    x_u, x_r, y_u, y_r = (torch.randn(n, D) for n in (g.n_users, g.n_responses) * 2)
    f = lambda eu, er: torch.cat(conv(eu, er, edges))  # noqa: E731
    torch.testing.assert_close(f(2 * x_u - 3 * y_u, 2 * x_r - 3 * y_r), 2 * f(x_u, x_r) - 3 * f(y_u, y_r),
                               atol=1e-5, rtol=1e-5)
    # LightGCN-style: e_u + sum alpha e_r - sum beta e_r (module docstring).
    A_pos = torch.zeros(g.n_users, g.n_responses).index_put_((edges.pos_user, edges.pos_resp), edges.pos_norm)
    A_neg = torch.zeros(g.n_users, g.n_responses).index_put_((edges.neg_user, edges.neg_resp), edges.neg_norm)
    torch.testing.assert_close(conv(x_u, x_r, edges)[0], x_u + A_pos @ x_r - A_neg @ x_r, atol=1e-5, rtol=1e-5)
    # With activation the same layer is not linear.
    act = SignedBipartiteConv(D, transform=False, activation=True)
    g2 = lambda eu, er: torch.cat(act(eu, er, edges))  # noqa: E731
    assert not torch.allclose(g2(-x_u, -x_r), -g2(x_u, x_r))


def test_official_variant_refuses_no_transform_and_bad_variant_is_named():
    with pytest.raises(ValueError, match="variant='official'"):
        SignedBipartiteConv(D, transform=False, variant="official")
    with pytest.raises(ValueError, match="variant must be one of"):
        SignedBipartiteConv(D, variant="paperr")


def test_sparse_product_gradient_matches_dense():
    torch.manual_seed(4)
    rows, cols = torch.randint(0, 5, (30,)), torch.randint(0, 4, (30,))
    vals = torch.rand(30, dtype=torch.float64)
    adj = Adjacency(rows, cols, vals, 5, 4)
    dense = torch.zeros(5, 4, dtype=torch.float64).index_put_((rows, cols), vals, accumulate=True)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(spmm(adj, x), dense @ x)
    assert torch.autograd.gradcheck(lambda t: spmm(adj, t), (x,))
    with pytest.raises(ValueError, match="columns"):
        spmm(adj, torch.randn(5, 3, dtype=torch.float64))
