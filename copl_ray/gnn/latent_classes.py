"""A latent-class Bradley-Terry mixture fit by (annealed) EM, and the GNN warm start built from it.

Users of a group choose alike; a K-class mixture says so directly: class k has a score R_k[r] per
response, a user belongs to class k with posterior q_u(k), and P(a > b | u) = sum_k q_u(k)
sigmoid(R_k[a] - R_k[b]). EM alternates the E-step (each user's posterior from their pairs) and an
M-step (Adam steps on the posterior-weighted BTL loss, L2 on the scores per fit pair).

Plain EM from a random start locks into the first partition the noise suggests: on the robustness
suite's 5-6-group cases it ended at one shared preference, like spectral clustering and the GNN
(issue 14). Deterministic annealing fixes much of that: the E-step divides the log-likelihoods by a
temperature that falls geometrically from ``anneal_from`` to 1 over ``anneal_iterations``, so the
classes split one at a time as the data warrant (g6_8attr_sparse, 4,000 users, seed 1, K=6: plain
61.1, annealed 66.7, shared 61.5; `jobs/bench_group_recovery.py`).

``user_init="latent_classes"`` (a `train_gnn` grid candidate; departs from the paper, which starts
the ID embeddings at random) writes each user's posterior, K chosen on the validation pairs from
``LATENT_CLASS_COUNTS``, into the first K columns of the user table (`latent_class_start`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from copl_ray.gnn.selection import Score, better, score_margins
from copl_ray.graph.build import Triples

__all__ = ["EMResult", "latent_class_em", "latent_class_start", "LATENT_CLASS_COUNTS", "LATENT_CLASS_FALLBACK"]

LATENT_CLASS_COUNTS = (2, 3, 4, 6, 8)  # K tried by latent_class_start; validation chooses
LATENT_CLASS_FALLBACK = 6  # K when there are no validation pairs to choose with
_START_ITERATIONS = 60  # annealing over the first 25, then EM at temperature 1 (converged by ~50 on the suite)


@dataclass
class EMResult:
    """EM's best iteration on validation (the last without validation pairs) and what it gives there.

    ``posteriors`` [n_users, K] are those of that iteration; the test figures are filled only when
    test pairs were passed, and never choose anything."""

    val: Score | None
    best_iteration: int
    posteriors: torch.Tensor
    test_accuracy: float | None = None
    last_test_accuracy: float | None = None
    test_by_iteration: list[float] | None = None


def latent_class_em(n_users: int, n_responses: int, fit: Triples, n_classes: int, *, val: Triples | None = None,
                    test: Triples | None = None, init_groups: np.ndarray | None = None, iterations: int = 30,
                    m_steps: int = 20, l2: float = 0.3, lr: float = 0.05, anneal_from: float = 1.0,
                    anneal_iterations: int = 25, seed: int = 0) -> EMResult:
    """Fit the K-class mixture (module docstring) on ``fit``.

    Args:
        fit / val / test: [N] triples (dense user and response indices); val and test optional.
        n_classes: K.
        init_groups: [n_users] integer class per user to start from (0.9 on it, the rest spread),
            or None for a random start (near-uniform posteriors, scores ~ N(0, 0.01^2) to break
            the classes' symmetry).
        anneal_from: E-step temperature at the first iteration (1 = plain EM).
    Returns:
        `EMResult`; iteration i's figures are taken after its M-step and E-step.
    """
    if anneal_from < 1.0:
        raise ValueError(f"anneal_from must be >= 1 (a temperature that falls to 1), got {anneal_from}")
    gen = torch.Generator().manual_seed(seed)
    if init_groups is None:
        q = torch.softmax(0.1 * torch.randn(n_users, n_classes, generator=gen), 1)
        scores = 0.01 * torch.randn(n_classes, n_responses, generator=gen)
    else:
        q = nn.functional.one_hot(torch.as_tensor(init_groups, dtype=torch.int64), n_classes).float()
        q = 0.9 * q + 0.1 / n_classes
        scores = torch.zeros(n_classes, n_responses)
    prior = q.mean(0)
    scores.requires_grad_(True)  # R [K, n_responses]
    opt = torch.optim.Adam([scores], lr=lr)
    fu, fa, fb = fit.as_tensors()
    val_t = val.as_tensors() if val is not None and len(val) else None
    test_t = test.as_tensors() if test is not None else None

    def log_lik(a, b):  # [n, K]: log P(a > b | class k)
        return nn.functional.logsigmoid(scores[:, a] - scores[:, b]).T

    def margins(u, a, b, q):  # logit of the posterior-mixed preference, [n]
        p = (q[u] * torch.sigmoid(scores[:, a] - scores[:, b]).T).sum(1)
        return torch.logit(p.clamp(1e-6, 1 - 1e-6))

    best_val, best_it, best_q, tests = None, -1, None, []
    for it in range(iterations):
        for _ in range(m_steps):
            loss = -(q[fu] * log_lik(fa, fb)).sum() / len(fu) + l2 * scores.pow(2).sum() / len(fu)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            temperature = max(1.0, anneal_from ** (1.0 - it / anneal_iterations))
            ll = torch.zeros(n_users, n_classes).index_add_(0, fu, log_lik(fa, fb)) + prior.log()
            q = torch.softmax(ll / temperature, 1)
            prior = q.mean(0).clamp_min(1e-4)
            if test_t is not None:
                tests.append(score_margins(margins(*test_t, q)).accuracy)
            v = score_margins(margins(*val_t, q)) if val_t is not None else None
        if v is None or better(v, best_val):
            best_val, best_it, best_q = v, it, q
    out = EMResult(best_val, best_it, best_q)
    if test_t is not None:
        out.test_accuracy, out.last_test_accuracy, out.test_by_iteration = tests[best_it], tests[-1], tests
    return out


def latent_class_start(n_users: int, n_responses: int, fit: Triples, val: Triples | None,
                       seed: int = 0) -> tuple[np.ndarray, dict]:
    """The warm start of ``user_init="latent_classes"``: annealed EM for each K in
    ``LATENT_CLASS_COUNTS``, the K with the best validation score kept (``LATENT_CLASS_FALLBACK``
    without validation pairs).

    Returns:
        (posteriors [n_users, K] float32 with unit rows, {"chosen_classes": K, "val_accuracy": {K: acc}}).
    """
    has_val = val is not None and len(val.user) > 0
    counts = [k for k in LATENT_CLASS_COUNTS if k < n_users] if has_val else [LATENT_CLASS_FALLBACK]
    best, report = None, {}
    for k in counts or [1]:
        r = latent_class_em(n_users, n_responses, fit, k, val=val if has_val else None,
                            iterations=_START_ITERATIONS, anneal_from=3.0, seed=seed)
        if r.val is not None:
            report[k] = r.val.accuracy
        if best is None or (r.val is not None and better(r.val, best[1].val)):
            best = (k, r)
    q = best[1].posteriors.numpy().astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True), {"chosen_classes": best[0], "val_accuracy": report}
