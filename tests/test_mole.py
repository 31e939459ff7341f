"""MoLE linear, user gate and reward losses: invariants on small random tensors (no backbone)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from copl_ray.reward.gate import UserGate, expert_mask
from copl_ray.reward.losses import btl_loss, load_balancing_loss
from copl_ray.reward.mole import MoLELinear, RoutingContext

D_IN, D_OUT, R, M, DU = 12, 10, 4, 5, 6


def _layer(shared=True, experts=M, gate_scope="model", impl="masked", top_k=1, seed=0):
    torch.manual_seed(seed)
    ctx = RoutingContext()
    gate = UserGate(DU, experts, 16, top_k) if gate_scope == "layer" else None
    layer = MoLELinear(nn.Linear(D_IN, D_OUT), R, experts, alpha=8.0, shared=shared, context=ctx,
                       gate=gate, impl=impl)
    return layer, ctx


def _mixing_gate(top_k=1):
    """A gate whose random init routes different users to different experts (a larger last layer:
    PyTorch's default init leaves logits so flat that most users share one expert)."""
    gate = UserGate(DU, M, 16, top_k=top_k)
    with torch.no_grad():
        gate.mlp[2].weight.mul_(10.0)
    return gate


def _route(layer, ctx, user_emb, gate):
    ctx.reset()
    if layer.gate is not None:
        ctx.user_emb = user_emb
        return
    ctx.gate = gate(user_emb)
    ctx.mask = expert_mask(ctx.gate.weights, user_emb.shape[0], R, layer.shared, layer.scale,
                           torch.float32, "cpu")


def _eq8_reference(layer, x, weights):
    """Eq. 8 per sequence, one at a time: base(x_b) + s (x_b (A_s^T B_s^T + sum_i w_bi A_i^T B_i^T))."""
    s0 = R if layer.shared else 0
    rows = []
    for b in range(x.shape[0]):
        delta = torch.zeros(D_OUT, D_IN)
        if layer.shared:
            delta += layer.lora_B[:, :R] @ layer.lora_A[:R]
        for i in range(layer.num_experts):
            blk = slice(s0 + i * R, s0 + (i + 1) * R)
            delta += weights[b, i] * (layer.lora_B[:, blk] @ layer.lora_A[blk])
        rows.append(layer.base(x[b]) + layer.scale * x[b] @ delta.T)
    return torch.stack(rows)


def test_zero_init_adapters_leave_the_base_output_unchanged():
    layer, ctx = _layer()
    gate = UserGate(DU, M, 16)
    x, u = torch.randn(3, 7, D_IN), torch.randn(3, DU)
    _route(layer, ctx, u, gate)
    assert torch.equal(layer(x), layer.base(x))
    assert not layer.base.weight.requires_grad and layer.lora_A.requires_grad


@pytest.mark.parametrize("inference", [False, True])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("impl", ["masked", "gathered", "loop"])
def test_mixed_batch_matches_eq8_per_sequence(shared, top_k, impl, inference):
    layer, ctx = _layer(shared=shared, impl=impl)
    gate = _mixing_gate(top_k)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.5)
    x, u = torch.randn(16, 5, D_IN), 3 * torch.randn(16, DU)
    _route(layer, ctx, u, gate)
    w = ctx.gate.weights
    assert ((w > 0).sum(1) == top_k).all() and ctx.gate.index.unique().numel() > 1  # a real mix
    want = _eq8_reference(layer, x, w).detach()
    with torch.inference_mode(inference):  # scoring takes the in-place path
        got = layer(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_implementations_give_the_same_gradients():
    grads = {}
    for impl in ("masked", "gathered", "loop"):
        layer, ctx = _layer(impl=impl, top_k=2)
        gate = _mixing_gate(top_k=2)
        with torch.no_grad():
            layer.lora_B.normal_(std=0.5)
        x = torch.randn(16, 5, D_IN, generator=torch.Generator().manual_seed(3))
        u = 3 * torch.randn(16, DU, generator=torch.Generator().manual_seed(4))
        _route(layer, ctx, u, gate)
        layer(x).sin().sum().backward()
        grads[impl] = [layer.lora_A.grad, layer.lora_B.grad, gate.mlp[0].weight.grad, gate.mlp[2].bias.grad]
    for impl in ("gathered", "loop"):
        for g_ref, g in zip(grads["masked"], grads[impl]):
            torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)
    assert grads["masked"][2].abs().sum() > 0


def test_gate_weight_applied_once_not_squared():
    layer, ctx = _layer(shared=False)
    gate = UserGate(DU, M, 16)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.5)
    x, u = torch.randn(2, 3, D_IN), torch.randn(2, DU)
    _route(layer, ctx, u, gate)
    delta = layer(x) - layer.base(x)
    ctx.mask = ctx.mask * 2  # doubling w must double the expert's contribution (linear in w)
    torch.testing.assert_close(layer(x) - layer.base(x), 2 * delta, atol=1e-5, rtol=1e-5)


def test_layer_scope_gate_matches_model_scope_with_the_same_gate():
    layer, ctx = _layer(gate_scope="layer")
    model_layer, mctx = _layer(gate_scope="model")
    model_layer.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("gate.")})
    with torch.no_grad():
        for lay in (layer, model_layer):
            lay.lora_B.copy_(torch.linspace(-1, 1, lay.lora_B.numel()).view_as(lay.lora_B))
    x, u = torch.randn(4, 3, D_IN), torch.randn(4, DU)
    _route(layer, ctx, u, None)
    _route(model_layer, mctx, u, layer.gate)
    torch.testing.assert_close(layer(x), model_layer(x))
    assert len(ctx.layer_gates) == 1


