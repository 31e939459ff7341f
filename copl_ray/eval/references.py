"""The references a user compares a personalized model against, fit in-process on the same split.

`jobs/bench_robustness.py` scores `train_gnn` (run as a user runs it) against:

* ``shared``: one preference for everyone, a learned score per response (s_{u,r} = b_r);
* ``free``: free user and response embeddings without a graph (s = e_u . e_r, the paper's "w/o GNN
  embedding"), its dimension and L2 (Eq. 5's per-batch penalty) tuned on validation from
  ``FREE_GRID``;
* ``true_groups``: a learner given every user's true group: a score per (group, response). An
  upper reference for group-structured data (it knows what the others must infer);
* ``clusters``: groups inferred from the annotations alone, without a GNN: spectral clustering of
  the signed user-user agreement matrix A = B B^T (B: users x responses, +1 chosen, -1 rejected;
  `copl_ray.gnn.agreement_init`, the spectrum ``train_gnn`` can start from), then a score per
  (cluster, response); the eigenvector count and cluster count are chosen on
  validation. Where it, too, stays near ``shared`` while ``true_groups`` is far above, the groups
  are not recoverable from this many annotations by such a learner (below the detection threshold
  of community detection: too few co-annotations per user for this many groups).

Each is trained with Adam on the fit pairs (minibatches of 1024, one thread, no Ray), selected on
the validation pairs by epoch (and grid point), and reports the test accuracy at the selected point
(ties count half). Test labels never choose anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from copl_ray.gnn.agreement_init import agreement_spectrum
from copl_ray.gnn.selection import Score, better, score_margins
from copl_ray.graph.build import Triples

__all__ = ["FREE_GRID", "CLUSTER_GRID", "Fit", "fit_shared", "fit_free", "fit_true_groups", "fit_clusters",
           "REFERENCES", "group_ids", "reference_split", "fit_references", "fit_references_for"]

FREE_GRID = tuple((d, l2) for d in (2, 4, 8, 16) for l2 in (0.03, 0.1, 0.3, 1.0))
CLUSTER_GRID = tuple((k, c) for k in (4, 8) for c in (2, 3, 4, 6))  # (eigenvectors, clusters)


@dataclass
class Fit:
    """A reference's selected point: validation score, test accuracy there, and its settings."""

    val: Score
    test_accuracy: float
    settings: dict


