"""CoPLGNN, the BTL loss (Eq. 4-5), save/load, and the baselines (copl_ray.gnn.model/baselines)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from copl_ray.gnn import baselines
from copl_ray.gnn.model import CoPLGNN, GNNConfig, btl_loss, load_model, pair_accuracy, save_model
from copl_ray.gnn.sampler import NeighborSampler, SignedEdges
from copl_ray.graph.signed_graph import SignedGraph


# Tiny tensors: one OpenMP thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _two_group_triples(n_users=24, n_pairs=10, per_user=6, seed=0):
    """Users 0..n/2-1 prefer the even response of each pair (2p, 2p+1), the rest the odd one."""
    rng = np.random.default_rng(seed)
    u, a, b = [], [], []
    for user in range(n_users):
        for p in rng.choice(n_pairs, per_user, replace=False):
            even, odd = 2 * p, 2 * p + 1
            win, lose = (even, odd) if user < n_users // 2 else (odd, even)
            u.append(user), a.append(win), b.append(lose)
    return np.array(u), np.array(a), np.array(b), n_users, 2 * n_pairs


ABLATIONS = [dict(), dict(variant="official"), dict(negative_edges=False),
             dict(transform=False), dict(transform=False, activation=False)]


@pytest.mark.parametrize("opts", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "paper")
def test_gradients_reach_every_parameter(opts):
    u, a, b, n_u, n_r = _two_group_triples()
    g = SignedGraph.from_triples(u, a, b, n_u, n_r)
    torch.manual_seed(0)
    model = CoPLGNN(GNNConfig(n_u, n_r, dim=8, num_layers=3, **opts))
    e_u, e_r = model(SignedEdges.from_graph(g))
    btl_loss(e_u[u], e_r[a], e_r[b]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    per_layer = 0 if not model.cfg.transform else 3 if opts.get("variant") == "official" else \
        6 if not model.cfg.negative_edges else 10  # d x d matrices (W_self, W1..W4) per layer
    expected = per_layer * 3
    assert sum(1 for n, _ in model.named_parameters() if "convs" in n) == expected


def test_sampled_training_fits_two_opposite_groups():
    """The whole path (sampler -> model -> loss -> AdamW) learns a planted 2-group preference."""
    u, a, b, n_u, n_r = _two_group_triples(seed=1)
    g = SignedGraph.from_triples(u, a, b, n_u, n_r)
    torch.manual_seed(0)
    model = CoPLGNN(GNNConfig(n_u, n_r, dim=16, num_layers=2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.0)
    sampler = NeighborSampler(g, [4, 4], seed=0)
    ut, at, bt = (torch.from_numpy(x) for x in (u, a, b))
    for step in range(60):
        idx = torch.randperm(len(ut))[:32]
        su, inv_u = torch.unique(ut[idx], return_inverse=True)
        sr, inv_r = torch.unique(torch.cat([at[idx], bt[idx]]), return_inverse=True)
        sub = sampler.sample(su, sr)
        e_u, e_r = model(sub.edges, sub.user_nodes, sub.resp_nodes)
        loss = btl_loss(e_u[inv_u], e_r[inv_r[:32]], e_r[inv_r[32:]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    e_u, e_r = model.embed_all(g)
    assert pair_accuracy(e_u[ut], e_r[at], e_r[bt]) > 0.9


def test_btl_loss_and_accuracy_by_hand():
    e_u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    e_a = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    e_b = torch.tensor([[1.0, 5.0], [0.0, 1.0]])
    # margins: 3 - 1 = 2, 0 - 2 = -2
    expected = (-math.log(1 / (1 + math.exp(-2))) - math.log(1 / (1 + math.exp(2)))) / 2
    assert btl_loss(e_u, e_a, e_b).item() == pytest.approx(expected, rel=1e-6)
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    assert btl_loss(e_u, e_a, e_b, l2=0.1, params=[p]).item() == pytest.approx(expected + 0.5, rel=1e-6)
    w = torch.tensor([3.0, 1.0])
    weighted = (3 * -math.log(1 / (1 + math.exp(-2))) + -math.log(1 / (1 + math.exp(2)))) / 4
    assert btl_loss(e_u, e_a, e_b, weight=w).item() == pytest.approx(weighted, rel=1e-6)
    assert pair_accuracy(e_u, e_a, e_b) == 0.5
    with pytest.raises(ValueError, match="params"):
        btl_loss(e_u, e_a, e_b, l2=0.1)


def test_embed_all_equals_full_forward_and_save_load_round_trip(tmp_path):
    u, a, b, n_u, n_r = _two_group_triples()
    g = SignedGraph.from_triples(u, a, b, n_u, n_r)
    model = CoPLGNN(GNNConfig(n_u, n_r, dim=8, num_layers=2, variant="official"))
    with torch.no_grad():
        ref = model(SignedEdges.from_graph(g))
    for chunk in (None, 5):
        got = model.embed_all(g, batch_users=chunk)
        torch.testing.assert_close(got[0], ref[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got[1], ref[1], atol=1e-6, rtol=1e-5)
    path = save_model(model, tmp_path / "m.safetensors")
    back = load_model(path)
    assert isinstance(back, CoPLGNN) and back.cfg == model.cfg
    torch.testing.assert_close(back.embed_all(g)[0], ref[0])
    with pytest.raises(ValueError, match="built for"):
        model.embed_all(SignedGraph.from_triples(u, a, b, n_u + 1, n_r))


def test_load_rejects_a_foreign_file_by_name(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(1)}, str(bad), metadata={"format_version": "0"})
    with pytest.raises(ValueError, match="x.safetensors: model format_version '0'"):
        load_model(bad)


def test_config_rejects_bad_sizes_by_field():
    with pytest.raises(ValueError, match="GNNConfig.num_layers"):
        GNNConfig(3, 3, num_layers=0)


def test_baselines_score_by_dot_product_and_round_trip(tmp_path):
    u, a, b, n_u, n_r = _two_group_triples()
    g = SignedGraph.from_triples(u, a, b, n_u, n_r)
    ut, at = torch.from_numpy(u), torch.from_numpy(a)
    for kind in ("learnable", "uniform", "lore"):
        model = baselines.MODEL_KINDS[kind]({"n_users": n_u, "n_responses": n_r, "dim": 4})
        e_u, e_r = model.embed_all(g)
        torch.testing.assert_close(model(ut, at), (e_u[ut] * e_r[at]).sum(-1))
        back = load_model(save_model(model, tmp_path / f"{kind}.safetensors"))
        assert type(back) is type(model)
        torch.testing.assert_close(back(ut, at), model(ut, at))
    uni = baselines.UniformScores(n_users=n_u, n_responses=n_r, dim=4)
    s = uni(torch.arange(n_u), torch.full((n_u,), 3))
    assert torch.all(s == s[0])  # one preference for everyone
    lore = baselines.LoRe(n_users=n_u, n_responses=n_r, dim=4, n_basis=3)
    w, basis = lore.embed_all(g)
    assert w.shape == (n_u, 3) and basis.shape == (n_r, 3)
    torch.testing.assert_close(w.sum(1), torch.ones(n_u))
    assert (w >= 0).all()


@pytest.mark.parametrize("kind", ["learnable", "lore", "uniform"])
def test_baselines_learn_what_they_can(kind):
    """learnable and LoRe fit two opposite groups; uniform cannot beat 50% on them (by design)."""
    u, a, b, n_u, n_r = _two_group_triples(seed=2)
    torch.manual_seed(0)
    model = baselines.MODEL_KINDS[kind]({"n_users": n_u, "n_responses": n_r, "dim": 4})
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    ut, at, bt = (torch.from_numpy(x) for x in (u, a, b))
    for _ in range(150):
        e_u, e_a = model.embed(ut, at)
        loss = btl_loss(e_u, e_a, model.embed(ut, bt)[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = pair_accuracy(*model.embed(ut, at), model.embed(ut, bt)[1])
    if kind == "uniform":
        assert 0.3 <= acc <= 0.7
    else:
        assert acc > 0.95


def test_trimmed_sampled_forward_equals_untrimmed_on_seeds_values_and_gradients():
    """Layer l updating only nodes within L-1-l hops (edges.user_hops) changes nothing for the seeds."""
    import dataclasses

    u, a, b, n_u, n_r = _two_group_triples(n_users=40, seed=3)
    g = SignedGraph.from_triples(u, a, b, n_u, n_r)
    torch.manual_seed(0)
    model = CoPLGNN(GNNConfig(n_u, n_r, dim=8, num_layers=3))
    sub = NeighborSampler(g, [3, 2, 2], seed=1).sample(torch.tensor([4, 30]), torch.tensor([1, 6, 7]))
    assert sub.edges.user_hops.tolist()[0] == 2 and sub.edges.user_hops[-1] == len(sub.user_nodes)
    full_edges = dataclasses.replace(sub.edges, user_hops=None, resp_hops=None, _cache={})
    grads = []
    for edges in (sub.edges, full_edges):
        model.zero_grad()
        e_u, e_r = model(edges, sub.user_nodes, sub.resp_nodes)
        out = torch.cat([e_u[:2], e_r[:3]])
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert e_u.shape[0] == len(sub.user_nodes)  # untrimmed: every node
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=1e-5)
    for g0, g1 in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(g0, g1, atol=1e-6, rtol=1e-5)