def test_gate_keeps_top_k_softmax_values_and_learns_through_them():
    torch.manual_seed(0)
    gate = UserGate(DU, M, 16, top_k=2, temperature=0.5)
    out = gate(torch.randn(8, DU))
    torch.testing.assert_close(out.probs.sum(1), torch.ones(8))
    kept = out.weights.gather(1, out.index)
    torch.testing.assert_close(kept, out.probs.gather(1, out.index))
    assert (out.weights > 0).sum(1).eq(2).all()
    out.weights.sum().backward()  # the argmax has no gradient, the kept softmax values do
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate.parameters())


def test_gate_receives_gradient_through_the_layer_once_b_is_nonzero():
    layer, ctx = _layer()
    gate = UserGate(DU, M, 16)
    x, u = torch.randn(4, 3, D_IN), torch.randn(4, DU)
    _route(layer, ctx, u, gate)
    layer(x).square().sum().backward()
    assert layer.lora_B.grad.abs().sum() > 0
    assert gate.mlp[2].weight.grad.abs().sum() == 0  # B = 0: the expert output, hence dL/dw, is 0
    with torch.no_grad():
        layer.lora_B.normal_(std=0.5)
    gate.zero_grad()
    _route(layer, ctx, u, gate)
    layer(x).square().sum().backward()
    assert gate.mlp[0].weight.grad.abs().sum() > 0 and gate.mlp[2].weight.grad.abs().sum() > 0


def test_unrouted_layer_and_wrong_batch_raise():
    layer, ctx = _layer()
    with pytest.raises(RuntimeError, match="without routing"):
        layer(torch.randn(2, 3, D_IN))
    _route(layer, ctx, torch.randn(2, DU), UserGate(DU, M, 16))
    with pytest.raises(RuntimeError, match="batch of 2"):
        layer(torch.randn(3, 3, D_IN))
    with pytest.raises(ValueError, match="top_k"):
        UserGate(DU, M, 16, top_k=M + 1)


def test_plain_lora_layer_is_shared_block_only():
    layer, ctx = _layer(experts=0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 3, D_IN)
    want = layer.base(x) + layer.scale * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), want)  # no routing needed
    assert layer.lora_A.shape == (R, D_IN)


# ------------------------------------------------------------------ losses


def test_btl_loss_pinned_value_and_symmetry():
    rc, rr = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    want = (math.log1p(math.exp(-1.0)) + math.log(2.0)) / 2
    assert btl_loss(rc, rr).item() == pytest.approx(want, rel=1e-6)
    assert btl_loss(rc, rr, weights=torch.ones(2)).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="weights"):
        btl_loss(rc, rr, weights=torch.ones(3))


def test_reweighting_zero_weight_pair_gets_no_gradient():
    rc = torch.tensor([0.3, -0.2, 1.0], requires_grad=True)
    btl_loss(rc, torch.zeros(3), weights=torch.tensor([1.0, 0.0, 3.0])).backward()
    assert rc.grad[1] == 0 and rc.grad[0] != 0
    # a weight of 3 on pair 2 triples its share of the gradient relative to unweighted BTL
    rc2 = rc.detach().clone().requires_grad_(True)
    btl_loss(rc2, torch.zeros(3)).backward()
    ratio = (rc.grad[2] / rc.grad[0]) / (rc2.grad[2] / rc2.grad[0])
    assert ratio.item() == pytest.approx(3.0, rel=1e-5)


def test_focal_btl_shifts_gradient_to_misranked_pairs():
    margin = torch.tensor([-2.0, 3.0])  # pair 0 misranked (hard), pair 1 easy
    grads = []
    for gamma in (0.0, 2.0):
        m = margin.clone().requires_grad_(True)
        btl_loss(m, torch.zeros(2), focal_gamma=gamma).backward()
        grads.append(m.grad.abs())
    hard_share = [g[0] / g.sum() for g in grads]
    assert hard_share[1] > hard_share[0]
    # gamma = 0 is exactly plain BTL
    assert btl_loss(margin, torch.zeros(2), focal_gamma=0.0) == btl_loss(margin, torch.zeros(2))


def test_load_balancing_loss_extremes():
    uniform = torch.full((8, 4), 0.25)
    assert load_balancing_loss(uniform, torch.arange(8) % 4).item() == pytest.approx(1.0)
    collapsed = torch.zeros(8, 4)
    collapsed[:, 0] = 1.0
    assert load_balancing_loss(collapsed, torch.zeros(8, dtype=torch.long)).item() == pytest.approx(4.0)
    per_layer = torch.stack([uniform, collapsed], dim=1)  # [B, L=2, M]
    idx = torch.stack([torch.arange(8) % 4, torch.zeros(8, dtype=torch.long)], dim=1)
    assert load_balancing_loss(per_layer, idx).item() == pytest.approx(2.5)


def test_load_balancing_loss_spreads_a_collapsed_gate():
    torch.manual_seed(0)
    gate = UserGate(DU, M, 16)
    with torch.no_grad():
        gate.mlp[2].bias.zero_()
        gate.mlp[2].bias[0] = 5.0  # every user starts on expert 0
    users = torch.randn(64, DU)
    before = gate(users).index.squeeze(1).bincount(minlength=M).max().item()
    opt = torch.optim.Adam(gate.parameters(), lr=0.05)
    for _ in range(40):
        out = gate(users)
        loss = load_balancing_loss(out.probs, out.index.squeeze(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = gate(users).index.squeeze(1).bincount(minlength=M)
    assert before == 64
    assert after.max().item() < 40 and (after > 0).sum().item() >= 3
