"""NeighborSampler (copl_ray.gnn.sampler): structure, fan-out limits, exactness, unbiasedness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from copl_ray.gnn.sampler import NeighborSampler, SignedEdges, floyd_offsets
from copl_ray.graph.signed_graph import SignedGraph


# Tiny tensors: one OpenMP thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _graph(seed=0, n_u=60, n_r=40, n=600) -> SignedGraph:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_u, n)
    a = rng.integers(0, n_r, n)
    b = (a + rng.integers(1, n_r, n)) % n_r
    return SignedGraph.from_triples(u, a, b, n_u, n_r)


def _edge_set(g: SignedGraph, positive: bool) -> set:
    u, r = (g.pos_user, g.pos_response) if positive else (g.neg_user, g.neg_response)
    return set(zip(u.tolist(), r.tolist()))


def test_seeds_first_nodes_distinct_and_every_edge_real_with_its_sign():
    g = _graph()
    su, sr = torch.tensor([5, 0, 17]), torch.tensor([3, 9])
    sub = NeighborSampler(g, [3, 2], seed=0).sample(su, sr)
    assert sub.user_nodes[:3].tolist() == [5, 0, 17] and sub.resp_nodes[:2].tolist() == [3, 9]
    assert len(set(sub.user_nodes.tolist())) == len(sub.user_nodes)
    assert len(set(sub.resp_nodes.tolist())) == len(sub.resp_nodes)
    e = sub.edges
    for positive, (u, r) in ((True, (e.pos_user, e.pos_resp)), (False, (e.neg_user, e.neg_resp))):
        glob = set(zip(sub.user_nodes[u].tolist(), sub.resp_nodes[r].tolist()))
        assert glob and glob <= _edge_set(g, positive)


def test_fanout_per_node_sign_and_direction_without_replacement():
    g = _graph(seed=1)
    fanouts = [4, 2]
    sub = NeighborSampler(g, fanouts, seed=3).sample(torch.arange(10), torch.arange(5))
    e = sub.edges
    for u, r, w_u, w_r in ((e.pos_user, e.pos_resp, e.pos_norm, e.pos_norm_to_resp),
                           (e.neg_user, e.neg_resp, e.neg_norm, e.neg_norm_to_resp)):
        # every sampled edge carries a message in exactly one direction
        assert torch.all((w_u > 0) ^ (w_r > 0))
        for target, source, w in ((u, r, w_u), (r, u, w_r)):
            t, s = target[w > 0], source[w > 0]
            counts = torch.bincount(t)
            assert counts.max() <= max(fanouts)
            pairs = set(zip(t.tolist(), s.tolist()))
            assert len(pairs) == len(t)  # no neighbour drawn twice by one node
    # the seeds sampled with fanouts[0]: each seed user kept min(deg, 4) positive neighbours
    deg = torch.bincount(g.pos_user, minlength=g.n_users)[:10]
    t = e.pos_user[e.pos_norm > 0]
    got = torch.bincount(t, minlength=len(sub.user_nodes))[:10]
    assert torch.equal(got, torch.minimum(deg, torch.tensor(4)))


def test_nodes_lie_within_num_layers_hops():
    g = _graph(seed=2, n_u=200, n_r=150, n=400)
    sub = NeighborSampler(g, [2], seed=0).sample(torch.tensor([0]), torch.zeros(0, dtype=torch.long))
    # one hop from user 0: only responses adjacent to it (either sign), no other user
    adj = {r for (u, r) in _edge_set(g, True) | _edge_set(g, False) if u == 0}
    assert sub.user_nodes.tolist() == [0]
    assert set(sub.resp_nodes.tolist()) <= adj


def test_large_fanout_reproduces_full_graph_weights_and_embeddings():
    from copl_ray.gnn.model import CoPLGNN, GNNConfig

    g = _graph(seed=4)
    torch.manual_seed(0)
    model = CoPLGNN(GNNConfig(g.n_users, g.n_responses, dim=8, num_layers=2))
    full_u, full_r = model(SignedEdges.from_graph(g))
    su, sr = torch.tensor([7, 2, 30]), torch.tensor([11, 0])
    sub = NeighborSampler(g, [1000, 1000], seed=0).sample(su, sr)
    e_u, e_r = model(sub.edges, sub.user_nodes, sub.resp_nodes)
    torch.testing.assert_close(e_u[:3], full_u[su], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e_r[:2], full_r[sr], atol=1e-5, rtol=1e-5)


def test_sampled_aggregate_is_unbiased_for_the_full_sum():
    # One hop, x = one scalar per response: E[sum_sampled w x] equals sum_full alpha x (module doc).
    g = _graph(seed=5, n_u=30, n_r=40, n=900)
    x = torch.rand(g.n_responses, 1)
    full = SignedEdges.from_graph(g).adjacency(True, "user", g.n_users, g.n_responses) @ x
    sampler = NeighborSampler(g, [3], seed=11)
    seeds = torch.arange(g.n_users)
    deg = torch.bincount(g.pos_user, minlength=g.n_users)
    assert (deg > 3).sum() > 20  # most users are actually subsampled
    acc = torch.zeros(g.n_users, 1)
    n = 400
    for _ in range(n):
        sub = sampler.sample(seeds, torch.zeros(0, dtype=torch.long))
        e = sub.edges
        keep = e.pos_norm > 0  # the edges that message users
        msg = e.pos_norm[keep, None] * x[sub.resp_nodes[e.pos_resp[keep]]]
        acc.index_add_(0, sub.user_nodes[e.pos_user[keep]], msg)
    torch.testing.assert_close(acc / n, full, atol=0.06 * float(full.max()), rtol=0.05)


def test_floyd_offsets_distinct_and_uniform():
    rng = np.random.default_rng(0)
    deg = np.full(20000, 7)
    picks = floyd_offsets(deg, 3, rng)
    assert np.all(np.sort(picks, 1)[:, 1:] != np.sort(picks, 1)[:, :-1])
    assert picks.min() >= 0 and picks.max() <= 6
    freq = np.bincount(picks.ravel(), minlength=7) / len(deg)
    np.testing.assert_allclose(freq, 3 / 7, atol=0.02)  # each offset kept with prob k/deg
    # distinct per row also when k == deg (the whole segment)
    assert np.all(np.sort(floyd_offsets(np.array([4, 4]), 4, rng), 1) == np.arange(4))


def test_same_seed_same_sample_and_scratch_state_is_reset():
    g = _graph(seed=6)
    a = NeighborSampler(g, [3, 3], seed=5)
    b = NeighborSampler(g, [3, 3], seed=5)
    s1, s2 = a.sample(torch.tensor([1, 2]), torch.tensor([4])), b.sample(torch.tensor([1, 2]), torch.tensor([4]))
    assert torch.equal(s1.user_nodes, s2.user_nodes) and torch.equal(s1.edges.pos_resp, s2.edges.pos_resp)
    assert (a._users.local == -1).all() and (a._resps.local == -1).all()


def test_bad_seeds_and_fanouts_are_named():
    g = _graph()
    s = NeighborSampler(g, [2], seed=0)
    with pytest.raises(ValueError, match="distinct"):
        s.sample(torch.tensor([1, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="seed_resps out of range"):
        s.sample(torch.tensor([1]), torch.tensor([g.n_responses]))
    assert (s._users.local == -1).all()  # a failed call leaves no marks behind
    with pytest.raises(ValueError, match="fanouts"):
        NeighborSampler(g, [2, 0])


def test_negative_edges_off_samples_none():
    g = _graph()
    sub = NeighborSampler(g, [3, 3], seed=0, negative_edges=False).sample(torch.tensor([0]), torch.tensor([0]))
    assert sub.edges.neg_user.numel() == 0 and sub.edges.pos_user.numel() > 0


def test_rejection_offsets_distinct_and_uniform_and_both_paths_used_by_sample_csr():
    from copl_ray.gnn.sampler import rejection_offsets, sample_csr

    rng = np.random.default_rng(1)
    picks = rejection_offsets(np.full(20000, 12), 3, rng)
    srt = np.sort(picks, 1)
    assert np.all(srt[:, 1:] != srt[:, :-1]) and picks.min() >= 0 and picks.max() <= 11
    np.testing.assert_allclose(np.bincount(picks.ravel(), minlength=12) / 20000, 3 / 12, atol=0.02)
    # degrees 2 (keep all), 5 (Floyd, 3 < 5 < 9) and 30 (rejection, >= 9) in one call
    indptr = np.array([0, 2, 7, 37])
    owner, pos, deg, k = sample_csr(indptr, np.array([2, 0, 1]), 3, rng)
    assert owner.tolist() == [0, 0, 0, 1, 1, 2, 2, 2] and k.tolist() == [3, 2, 3]
    assert set(pos[:3]) <= set(range(7, 37)) and len(set(pos[:3])) == 3
    assert pos[3:5].tolist() == [0, 1]
    assert set(pos[5:]) <= set(range(2, 7)) and len(set(pos[5:])) == 3


def test_messages_per_layer_counts_the_trimmed_forward_exactly():
    """With fan-outs above every degree the sampled subgraph is the exact 2-hop neighbourhood: the
    last layer sends one message per edge of each seed, the first one per edge of every node within
    one hop; a full-graph layer would send 2 * num_edges."""
    from copl_ray.gnn.sampler_bench import messages_per_layer

    g = _graph()
    (du_pos, dr_pos), (du_neg, dr_neg) = g.degrees(True), g.degrees(False)
    du, dr = (du_pos + du_neg).numpy(), (dr_pos + dr_neg).numpy()
    su, sr = torch.tensor([5, 0, 17]), torch.tensor([3, 9])
    sub = NeighborSampler(g, [1000, 1000], seed=0).sample(su, sr)
    hu, hr = sub.edges.user_hops.tolist(), sub.edges.resp_hops.tolist()
    within_one = (du[sub.user_nodes[:hu[1]].numpy()].sum() + dr[sub.resp_nodes[:hr[1]].numpy()].sum())
    seeds = du[su.numpy()].sum() + dr[sr.numpy()].sum()
    assert messages_per_layer(sub.edges) == [within_one, seeds]
    assert within_one < 2 * g.num_edges
