"""Losses of the reward model: BTL (Eq. 7), and two optional extras from the paper's Limitations.

- `btl_loss`: ``-log sigmoid(r_chosen - r_rejected)`` averaged over pairs. Optional per-pair
  ``weights`` (reweighting, e.g. inverse group frequency for minority users) and ``focal_gamma``
  (focal loss, Lin et al. 2017: ``-(1 - p)^gamma log p`` with ``p = sigmoid(margin)``, which
  down-weights pairs the model already ranks right). Both off by default = the paper's loss.
- `load_balancing_loss`: the Switch-Transformer auxiliary loss ``M * sum_i f_i P_i`` over the gate
  (f_i: fraction of sequences routed to expert i; P_i: mean gate probability of expert i). It is 1
  when routing is uniform and M when every sequence picks one expert. CoPL does not use it
  ("we did not apply load-balancing loss"); off by default in the model config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["btl_loss", "load_balancing_loss"]


def btl_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, weights: torch.Tensor | None = None,
             focal_gamma: float = 0.0) -> torch.Tensor:
    """Bradley-Terry-Luce negative log-likelihood of the chosen response.

    Args:
        r_chosen: [B] rewards of the chosen responses.
        r_rejected: [B] rewards of the rejected responses (pair b = (r_chosen[b], r_rejected[b])).
        weights: optional [B] non-negative pair weights; the loss is their weighted mean.
        focal_gamma: >= 0; 0 gives plain BTL.
    Returns:
        scalar (float32).
    """
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1:
        raise ValueError(f"r_chosen and r_rejected must both be [B], got {list(r_chosen.shape)} "
                         f"and {list(r_rejected.shape)}")
    if focal_gamma < 0:
        raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
    margin = r_chosen.float() - r_rejected.float()
    nll = -F.logsigmoid(margin)
    if focal_gamma > 0:
        # (1 - p)^gamma = sigmoid(-margin)^gamma, computed in log space for stability.
        nll = torch.exp(focal_gamma * F.logsigmoid(-margin)) * nll
    if weights is None:
        return nll.mean()
    if weights.shape != nll.shape:
        raise ValueError(f"weights must be [B] = {list(nll.shape)}, got {list(weights.shape)}")
    weights = weights.to(nll.dtype)
    if (weights < 0).any():
        raise ValueError("weights must be non-negative")
    return (weights * nll).sum() / weights.sum().clamp_min(torch.finfo(nll.dtype).tiny)


def load_balancing_loss(gate_probs: torch.Tensor, expert_index: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load-balancing loss, averaged over any leading routing dims.

    Args:
        gate_probs: [B, M] (model scope) or [B, L, M] (one gate per layer) softmax probabilities.
        expert_index: [B] / [B, L] top-1 experts, or [..., k] top-k (each choice counts 1/k).
    Returns:
        scalar; gradient flows through ``gate_probs`` only (the routing counts are constants).
    """
    num_experts = gate_probs.shape[-1]
    if expert_index.dim() == gate_probs.dim() - 1:
        expert_index = expert_index.unsqueeze(-1)
    if expert_index.shape[:-1] != gate_probs.shape[:-1]:
        raise ValueError(f"expert_index {list(expert_index.shape)} does not match gate_probs "
                         f"{list(gate_probs.shape)}")
    probs = gate_probs.float().reshape(gate_probs.shape[0], -1, num_experts)     # [B, L, M]
    index = expert_index.reshape(gate_probs.shape[0], probs.shape[1], -1)         # [B, L, k]
    counts = F.one_hot(index, num_experts).float().mean(dim=2)                    # [B, L, M]
    f = counts.mean(dim=0)                                                         # [L, M]
    p = probs.mean(dim=0)                                                          # [L, M]
    return num_experts * (f * p).sum(dim=-1).mean()
