"""The MoLE linear layer: a frozen ``nn.Linear`` plus a shared LoRA and M LoRA experts (Eq. 8).

    Delta W_u = A_s B_s + sum_i w_i A_i B_i          (paper's notation: A is d_out x n, B is n x d_in)

Here, as in LoRA/peft code, ``lora_A`` maps d_in -> rank and ``lora_B`` maps rank -> d_out. The
shared and expert matrices are *stacked* ("stacked masked-dense", docs RESEARCH.md section 1):

    lora_A [(S+M) r, d_in],  lora_B [d_out, (S+M) r]     (S = 1 with a shared expert, else 0)

and a batch that mixes users is computed in one pass with a per-sequence rank-space mask
[B, (S+M) r] (1 on the shared block, w_i on expert i's r columns, 0 elsewhere; times alpha/r):

    y = base(x) + ((x A^T) * mask) B^T

Exact, static shapes, three extra ops per layer when scoring (GEMM, in-place mask, GEMM with fused
add) whatever the mix of users: no loop over experts or users, no copy of the model per user. The
gate weight multiplies the expert once (Eq. 8 as written; the official code's dispatcher multiplies
by p a second time, giving p^2).

``"gathered"`` computes the same function by gathering each sequence's shared + top-k blocks into
[B, (S+k) r, d] and applying them with ``bmm`` (the Punica/S-LoRA gather-bmm form): (S+k) r instead
of (S+M) r rank columns, i.e. 9x fewer LoRA FLOPs at M=8, k=1. ``impl="auto"`` (default) takes
masked on accelerators (memory-bound: no gathers, static shapes) and gathered on CPU (FLOP-bound;
on a tiny model with hidden 64 the 72 masked rank columns exceed the hidden size). ``"loop"`` (a
Python loop over experts, what peft's mixed-adapter batches and MixLoRA-style code do) is kept for
the benchmark and as a test oracle.

The routing (gate output and mask) for the current batch reaches every wrapped linear through a
`RoutingContext` that `PersonalRewardModel` fills before calling the backbone (gate per model), or
each layer runs its own gate on ``context.user_emb`` (gate per layer, as in the official code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from copl_ray.reward.gate import GateOutput, UserGate, expert_mask

__all__ = ["RoutingContext", "MoLELinear", "IMPLS"]

IMPLS = ("auto", "masked", "gathered", "loop")


class RoutingContext:
    """Routing state of the current forward, shared by a model and all its `MoLELinear` layers.

    It is deliberately left in place after a forward (not cleared) so that non-reentrant
    gradient checkpointing, which re-runs layer forwards during backward, sees the same routing.

    Attributes:
        gate: model-scope `GateOutput` of the batch (None for layer scope or plain LoRA).
        mask: model-scope rank-space mask [B, (S+M) r], built once per forward.
        user_emb: [B, d_u] user embeddings, read by layer-scope gates.
        layer_gates: `GateOutput` of each layer-scope gate, appended in call order.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.gate: GateOutput | None = None
        self.mask: torch.Tensor | None = None
        self.user_emb: torch.Tensor | None = None
        self.layer_gates: list[GateOutput] = []


