"""The latent-class warm start of train_gnn (copl_ray.gnn.latent_classes.latent_class_start); the
`train_gnn` run that starts from it is in test_agreement_init.py, beside the other warm start."""

from __future__ import annotations

import numpy as np

from copl_ray.graph.build import Triples


def _planted(n_users=240, n_pairs=150, groups=3, per_user=12, seed=0):
    """Users in ``groups`` groups; each group prefers the first response of a pair at random."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_users) % groups
    prefers_a = rng.random((groups, n_pairs)) < 0.5
    users, chosen, rejected = [], [], []
    for u in range(n_users):
        for p in rng.choice(n_pairs, per_user, replace=False):
            a, b = 2 * p, 2 * p + 1
            if not prefers_a[group[u], p]:
                a, b = b, a
            users.append(u), chosen.append(a), rejected.append(b)
    t = Triples(np.array(users), np.array(chosen), np.array(rejected))
    val = np.arange(len(users)) % 6 == 0
    take = lambda m: Triples(t.user[m], t.chosen[m], t.rejected[m])  # noqa: E731
    return group, 2 * n_pairs, take(~val), take(val)


def test_start_chooses_classes_on_validation_and_separates_planted_groups(one_torch_thread):
    from copl_ray.gnn.latent_classes import LATENT_CLASS_COUNTS, latent_class_start

    group, n_resp, fit, val = _planted()
    q, info = latent_class_start(len(group), n_resp, fit, val, seed=0)
    assert q.shape == (len(group), info["chosen_classes"]) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    assert set(info["val_accuracy"]) == set(LATENT_CLASS_COUNTS)
    assert info["val_accuracy"][info["chosen_classes"]] == max(info["val_accuracy"].values())
    assert info["chosen_classes"] >= 3  # fewer classes than groups cannot fit the three preferences
    sim = q @ q.T
    same = group[:, None] == group[None, :]
    assert sim[same].mean() > sim[~same].mean() + 0.5  # a group's users start alike, other groups apart


def test_start_without_validation_uses_the_fallback_count(one_torch_thread):
    from copl_ray.gnn.latent_classes import LATENT_CLASS_FALLBACK, latent_class_start

    group, n_resp, fit, _ = _planted(seed=1)
    q, info = latent_class_start(len(group), n_resp, fit, None, seed=0)
    assert info == {"chosen_classes": LATENT_CLASS_FALLBACK, "val_accuracy": {}}
    assert q.shape == (len(group), LATENT_CLASS_FALLBACK)

