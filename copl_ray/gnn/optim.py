"""AdamW for large embedding tables fed row-sparse gradients, and the trainer's optimizer factory.

A sampled step at 1M users and d=64 reads ~18% of the user table's rows (L=2, fan-outs [10, 10],
512 pairs), yet with a dense gradient the step pays for the whole table three times: autograd
allocates and zeroes a 1M x 64 gradient (~0.15 s on one thread here, mostly page faults), the
row-wise exchange scans it for non-zero rows (~0.13 s), and torch's default (foreach) AdamW reads
and writes the table and both moments (~0.33-0.52 s). Embedding lookups with
``nn.Embedding(sparse=True)`` instead give a sparse COO gradient holding only the looked-up rows
(`use_sparse_embedding_grads`), and `RowSparseAdamW` steps it in one of two ways:

- ``lazy=False`` (exact): the rows are added into a persistent dense buffer (allocated once,
  re-zeroed row-wise after the step) and the table takes torch's fused AdamW step. The result is
  AdamW's (``tests/test_gnn_optim.py``); the step costs one fused pass over the table.
- ``lazy=True``: only the rows present get their moments, weight decay and update (gather, fused
  step, scatter). Departure from AdamW, stated: a row absent from a step's gradient is left as it
  is (no decoupled weight decay; its moments neither decay nor keep moving it), where AdamW would
  decay it and move it with its momentum. Bias corrections use the parameter's step count, as
  `torch.optim.SparseAdam` and TensorFlow's ``LazyAdamOptimizer`` do: the lazy update is the
  standard treatment of large embedding tables (those two; TorchRec's fused row-wise optimizers).
  When every row is present at every step it is AdamW exactly. Its cost grows with the rows
  touched, so it wins over the exact step only when a step touches a small share of the table.

Dense gradients (layer weights; embedding tables read whole in full-graph mode) take the same
fused AdamW step in both modes.
"""

from __future__ import annotations

from typing import Iterable, Literal

import torch
from torch import Tensor, nn
from torch.optim.adamw import adamw as _adamw  # torch's functional AdamW (what AdamW.step runs)

__all__ = ["RowSparseAdamW", "build_optimizer", "use_sparse_embedding_grads", "clip_grad_norm_",
           "OPTIMIZERS"]

OPTIMIZERS = ("adamw", "sparse_grad_adamw", "row_sparse_adamw")


def _fused_ok(tensors: list[Tensor]) -> bool:
    """torch's fused AdamW kernel exists for floating tensors on CPU and CUDA."""
    return all(t.device.type in ("cpu", "cuda") and t.is_floating_point() for t in tensors)


class RowSparseAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) that takes row-sparse gradients; exact or lazy (module docstring).

    Args:
        params: parameters or parameter groups, as for `torch.optim.AdamW`.
        lr, betas, eps, weight_decay: as `torch.optim.AdamW` (same defaults).
        lazy: False: AdamW's step for every row (sparse gradients are densified in a persistent
            buffer); True: rows absent from a sparse gradient are not updated.

    Update, for a dense gradient g (and in lazy mode for the rows R of a sparse one, on p[R], m[R],
    v[R]; duplicate rows are summed first): p <- p (1 - lr wd); m <- b1 m + (1-b1) g;
    v <- b2 v + (1-b2) g^2; p <- p - lr/(1-b1^t) m / (sqrt(v / (1-b2^t)) + eps), t = the
    parameter's step count. Computed by torch's functional ``adamw`` (fused kernel on CPU/CUDA).

    Shapes: a sparse gradient must be row-sparse (``sparse_dim == 1``), as an
    ``nn.Embedding(sparse=True)`` lookup gives: [N, d] with values [nnz, d].
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, lazy: bool = True):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid RowSparseAdamW hyper-parameters: lr={lr} betas={betas} eps={eps}"
                             f" weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.lazy = lazy
        self._grad_buffers: dict[int, Tensor] = {}  # exact mode: per parameter, zero between steps

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            ps, gs, ms, vs, steps = [], [], [], [], []
            scatter: list[tuple[Tensor, Tensor, dict, int]] = []  # lazy: (param, rows, state, slot)
            refill: list[tuple[Tensor, Tensor]] = []  # exact: (buffer, rows) to re-zero after
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    # torch.optim.AdamW(fused=True)'s layout: float32 step on the device, full moments.
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                grad, m, v = p.grad, state["exp_avg"], state["exp_avg_sq"]
                param = p
                if grad.is_sparse:
                    if grad.sparse_dim() != 1:
                        raise ValueError(f"RowSparseAdamW: sparse gradients must be row-sparse, got"
                                         f" sparse_dim={grad.sparse_dim()} for shape {tuple(p.shape)}")
                    if self.lazy:
                        rows, grad = _unique_rows(grad)
                        param, m, v = p.index_select(0, rows), m.index_select(0, rows), v.index_select(0, rows)
                        scatter.append((p, rows, state, len(ps)))
                    else:
                        buf = self._grad_buffers.get(id(p))
                        if buf is None:
                            buf = self._grad_buffers[id(p)] = torch.zeros_like(p)
                        rows = grad._indices()[0]
                        buf.index_add_(0, rows, grad._values())  # sums duplicate rows
                        refill.append((buf, rows))
                        grad = buf
                ps.append(param)
                gs.append(grad)
                ms.append(m)
                vs.append(v)
                steps.append(state["step"])
            if not ps:
                continue
            beta1, beta2 = group["betas"]
            _adamw(ps, gs, ms, vs, [], steps, fused=_fused_ok(ps) or None, amsgrad=False, beta1=beta1,
                   beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                   maximize=False)
            for p, rows, state, i in scatter:
                p.index_copy_(0, rows, ps[i])
                state["exp_avg"].index_copy_(0, rows, ms[i])
                state["exp_avg_sq"].index_copy_(0, rows, vs[i])
            for buf, rows in refill:
                buf.index_fill_(0, rows, 0.0)
        return loss


def _unique_rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """(rows [R], values [R, d]) of a row-sparse gradient, each row once (duplicates summed).

    An embedding lookup over distinct ids (a sampled subgraph's nodes) already has distinct rows:
    a bincount (one pass over the table's row count) confirms it and skips the sort of `coalesce`.
    """
    if not grad.is_coalesced():
        rows = grad._indices()[0]
        if rows.numel() and int(torch.bincount(rows, minlength=grad.shape[0]).max()) > 1:
            grad = grad.coalesce()
        else:
            return rows, grad._values()
    return grad.indices()[0], grad.values()


def use_sparse_embedding_grads(model: nn.Module, enabled: bool = True) -> int:
    """Make every ``nn.Embedding`` lookup of ``model`` give a row-sparse gradient (or a dense one).

    Only lookups (``emb(ids)``) become sparse; code reading ``emb.weight`` directly (full-graph
    propagation) still gets a dense gradient. Call it before wrapping the model in DDP, which reads
    the flag when it is built. Returns the number of tables switched.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.sparse = enabled
            n += 1
    return n


def build_optimizer(params: Iterable, name: Literal["adamw", "sparse_grad_adamw", "row_sparse_adamw"],
                    lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``adamw``: `torch.optim.AdamW` (dense gradients only); ``sparse_grad_adamw``: exact
    `RowSparseAdamW`; ``row_sparse_adamw``: lazy `RowSparseAdamW`. For the two sparse ones, call
    `use_sparse_embedding_grads` on the model first, or they only ever see dense gradients."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name in ("sparse_grad_adamw", "row_sparse_adamw"):
        return RowSparseAdamW(params, lr=lr, weight_decay=weight_decay, lazy=name == "row_sparse_adamw")
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


@torch.no_grad()
def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """`torch.nn.utils.clip_grad_norm_` (L2 over all gradients) that also takes row-sparse gradients:
    their norm is over the coalesced values, and clipping scales the values."""
    grads = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # duplicate rows must be summed before the norm
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)
    return total
