"""Baselines of the paper's Table 5 for unseen-user adaptation.

* **Naive Avg**: the unweighted mean of the 2-hop positive neighbours' embeddings. It is
  `copl_ray.adapt.core.adapt_batch` with ``weighting="uniform"`` (same neighbour sets, caps and
  fallback ladder as CoPL, so the comparison isolates the alignment weights).
* **User Opt**: a free embedding per unseen user fitted to the user's annotations by minimizing
  Eq. 5 with the GNN frozen: ``sum_{(a>b)} -log sigma(e_u* . (e_a - e_b)) + lambda ||e_u*||^2``,
  50 Adam steps (paper App. B: "50 gradient steps"). All users are fitted at once (their losses are
  independent, so one optimizer over a [B, d] parameter is B separate fits).

Departures, stated: the paper does not give User Opt's initialization, learning rate or lambda.
We start from the mean of the seen users' embeddings (a user with no annotation keeps it) and use
Adam at ``lr`` = 0.05 with ``weight_decay`` = 1e-4 as lambda, both configurable.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from copl_ray.adapt.artifacts import GNNArtifacts
from copl_ray.adapt.core import AdaptParams, BatchAdaptResult, _table_pairs, adapt_batch

__all__ = ["naive_avg", "user_opt", "eq5_grad"]


def naive_avg(art: GNNArtifacts, table: pa.Table, params: AdaptParams | None = None,
              user_ids=None) -> BatchAdaptResult:
    """Naive Avg (Table 5): unweighted mean of N+(k) (k = 2 in the paper)."""
    p = (params or AdaptParams()).model_copy(update={"weighting": "uniform"})
    return adapt_batch(art, table, p, user_ids=user_ids)


def eq5_grad(emb: torch.Tensor, pu: torch.Tensor, delta: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """Gradient of ``sum_p -log sigma(e_{pu_p} . delta_p) + lambda sum_u |e_u|^2`` w.r.t. ``emb [B, d]``
    (``pu [P]`` user of each pair, ``delta [P, d]``): ``-sum_p sigma(-e . delta_p) delta_p + 2 lambda e``."""
    coef = torch.sigmoid(-(emb[pu] * delta).sum(-1))
    return 2 * weight_decay * emb - torch.zeros_like(emb).index_add_(0, pu, coef[:, None] * delta)


def user_opt(art: GNNArtifacts, table: pa.Table, user_ids=None, steps: int = 50, lr: float = 0.05,
             weight_decay: float = 1e-4) -> BatchAdaptResult:
    """User Opt (Table 5): per-user free embeddings fitted on Eq. 5 with the GNN frozen.

    Args:
        table: annotations ``user_id``, ``chosen_id``, ``rejected_id`` ([P] rows).
        user_ids: users to fit ([B]); default: those of ``table`` in first-appearance order.
    Returns:
        `BatchAdaptResult` (``embeddings [B, d]``; resolution ``"optimized"`` or
        ``"population_mean"`` for users without annotations; ``n_neighbors`` 0).
    """
    row_users = table.column("user_id").combine_chunks()
    users = pc.unique(row_users) if user_ids is None else pa.array(user_ids, type=pa.string())
    idx = pc.index_in(row_users, value_set=users)
    if idx.null_count:
        row = int(np.flatnonzero(idx.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"annotations: row {row}: field 'user_id' is not among the users to fit")
    pu = torch.from_numpy(idx.to_numpy(zero_copy_only=False).astype(np.int64))
    chosen, rejected = _table_pairs(art, table)
    delta = (art.e_resp[torch.from_numpy(chosen)] - art.e_resp[torch.from_numpy(rejected)]).detach()
    B = len(users)
    n_ann = np.bincount(pu.numpy(), minlength=B)
    fitted = torch.from_numpy(n_ann > 0)[:, None]
    emb = art.population_mean.detach().repeat(B, 1)
    # Adam written out with the closed-form gradient (`eq5_grad`): torch.optim's and autograd's
    # per-step overhead dominates these tiny problems and would flatter CoPL's speed ratio.
    m, v = torch.zeros_like(emb), torch.zeros_like(emb)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        grad = eq5_grad(emb, pu, delta, weight_decay) * fitted  # users without annotations keep the population mean
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        step = lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        emb -= step
    resolution = np.where(n_ann > 0, "optimized", "population_mean").astype(object)
    return BatchAdaptResult(users, emb, np.zeros(B, np.int64), n_ann, resolution)
