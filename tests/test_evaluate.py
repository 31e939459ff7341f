"""Reward-model metrics and plots on hand-made inputs (no model, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from copl_ray.eval.plots import expert_heatmap, expert_shares, tsne_by_group
from copl_ray.eval.reward_metrics import (
    accuracy_report, majority_vote_accuracy, pair_correct, per_user_distribution,
)
from copl_ray.reward.data import PairTable


def table(rows) -> PairTable:
    """rows: (user, prompt, chosen, rejected, kind, group)."""
    cols = list(zip(*rows))
    return PairTable(*(np.asarray(c, dtype=object) for c in cols))


def test_pair_correct_counts_ties_as_wrong():
    assert pair_correct(np.array([1.0, 0.5, 0.0]), np.array([0.0, 0.5, 1.0])).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="shapes"):
        pair_correct(np.zeros(2), np.zeros(3))


def test_report_splits_by_kind_and_group_skipping_nulls():
    pairs = table([
        ("a", "p", "x", "y", "common", "g1"),
        ("a", "p", "x", "y", "controversial", "g1"),
        ("b", "p", "y", "x", None, "g2"),
        ("b", "q", "z", "w", "controversial", None),
    ])
    rep = accuracy_report(np.array([True, False, True, True]), pairs)
    assert rep["accuracy"] == 0.75 and rep["n_pairs"] == 4
    assert rep["by_kind"] == {"common": {"accuracy": 1.0, "n_pairs": 1},
                              "controversial": {"accuracy": 0.5, "n_pairs": 2}}
    assert rep["by_group"] == {"g1": {"accuracy": 0.5, "n_pairs": 2}, "g2": {"accuracy": 1.0, "n_pairs": 1}}
    with pytest.raises(ValueError, match="expected \\(4,\\)"):
        accuracy_report(np.ones(3, bool), pairs)


def test_per_user_distribution_quantiles():
    users = np.array(["a"] * 4 + ["b"] * 2 + ["c"] * 2, dtype=object)
    correct = np.array([1, 1, 1, 0, 0, 0, 1, 1], dtype=bool)
    dist = per_user_distribution(correct, users)
    assert dist["n_users"] == 3
    assert dist["min"] == 0.0 and dist["max"] == 1.0 and dist["median"] == 0.75
    assert dist["mean"] == pytest.approx((0.75 + 0 + 1) / 3)


def test_majority_vote_and_minority_users():
    # Pair (p, {x, y}): a, b, c prefer x; d prefers y -> d is the minority.
    # Pair (q, {z, w}): a prefers z, d prefers w -> tied, scores 0.5 (dataset_stats' MV-ACC).
    ref = table([
        ("a", "p", "x", "y", None, "g"), ("b", "p", "x", "y", None, "g"),
        ("c", "p", "x", "y", None, "g"), ("d", "p", "y", "x", None, "h"),
        ("a", "q", "z", "w", None, "g"), ("d", "q", "w", "z", None, "h"),
    ])
    mv = majority_vote_accuracy(ref, ref)
    assert mv.to_dict() == {"a": 0.75, "b": 1.0, "c": 1.0, "d": 0.25}
    test = table([("a", "p", "x", "y", None, "g"), ("d", "p", "y", "x", None, "h"),
                  ("d", "q", "w", "z", None, "h")])
    rep = accuracy_report(np.array([True, False, True]), test, reference=ref)
    assert rep["minority"]["n_users"] == 1
    assert rep["minority"]["n_pairs"] == 2 and rep["minority"]["accuracy"] == 0.5


def test_expert_shares_per_group_and_layer():
    experts = np.array([[0, 1], [0, 1], [2, 1], [1, 0]])
    names, shares = expert_shares(experts, ["g", "g", "g", "h"], n_experts=3)
    assert names == ["g", "h"]
    assert shares.shape == (2, 2, 3)
    np.testing.assert_allclose(shares[0, 0], [2 / 3, 0, 1 / 3])
    np.testing.assert_allclose(shares[1, 1], [1, 0, 0])
    np.testing.assert_allclose(shares.sum(-1), 1.0)


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 0.1, (20, 4)), rng.normal(3, 0.1, (20, 4))])
    groups = ["a"] * 20 + ["b"] * 20
    path = tsne_by_group(emb, groups, tmp_path / "t.png", marked=np.arange(40) % 7 == 0)
    assert path.read_bytes()[:4] == b"\x89PNG"
    path = expert_heatmap(rng.integers(0, 4, (40, 3)), groups, 4, tmp_path / "e.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="N = len\\(groups\\)"):
        tsne_by_group(emb, groups[:5], tmp_path / "x.png")
