"""The agreement-spectrum warm start of the user table (copl_ray.gnn.agreement_init): the matrix-free
operator equals the dense definition, planted groups separate, and `train_gnn` starts from it (and
from the latent-class start, whose own tests are in test_latent_classes.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from copl_ray.gnn.agreement_init import agreement_spectrum, signed_incidence, warm_start_users
from copl_ray.graph.build import Triples


def _planted(n_users: int = 120, n_responses: int = 60, per_user: int = 12, seed: int = 0,
             silent_users: int = 0) -> tuple[Triples, np.ndarray]:
    """Two groups with opposite preferences over the first half of the responses vs the second."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_users) % 2
    users, chosen, rejected = [], [], []
    for u in range(n_users - silent_users):
        for _ in range(per_user):
            a, b = rng.integers(0, n_responses // 2), rng.integers(n_responses // 2, n_responses)
            first, second = (a, b) if group[u] == 0 else (b, a)
            users.append(u), chosen.append(first), rejected.append(second)
    return Triples(np.array(users), np.array(chosen), np.array(rejected)), group


def _dense_normalised(n_users: int, n_responses: int, t: Triples) -> np.ndarray:
    b = signed_incidence(n_users, n_responses, t).toarray()
    a = b @ b.T
    a -= np.diag(np.diag(a))
    co = np.abs(b) @ np.abs(b).sum(0) - np.diag(b @ b.T)
    d = (1.0 + co) ** -0.5
    return d[:, None] * a * d[None, :]


def test_matrix_free_spectrum_spans_the_dense_top_eigenvectors():
    t, _ = _planted(n_users=40, n_responses=30, per_user=6, seed=1)
    k = 3
    got = agreement_spectrum(40, 30, t, k, seed=0)
    vals, vecs = np.linalg.eigh(_dense_normalised(40, 30, t))
    top = vecs[:, np.argsort(vals)[::-1][:k]]
    top = top / np.linalg.norm(top, axis=1, keepdims=True)
    # Same subspace: each row-normalised spectrum row is a rotation of the other (up to row scaling).
    gram_got = got @ got.T
    gram_ref = top @ top.T
    assert np.abs(np.abs(gram_got) - np.abs(gram_ref)).max() < 1e-6


def test_planted_groups_separate_and_silent_users_get_zero_rows():
    t, group = _planted(silent_users=4)
    emb = agreement_spectrum(len(group), 60, t, 2, seed=0)
    assert emb.shape == (120, 2) and np.isfinite(emb).all()
    assert np.all(emb[-4:] == 0)  # no annotation, no direction (never NaN)
    sign = np.sign(emb[:-4] @ emb[0])  # alike with user 0 or not
    assert np.all((sign > 0) == (group[:-4] == group[0]))
    assert sp.issparse(signed_incidence(3, 2, Triples(np.array([0]), np.array([0]), np.array([1]))))


def test_warm_start_writes_the_first_columns_at_the_asked_norm():
    w = torch.nn.Embedding(5, 6).weight
    before = w.detach().clone()
    spec = np.eye(5, 3)
    spec[4] = 0.0
    warm_start_users(w, spec, norm=0.1)
    assert torch.allclose(w[:3, :3].norm(dim=1), torch.full((3,), 0.1))
    assert torch.equal(w[4, :3], torch.zeros(3))
    assert torch.equal(w[:, 3:], before[:, 3:])  # the rest stays random
    wide = torch.zeros(5, 2)
    warm_start_users(wide, spec, norm=1.0)  # k > d keeps the first d
    assert torch.equal(wide, torch.tensor(spec[:, :2], dtype=torch.float32))


def test_too_few_users_start_from_nothing():
    spec = agreement_spectrum(2, 2, Triples(np.array([0]), np.array([0]), np.array([1])), 2)
    assert spec.shape == (2, 0)
    w = torch.ones(2, 3)
    warm_start_users(w, spec, norm=0.1)
    assert torch.equal(w, torch.ones(2, 3))


@pytest.mark.integration
@pytest.mark.parametrize("user_init", ["agreement", "latent_classes"])
def test_train_gnn_starts_from_the_warm_start(ray_session, small_ufp4, tmp_path, user_init):
    """Both warm starts of the user table (agreement spectrum; latent classes, copl_ray.gnn.latent_classes)."""
    from tests.job_loader import load_job

    out = tmp_path / "gnn"
    load_job("train_gnn").main([f"dataset={small_ufp4}", f"output_dir={out}", "grid=false", "epochs=2",
                                "transform=true", "activation=true", "l2=0.3", f"user_init={user_init}",
                                "holdout_fraction=0.1"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection"]["chosen"]["user_init"] == user_init
    assert metrics["gnn_holdout_accuracy"] > 0.6  # 4 groups, chance 0.5
    if user_init == "latent_classes":  # the number of classes chosen on validation is recorded
        assert metrics["latent_classes"]["chosen_classes"] in (2, 3, 4, 6, 8)