class _TableScorer(nn.Module):
    """s(u, r) = <U[u], R[r]>, or R[r] alone (``fixed_user``): the references differ in their tables."""

    def __init__(self, n_users: int, n_responses: int, dim: int, fixed_user: bool):
        super().__init__()
        self.fixed_user = fixed_user  # every user vector is [1]: s = R[r] (dim 1)
        self.U = None if fixed_user else nn.Embedding(n_users, dim)
        self.R = nn.Embedding(n_responses, dim)
        for e in (self.U, self.R):
            if e is not None:
                nn.init.normal_(e.weight, std=0.01)

    def margin(self, u: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_a - s_b [B], L2 term: batch mean of the rows' squared norms)."""
        if self.fixed_user:
            ra, rb = self.R(a), self.R(b)
            return (ra - rb).squeeze(-1), (ra.pow(2).sum(-1) + rb.pow(2).sum(-1)).mean()
        eu = self.U(u)
        ra, rb = self.R(a), self.R(b)
        return (eu * (ra - rb)).sum(-1), (eu.pow(2).sum(-1) + ra.pow(2).sum(-1) + rb.pow(2).sum(-1)).mean()


def _train(model: _TableScorer, fit: Triples, val: Triples, test: Triples, *, l2: float, lr: float,
           epochs: int, seed: int, remap=None) -> tuple[Score, float, int]:
    """Adam on fit; returns (best validation score, test accuracy at that epoch, that epoch)."""
    remap = remap or (lambda u, a, b: (u, a, b))
    F, V, T = (remap(*x.as_tensors()) for x in (fit, val, test))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    best, best_test, best_epoch = None, float("nan"), -1
    for epoch in range(epochs):
        perm = torch.randperm(len(F[0]), generator=gen)
        for i in range(0, len(perm), 1024):
            idx = perm[i:i + 1024]
            m, reg = model.margin(*(x[idx] for x in F))
            loss = -nn.functional.logsigmoid(m).mean() + l2 * reg
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            score = score_margins(model.margin(*V)[0])
            if better(score, best):
                best, best_test, best_epoch = score, score_margins(model.margin(*T)[0]).accuracy, epoch
    return best, best_test, best_epoch


def fit_shared(n_users: int, n_responses: int, fit: Triples, val: Triples, test: Triples,
               epochs: int = 15, lr: float = 1e-2, seed: int = 0) -> Fit:
    """One preference for everyone (per-response score)."""
    torch.manual_seed(seed)
    model = _TableScorer(1, n_responses, 1, fixed_user=True)
    v, t, e = _train(model, fit, val, test, l2=0.0, lr=lr, epochs=epochs, seed=seed)
    return Fit(v, t, {"epoch": e})


def fit_free(n_users: int, n_responses: int, fit: Triples, val: Triples, test: Triples,
             grid=FREE_GRID, epochs: int = 30, lr: float = 1e-2, seed: int = 0) -> Fit:
    """Free embeddings without a graph, dimension and L2 chosen on validation from ``grid``."""
    best = None
    for dim, l2 in grid:
        torch.manual_seed(seed)
        model = _TableScorer(n_users, n_responses, dim, fixed_user=False)
        v, t, e = _train(model, fit, val, test, l2=l2, lr=lr, epochs=epochs, seed=seed)
        if best is None or better(v, best.val):
            best = Fit(v, t, {"dim": dim, "l2": l2, "epoch": e})
    return best


def group_ids(group_of_user) -> np.ndarray:
    """[n_users] int64 group index per user from group names (None where unknown: one extra group)."""
    names = np.array(["" if g is None else str(g) for g in group_of_user])
    return np.unique(names, return_inverse=True)[1].astype(np.int64)


def fit_true_groups(group_of_user: np.ndarray, n_responses: int, fit: Triples, val: Triples, test: Triples,
                    epochs: int = 15, lr: float = 1e-2, seed: int = 0) -> Fit:
    """A score per (true group, response): the learner told every user's group.

    ``group_of_user``: [n_users] group names (None where unknown: those users share one extra group).
    """
    gid = torch.from_numpy(group_ids(group_of_user))
    n_groups = int(gid.max()) + 1 if len(gid) else 1
    torch.manual_seed(seed)
    model = _TableScorer(1, n_groups * n_responses, 1, fixed_user=True)

    def remap(u, a, b):  # response r of group g is row g * n_responses + r
        off = gid[u] * n_responses
        return u, a + off, b + off

    v, t, e = _train(model, fit, val, test, l2=0.0, lr=lr, epochs=epochs, seed=seed, remap=remap)
    return Fit(v, t, {"epoch": e, "n_groups": n_groups})


def fit_clusters(n_users: int, n_responses: int, fit: Triples, val: Triples, test: Triples,
                 grid=CLUSTER_GRID, seed: int = 0) -> Fit:
    """Groups inferred from agreement (spectral + k-means), a score per (cluster, response)."""
    from sklearn.cluster import KMeans

    best = None
    for k in sorted({k for k, _ in grid}):
        emb = agreement_spectrum(n_users, n_responses, fit, k, seed)
        for kk, n_clusters in grid:
            if kk != k:
                continue
            labels = KMeans(n_clusters, n_init=4, random_state=seed).fit_predict(emb)
            f = fit_true_groups(labels, n_responses, fit, val, test, seed=seed)
            if best is None or better(f.val, best.val):
                best = Fit(f.val, f.test_accuracy, {"eigenvectors": k, "clusters": n_clusters,
                                                   "epoch": f.settings["epoch"]})
    return best


REFERENCES = ("shared", "free", "clusters", "true_groups")


def fit_references_for(dataset, gnn_dir, which=REFERENCES) -> dict[str, Fit]:
    """`fit_references` on the validation split a ``train_gnn`` output carved (its resolved
    ``val_fraction`` and ``seed`` in ``gnn_dir/config.yaml``), so references and GNN share it;
    ``val_fraction: 0`` there: train_gnn's default share."""
    from pathlib import Path

    import yaml

    from copl_ray.gnn.train import TrainGNNConfig

    ran = yaml.safe_load((Path(gnn_dir) / "config.yaml").read_text())
    # A run without validation (val_fraction 0) leaves the references nothing to choose their
    # settings on: they carve train_gnn's default share instead.
    val_fraction = ran["val_fraction"] or TrainGNNConfig.model_fields["val_fraction"].default
    return fit_references(dataset, val_fraction, ran["seed"], which)


def reference_split(dataset, val_fraction: float, seed: int):
    """(built graph, fit, validation, test) triples: ``train_gnn``'s split of ``annotations/train``
    for (``val_fraction``, ``seed``), and the seen test pairs whose responses are both in the graph."""
    from copl_ray.gnn.selection import split_validation
    from copl_ray.graph.build import build_graph, index_annotations

    built = build_graph(dataset)
    test = index_annotations(dataset, "test", built.user_map, built.response_map)
    in_graph = built.graph.response_in_graph()
    keep = in_graph[test.chosen] & in_graph[test.rejected]
    test = type(test)(test.user[keep], test.chosen[keep], test.rejected[keep])
    fit, val = split_validation(built.train, val_fraction, seed)
    return built, fit, val, test


def fit_references(dataset, val_fraction: float, seed: int, which=REFERENCES) -> dict[str, Fit]:
    """The references ``which`` on a dataset, on the validation split ``train_gnn`` carves with
    (``val_fraction``, ``seed``) and scored on the seen test pairs it scores (both responses in the
    training graph). ``true_groups`` is left out when ``users.group`` names no group."""
    built, fit, val, test = reference_split(dataset, val_fraction, seed)
    n_u, n_r = built.graph.n_users, built.graph.n_responses
    fits = {"shared": lambda: fit_shared(n_u, n_r, fit, val, test),
            "free": lambda: fit_free(n_u, n_r, fit, val, test),
            "clusters": lambda: fit_clusters(n_u, n_r, fit, val, test),
            "true_groups": lambda: fit_true_groups(built.user_group, n_r, fit, val, test)}
    has_groups = any(g is not None for g in built.user_group)
    return {name: fits[name]() for name in which if name != "true_groups" or has_groups}
