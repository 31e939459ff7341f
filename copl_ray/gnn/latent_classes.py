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
61.1, annealed 66.7, shared 61.5; `jobs/bench_group_recovery.py`). The lock-in has a cause the
E-step can remove: a response is in few pairs, so a class's score for it is mostly its own users'
labels, and scoring those users with it confirms their class. The ``leave_one_out`` E-step scores
each pair with the class scores refit without it (one Newton step, `_without_own_pairs`): plain EM
so then reaches 69.2 there (true K; annealed with it 65.4; the two trade places on other cases).

``user_init="latent_classes"`` (a `train_gnn` grid candidate; departs from the paper, which starts
the ID embeddings at random) writes each user's posterior, K and the starting temperature chosen on
the validation pairs, into the first K columns of the user table (`latent_class_start`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from copl_ray.gnn.selection import Score, better, score_margins
from copl_ray.graph.build import Triples

__all__ = ["EMResult", "latent_class_em", "latent_class_start", "LATENT_CLASS_ANNEALING", "LATENT_CLASS_COUNTS",
           "LATENT_CLASS_FALLBACK"]

LATENT_CLASS_COUNTS = (2, 3, 4, 6, 8)  # K tried by latent_class_start; validation chooses
LATENT_CLASS_FALLBACK = 6  # K when there are no validation pairs to choose with
LATENT_CLASS_ANNEALING = (1.0, 3.0)  # E-step starting temperatures tried per K (the last without validation)
_START_ITERATIONS = 60  # annealed runs cool over the first 25; then EM at temperature 1 (converged by ~50 on the suite)


@dataclass
class EMResult:
    """EM's best iteration on validation (the last without validation pairs) and what it gives there.

    ``posteriors`` [n_users, K] are those of that iteration; ``val_by_iteration`` holds every
    iteration's validation score (empty without validation pairs); the test figures are filled only
    when test pairs were passed, and never choose anything."""

    val: Score | None
    best_iteration: int
    posteriors: torch.Tensor
    test_accuracy: float | None = None
    last_test_accuracy: float | None = None
    test_by_iteration: list[float] | None = None
    val_by_iteration: list[Score] = field(default_factory=list)


def latent_class_em(n_users: int, n_responses: int, fit: Triples, n_classes: int, *, val: Triples | None = None,
                    test: Triples | None = None, init_groups: np.ndarray | None = None, iterations: int = 30,
                    m_steps: int = 20, l2: float = 0.3, lr: float = 0.05, anneal_from: float = 1.0,
                    anneal_iterations: int = 25, leave_one_out: bool = False, seed: int = 0) -> EMResult:
    """Fit the K-class mixture (module docstring) on ``fit``.

    Args:
        fit / val / test: [N] triples (dense user and response indices); val and test optional.
        n_classes: K.
        init_groups: [n_users] integer class per user to start from (0.9 on it, the rest spread),
            or None for a random start (near-uniform posteriors, scores ~ N(0, 0.01^2) to break
            the classes' symmetry).
        anneal_from: E-step temperature at the first iteration (1 = plain EM).
        leave_one_out: score each user's pairs in the E-step with the class scores their own pairs
            did not shape (`_without_own_pairs`), not with the scores fit on them.
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

    def margins(u, a, b, q):  # logit of the posterior-mixed preference, [n]
        p = (q[u] * torch.sigmoid(scores[:, a] - scores[:, b]).T).sum(1)
        return torch.logit(p.clamp(1e-6, 1 - 1e-6))

    best_val, best_it, best_q, tests, vals = None, -1, None, [], []
    for it in range(iterations):
        for _ in range(m_steps):
            log_lik = nn.functional.logsigmoid(scores[:, fa] - scores[:, fb]).T  # [n, K]: log P(a > b | k)
            loss = -(q[fu] * log_lik).sum() / len(fu) + l2 * scores.pow(2).sum() / len(fu)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            temperature = max(1.0, anneal_from ** (1.0 - it / anneal_iterations))
            diff = scores[:, fa] - scores[:, fb]
            if leave_one_out:
                diff = _without_own_pairs(diff, q[fu].T, fa, fb, n_responses, l2)
            ll = torch.zeros(n_users, n_classes).index_add_(0, fu, nn.functional.logsigmoid(diff).T) + prior.log()
            q = torch.softmax(ll / temperature, 1)
            prior = q.mean(0).clamp_min(1e-4)
            if test_t is not None:
                tests.append(score_margins(margins(*test_t, q)).accuracy)
            v = score_margins(margins(*val_t, q)) if val_t is not None else None
        if v is not None:
            vals.append(v)
        if v is None or better(v, best_val):
            best_val, best_it, best_q = v, it, q
    out = EMResult(best_val, best_it, best_q, val_by_iteration=vals)
    if test_t is not None:
        out.test_accuracy, out.last_test_accuracy, out.test_by_iteration = tests[best_it], tests[-1], tests
    return out


def _without_own_pairs(diff: torch.Tensor, weight: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
                       n_responses: int, l2: float) -> torch.Tensor:
    """Each fit pair's score difference per class with that pair's own term taken out of the fit.

    Why: a response is in few pairs, so a class's score for it is shaped mostly by the class's own
    users' labels; scoring those users with it rewards whatever class they already lean to, and EM
    locks into its first partition (plain EM from a random start ended at one shared preference on
    the suite's 6-group cases). One Newton step of the M-step objective (sum of weighted -log
    sigmoid + l2 |R|^2) without the pair, on its diagonal Hessian h_k[r] = 2 l2 + sum over the
    pairs at r of w p (1 - p), moves the difference by -w (1 - p) (1 / h_k[a] + 1 / h_k[b]).

    Args:
        diff: [K, n] R_k[chosen] - R_k[rejected]; weight: [K, n] the pair's user's posterior q_u(k).
        chosen / rejected: [n] response indices.
    Returns:
        [K, n] the leave-one-out differences.
    """
    p = torch.sigmoid(diff)
    curvature = weight * p * (1 - p)
    h = torch.full((diff.shape[0], n_responses), 2.0 * l2, dtype=diff.dtype)
    h.index_add_(1, chosen, curvature).index_add_(1, rejected, curvature)
    return diff - weight * (1 - p) * (1 / h[:, chosen] + 1 / h[:, rejected])


def latent_class_start(n_users: int, n_responses: int, fit: Triples, val: Triples | None,
                       seed: int = 0) -> tuple[np.ndarray, dict]:
    """The warm start of ``user_init="latent_classes"``: leave-one-out EM for each K in
    ``LATENT_CLASS_COUNTS`` and each starting temperature in ``LATENT_CLASS_ANNEALING`` (plain and
    annealed: each found the better groups on some suite cases), the pair with the best validation
    score kept (``LATENT_CLASS_FALLBACK`` classes, annealed, without validation pairs).

    Returns:
        (posteriors [n_users, K] float32 with unit rows,
         {"chosen_classes": K, "chosen_anneal_from": T, "val_accuracy": {K: {T: acc}}, "seconds": wall}).
    """
    t0 = time.perf_counter()
    has_val = val is not None and len(val.user) > 0
    counts = [k for k in LATENT_CLASS_COUNTS if k < n_users] if has_val else [LATENT_CLASS_FALLBACK]
    temperatures = LATENT_CLASS_ANNEALING if has_val else LATENT_CLASS_ANNEALING[-1:]
    best, report = None, {}
    for k in counts or [1]:
        for t in temperatures:
            r = latent_class_em(n_users, n_responses, fit, k, val=val if has_val else None,
                                iterations=_START_ITERATIONS, anneal_from=t, leave_one_out=True, seed=seed)
            if r.val is not None:
                report.setdefault(k, {})[t] = r.val.accuracy
            if best is None or (r.val is not None and better(r.val, best[2].val)):
                best = (k, t, r)
    q = best[2].posteriors.numpy().astype(np.float32)
    info = {"chosen_classes": best[0], "chosen_anneal_from": best[1], "val_accuracy": report,
            "seconds": time.perf_counter() - t0}
    return q / np.linalg.norm(q, axis=1, keepdims=True), info
