"""Dataset statistics on hand-made annotation sets whose figures are computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from copl_ray.eval.dataset_stats import Triples, divergence_stats, graph_stats
from tests.job_loader import load_job

ROOT = Path(__file__).resolve().parents[1]


def triples(rows, n_users, n_responses):
    u, c, r = (np.array(x, np.int64) for x in zip(*rows))
    return Triples(u, c, r, n_users, n_responses)


# Pair A = (0,1): users 0,1,2 choose 0, user 3 chooses 1 (1/4 deviate: divergent, not high).
# Pair B = (2,3): user 0 chooses 2, users 1,2 choose 3 (1/3 deviate: divergent and high).
# Pair C = (4,5): users 0,4 choose 4 (agree). Pair D = (0,2): user 4 only (not multi-user).
DIV_ROWS = [(0, 0, 1), (1, 0, 1), (2, 0, 1), (3, 1, 0),
            (0, 2, 3), (1, 3, 2), (2, 3, 2),
            (0, 4, 5), (4, 4, 5),
            (4, 2, 0)]


def test_divergence_mv_acc_and_room_by_hand():
    m, per_user = divergence_stats(triples(DIV_ROWS, 5, 6))
    assert m["n_pairs"] == 4 and m["n_pairs_multi_user"] == 3
    assert m["divergence_rate"] == pytest.approx(2 / 3)
    assert m["high_divergence_share"] == pytest.approx(1 / 3)
    np.testing.assert_allclose(per_user["mv_acc"], [2 / 3, 1, 1, 0, 1])
    # Against the other users only: users 1 and 2 on B each face a 1-1 tie (0.5).
    np.testing.assert_allclose(per_user["mv_acc_loo"], [2 / 3, 0.75, 0.75, 0, 1])
    assert m["minority_users"] == 1 and m["minority_share"] == pytest.approx(0.2)
    assert m["minority_users_loo"] == 1
    assert (m["mv_acc_min"], m["mv_acc_max"]) == (0.0, 1.0)
    assert m["mv_acc_mean"] == pytest.approx((2 / 3 + 3) / 5)
    assert m["aggregate_mv_accuracy"] == pytest.approx(7 / 9)
    assert m["consistency"] is None and m["consistency_assumed"]
    assert m["room_for_personalization"] == pytest.approx(2 / 9)


def test_threshold_is_inclusive_and_configurable():
    m, _ = divergence_stats(triples(DIV_ROWS, 5, 6), high=0.25)  # pair A's 1/4 now counts
    assert m["high_divergence_share"] == pytest.approx(2 / 3)


def test_statistics_ignore_row_order():
    rows = np.array(DIV_ROWS)
    perm = np.random.default_rng(0).permutation(len(rows))
    a, _ = divergence_stats(triples(DIV_ROWS, 5, 6))
    b, _ = divergence_stats(triples(rows[perm].tolist(), 5, 6))
    assert a == b


def test_repeated_labels_measure_consistency():
    # User 0 labels pair (0,1) three times (0, 0, 1): own majority 0, 2 of 3 agree.
    # User 1 labels (0,1) twice (1, 0): a tie, 1 of 2 "agrees", and the user is undecided on it.
    rows = [(0, 0, 1), (0, 0, 1), (0, 1, 0), (1, 1, 0), (1, 0, 1), (2, 1, 0)]
    m, per_user = divergence_stats(triples(rows, 3, 2))
    assert m["consistency"] == pytest.approx(3 / 5) and not m["consistency_assumed"]
    # Decided labels on (0,1): user 0 -> 0, user 2 -> 1; user 1 is left out.
    assert m["n_pairs_multi_user"] == 1 and m["divergence_rate"] == 1.0
    np.testing.assert_allclose(per_user["mv_acc"], [0.5, np.nan, 0.5])
    assert m["room_for_personalization"] == pytest.approx(3 / 5 - 0.5)


# u0: r0>r1; u1: r0>r2 and r2>r3; u2: r2>r3; u3: r4>r5; u4 has no annotation.
GRAPH_ROWS = [(0, 0, 1), (1, 0, 2), (1, 2, 3), (2, 2, 3), (3, 4, 5)]


def test_graph_components_and_reach_by_hand():
    g = graph_stats(triples(GRAPH_ROWS, 5, 6))
    assert g["all_edges_components"] == 2
    assert g["all_edges_largest_component_user_share"] == pytest.approx(3 / 4)
    assert g["positive_components"] == 2  # {u0,u1,u2,r0,r2}, {u3,r4}
    assert g["positive_largest_component_user_share"] == pytest.approx(3 / 4)
    # 2 hops: u0 -> {u1}, u1 -> {u0,u2}, u2 -> {u1}, u3 -> {}; 3 other active users each.
    assert g["reach_2hop_mean_user_share"] == pytest.approx((1 + 2 + 1) / 3 / 4)
    assert g["reach_2hop_users_with_neighbour"] == pytest.approx(3 / 4)
    # 4 hops: u0, u1, u2 reach both others.
    assert g["reach_4hop_mean_user_share"] == pytest.approx(0.5)
    assert g["reach_sources"] == 4 and not g["reach_sampled"]


def test_reach_samples_sources_when_graph_is_large():
    g = graph_stats(triples(GRAPH_ROWS, 5, 6), reach_sources=2, seed=1)
    assert g["reach_sources"] == 2 and g["reach_sampled"]
    assert 0 <= g["reach_2hop_mean_user_share"] <= 2 / 3


def test_job_on_tiny_dataset(tiny_dataset, tmp_path, capsys):
    job = load_job("dataset_stats")
    out = tmp_path / "stats"
    job.main([f"dataset={tiny_dataset}", f"output_dir={out}"])
    m = json.loads((out / "metrics.json").read_text())
    # tiny train: every pair is contested; alice/carol split 1-1 with the majority, bob/dave tie once.
    assert m["annotations_per_user_min"] == m["annotations_per_user_max"] == 2
    assert m["divergence_rate"] == 1.0 and m["high_divergence_share"] == 1.0
    assert m["aggregate_mv_accuracy"] == pytest.approx(5 / 8)
    assert m["room_for_personalization"] == pytest.approx(3 / 8)
    per_user = pq.read_table(out / "per_user.parquet").to_pydict()
    assert per_user["user_id"] == ["alice", "bob", "carol", "dave"]
    assert per_user["mv_acc"] == pytest.approx([0.5, 0.75, 0.5, 0.75])
    assert (out / "config.yaml").is_file()
    assert "divergence_rate" in capsys.readouterr().out


def test_job_rejects_a_broken_dataset_naming_the_file(tiny_dataset, tmp_path):
    import pyarrow as pa
    from copl_ray.data import append_annotations

    append_annotations(tiny_dataset, "train", pa.table({
        "user_id": ["mallory"], "prompt_id": ["p0"], "chosen_id": ["r0a"], "rejected_id": ["r0b"]}))
    job = load_job("dataset_stats")
    with pytest.raises(SystemExit, match=r"append-.*\.parquet: row 0: field 'user_id' 'mallory' names an unknown user"):
        job.main([f"dataset={tiny_dataset}", f"output_dir={tmp_path / 'o'}"])


def test_undefined_divergence_says_why():
    """Every pair labelled by one user only (e.g. a survey larger than users x annotations): the
    divergence and MV-ACC figures are undefined; the metrics say why next to the nulls."""
    m, per_user = divergence_stats(triples([(0, 0, 1), (1, 2, 3), (2, 4, 5)], 3, 6))
    assert m["n_pairs_multi_user"] == 0 and np.isnan(m["divergence_rate"]) and np.isnan(m["mv_acc_mean"])
    assert "labelled by two or more users" in m["undefined_reason"]
    assert "undefined_reason" not in divergence_stats(triples(DIV_ROWS, 5, 6))[0]