def _add_lowrank(y: torch.Tensor, h: torch.Tensor, lora_b: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``y + h B^T`` as one GEMM with accumulation; y [..., d_out], h [..., K], lora_b [d_out, K]."""
    y2, h2 = y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1])
    if inplace and y2.data_ptr() == y.data_ptr():
        return y2.addmm_(h2, lora_b.t()).view_as(y)
    return torch.addmm(y2, h2, lora_b.t()).view_as(y)


class MoLELinear(nn.Module):
    """``base(x) + ((x A^T) * mask) B^T`` with stacked shared + expert LoRA blocks.

    Args:
        base: the frozen linear (its parameters get ``requires_grad=False`` and are never written).
        rank: r of every block.
        num_experts: M (0 = plain LoRA with the shared block only).
        alpha: LoRA alpha; the scale is alpha / r.
        shared: whether a shared block (always on) is stacked first.
        context: the owning model's `RoutingContext`.
        gate: a layer-scope `UserGate`, or None when the model routes (model scope).
        impl: ``"auto"`` (masked on accelerators, gathered on CPU), ``"masked"``, ``"gathered"``
            or ``"loop"``; all compute the same function.
    Shapes:
        x [B, T, d_in] (or [B, d_in]) -> [B, T, d_out]; row b of x belongs to sequence b of the
        batch the context was routed for.
    """

    def __init__(self, base: nn.Linear, rank: int, num_experts: int, alpha: float, shared: bool,
                 context: RoutingContext, gate: UserGate | None = None, impl: str = "auto"):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not shared and num_experts == 0:
            raise ValueError("a MoLE layer needs a shared block or at least one expert")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank, self.num_experts, self.shared = rank, num_experts, shared
        self.scale = alpha / rank
        self.context = context
        self.gate = gate
        self.impl = impl
        blocks = int(shared) + num_experts
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(blocks * rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, blocks * rank, dtype=w.dtype, device=w.device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # LoRA's init per block: A Kaiming-uniform (a = sqrt 5, peft's default), B zero, so every
        # block contributes exactly 0 until trained.
        with torch.no_grad():
            for blk in self.lora_A.view(-1, self.rank, self.lora_A.shape[1]):
                nn.init.kaiming_uniform_(blk, a=math.sqrt(5))
            self.lora_B.zero_()

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {value!r}")
        self._impl = value

    # -------------------------------------------------------------- routing

    def _route(self, batch: int, dtype, device) -> tuple[GateOutput | None, torch.Tensor | None]:
        """(gate output, mask [B, (S+M) r]) of this layer for the current batch."""
        if self.num_experts == 0:
            return None, None
        ctx = self.context
        if self.gate is None:
            if ctx.gate is None:
                raise RuntimeError("MoLE layer called without routing: call it through "
                                   "PersonalRewardModel.forward, which routes the batch first")
            gate, mask = ctx.gate, ctx.mask
        else:
            if ctx.user_emb is None:
                raise RuntimeError("layer-scope MoLE gate called without context.user_emb")
            gate = self.gate(ctx.user_emb)
            ctx.layer_gates.append(gate)
            mask = None
        if gate.weights.shape[0] != batch:
            raise RuntimeError(f"routed for a batch of {gate.weights.shape[0]} sequences, got {batch}")
        if mask is None and self._effective_impl(device) == "masked":
            mask = expert_mask(gate.weights, batch, self.rank, self.shared, self.scale, dtype, device)
        return gate, mask

    def _effective_impl(self, device) -> str:
        # "auto": on accelerators the LoRA path is memory-bound, so the static masked-dense form
        # (one GEMM pair over all (S+M) r columns, no gathers) wins; on CPUs it is FLOP-bound and
        # computing all M experts costs (S+M)/(S+k) times more, so gather the chosen blocks.
        if self._impl != "auto":
            return self._impl
        return "masked" if torch.device(device).type != "cpu" else "gathered"

    # -------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        squeeze = x.dim() == 2
        if squeeze:
            x, y = x.unsqueeze(1), y.unsqueeze(1)
        gate, mask = self._route(x.shape[0], x.dtype, x.device)
        # Without autograd (scoring) the rank-space scaling and the final add run in place, and the
        # add is fused into the second GEMM (addmm/baddbmm), so an adapted linear costs 3 extra ops.
        inplace = not torch.is_grad_enabled()
        impl = self._effective_impl(x.device)
        if gate is None:  # plain LoRA: the same fused path, the scale instead of a mask
            h = F.linear(x, self.lora_A)
            out = _add_lowrank(y, h.mul_(self.scale) if inplace else h * self.scale, self.lora_B, inplace)
        elif impl == "masked":
            h = F.linear(x, self.lora_A)
            m = mask.unsqueeze(1)
            out = _add_lowrank(y, h.mul_(m) if inplace else h * m, self.lora_B, inplace)
        elif impl == "gathered":
            out = self._gathered(x, y, gate, inplace)
        else:
            out = y + self._loop(x, gate)
        return out.squeeze(1) if squeeze else out

    def _gathered(self, x: torch.Tensor, y: torch.Tensor, gate: GateOutput, inplace: bool) -> torch.Tensor:
        """Each sequence's shared + top-k blocks gathered to [B, (S+k) r, d] and applied with bmm."""
        r, s, (bsz, k) = self.rank, int(self.shared) * self.rank, gate.index.shape
        d_in, d_out = self.lora_A.shape[1], self.lora_B.shape[0]
        a_exp = self.lora_A[s:].view(self.num_experts, r, d_in)[gate.index].reshape(bsz, k * r, d_in)
        b_exp = self.lora_B[:, s:].view(d_out, self.num_experts, r).permute(1, 2, 0)[gate.index]
        b_exp = b_exp.reshape(bsz, k * r, d_out)
        w = gate.weights.gather(1, gate.index).to(x.dtype).repeat_interleave(r, dim=1) * self.scale
        if self.shared:
            a_exp = torch.cat([self.lora_A[:s].expand(bsz, s, d_in), a_exp], dim=1)
            b_exp = torch.cat([self.lora_B[:, :s].t().expand(bsz, s, d_out), b_exp], dim=1)
            w = torch.cat([torch.full((bsz, s), self.scale, dtype=w.dtype, device=w.device), w], dim=1)
        h = torch.bmm(x, a_exp.transpose(1, 2))
        h = h.mul_(w.unsqueeze(1)) if inplace else h * w.unsqueeze(1)
        return y.baddbmm_(h, b_exp) if inplace else torch.baddbmm(y, h, b_exp)

    def _loop(self, x: torch.Tensor, gate: GateOutput) -> torch.Tensor:
        r, s = self.rank, int(self.shared) * self.rank
        delta = torch.zeros(*x.shape[:-1], self.lora_B.shape[0], dtype=x.dtype, device=x.device)
        if self.shared:
            delta = delta + F.linear(F.linear(x, self.lora_A[:s]), self.lora_B[:, :s]) * self.scale
        for e in range(self.num_experts):
            rows = (gate.index == e).any(dim=1).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            a, b = self.lora_A[s + e * r: s + (e + 1) * r], self.lora_B[:, s + e * r: s + (e + 1) * r]
            w = gate.weights[rows, e].to(x.dtype).view(-1, 1, 1) * self.scale
            delta = delta.index_add(0, rows, F.linear(F.linear(x[rows], a), b) * w)
        return delta

    def extra_repr(self) -> str:
        return (f"in={self.lora_A.shape[1]}, out={self.lora_B.shape[0]}, rank={self.rank}, "
                f"experts={self.num_experts}, shared={self.shared}, scale={self.scale:g}, "
                f"gate={'layer' if self.gate is not None else 'model'}, impl={self.impl}")
