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
    from copl_ray.gnn.latent_classes import LATENT_CLASS_ANNEALING, LATENT_CLASS_COUNTS, latent_class_start

    group, n_resp, fit, val = _planted()
    q, info = latent_class_start(len(group), n_resp, fit, val, seed=0)
    assert q.shape == (len(group), info["chosen_classes"]) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    scores = info["val_accuracy"]
    assert set(scores) == set(LATENT_CLASS_COUNTS) and all(set(v) == set(LATENT_CLASS_ANNEALING) for v in scores.values())
    best = max(acc for v in scores.values() for acc in v.values())
    assert scores[info["chosen_classes"]][info["chosen_anneal_from"]] == best
    assert info["chosen_classes"] >= 3  # fewer classes than groups cannot fit the three preferences
    sim = q @ q.T
    same = group[:, None] == group[None, :]
    assert sim[same].mean() > sim[~same].mean() + 0.5  # a group's users start alike, other groups apart


def test_start_without_validation_uses_the_fallback_count(one_torch_thread):
    from copl_ray.gnn.latent_classes import LATENT_CLASS_FALLBACK, latent_class_start

    group, n_resp, fit, _ = _planted(seed=1)
    q, info = latent_class_start(len(group), n_resp, fit, None, seed=0)
    assert info.pop("seconds") > 0
    assert info == {"chosen_classes": LATENT_CLASS_FALLBACK, "chosen_anneal_from": 3.0, "val_accuracy": {}}
    assert q.shape == (len(group), LATENT_CLASS_FALLBACK)


def test_leave_one_out_shift_matches_refitting_without_the_pair(one_torch_thread):
    """The E-step's leave-one-out differences against the M-step objective refit without each pair."""
    import torch
    from torch import nn

    from copl_ray.gnn.latent_classes import _without_own_pairs

    gen = torch.Generator().manual_seed(0)
    n_resp, n, k, l2 = 40, 160, 2, 0.3
    a = torch.randint(0, n_resp, (n,), generator=gen)
    b = (a + torch.randint(1, n_resp, (n,), generator=gen)) % n_resp  # never a itself
    w = torch.rand(k, n, generator=gen)

    def fit(keep):  # the M-step objective, solved to convergence
        s = torch.zeros(k, n_resp, requires_grad=True)
        opt = torch.optim.LBFGS([s], max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12)

        def closure():
            opt.zero_grad()
            diff = s[:, a[keep]] - s[:, b[keep]]
            loss = -(w[:, keep] * nn.functional.logsigmoid(diff)).sum() + l2 * s.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return s.detach()

    full = fit(torch.ones(n, dtype=torch.bool))
    diff = full[:, a] - full[:, b]
    approx = _without_own_pairs(diff, w, a, b, n_resp, l2) - diff
    for i in range(8):
        keep = torch.ones(n, dtype=torch.bool)
        keep[i] = False
        refit = fit(keep)
        exact = refit[:, a[i]] - refit[:, b[i]] - diff[:, i]
        assert (exact < 0).all() and (approx[:, i] < 0).all()  # without its own label, a pair agrees less
        torch.testing.assert_close(approx[:, i], exact, rtol=0.25, atol=0.01)
