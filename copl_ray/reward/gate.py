"""The user-embedding gate of CoPL's MoLE (paper Eq. 9-10).

``z = g(e_u)`` with ``g`` a two-layer MLP (hidden 256, ReLU) over the frozen GNN user embedding, and

    w_i = softmax(z / tau)_i   if i is among the top-k logits (paper: k = 1),   else 0.

The kept weights are *not* renormalised (Eq. 10 as written), so the argmax itself has no gradient
but the softmax weight of the chosen expert does: that is how the gate learns. With ``top_k > 1``
(paper: "one can use top-k experts") the top-k softmax values are kept the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["GateOutput", "UserGate", "expert_mask"]


@dataclass
class GateOutput:
    """probs [B, M] full softmax, weights [B, M] (top-k kept, rest 0), index [B, k] chosen experts."""

    probs: torch.Tensor
    weights: torch.Tensor
    index: torch.Tensor


class UserGate(nn.Module):
    """``e_u [B, d_u] -> GateOutput`` (Eq. 9-10).

    Args:
        user_dim: width of the user embedding.
        num_experts: M.
        hidden: MLP hidden width (paper: 256).
        top_k: experts kept per sequence (paper: 1).
        temperature: tau (paper: 1).
    Shapes:
        user_emb [B, d_u] -> probs [B, M], weights [B, M], index [B, top_k] (long).
    """

    def __init__(self, user_dim: int, num_experts: int, hidden: int = 256, top_k: int = 1,
                 temperature: float = 1.0):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.user_dim, self.num_experts, self.hidden = user_dim, num_experts, hidden
        self.top_k, self.temperature = top_k, temperature
        self.mlp = nn.Sequential(nn.Linear(user_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_experts))

    def reset_parameters(self) -> None:
        for layer in (self.mlp[0], self.mlp[2]):
            layer.reset_parameters()

    def forward(self, user_emb: torch.Tensor) -> GateOutput:
        if user_emb.dim() != 2 or user_emb.shape[1] != self.user_dim:
            raise ValueError(f"user_emb must be [B, {self.user_dim}], got {list(user_emb.shape)}")
        w_dtype = self.mlp[0].weight.dtype
        logits = self.mlp(user_emb.to(w_dtype))
        probs = torch.softmax(logits.float() / self.temperature, dim=-1).to(w_dtype)
        index = logits.topk(self.top_k, dim=-1).indices
        keep = torch.zeros_like(probs).scatter_(1, index, 1.0)
        return GateOutput(probs=probs, weights=probs * keep, index=index)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.user_dim} -> {self.hidden} -> {self.num_experts}, "
                f"top_k={self.top_k}, tau={self.temperature})")


def expert_mask(weights: torch.Tensor | None, batch: int, rank: int, shared: bool, scale: float,
                dtype: torch.dtype, device) -> torch.Tensor:
    """The [B, (S+M)r] rank-space mask of the stacked adapters (S = 1 with a shared expert).

    1 on the shared block, the gate weight w_i on expert i's r columns (0 for unchosen experts),
    all times the LoRA scale alpha/r, so the scale costs no extra op per layer.

    Args:
        weights: [B, M] gate weights, or None for a shared-only (plain LoRA) adapter.
    """
    parts = []
    if shared:
        parts.append(torch.ones(batch, rank, dtype=dtype, device=device))
    if weights is not None:
        parts.append(weights.to(dtype).repeat_interleave(rank, dim=1))
    return torch.cat(parts, dim=1) * scale
