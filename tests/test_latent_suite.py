"""The robustness suite's data (copl_ray.data.latent_suite) and references (copl_ray.eval.references)."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from copl_ray.data.dataset import read_annotations, read_table, validate_dataset
from copl_ray.data.latent_suite import LatentCase, generate_latent_dataset


def test_generated_dataset_is_valid_imbalanced_sparse_and_opaque(tmp_path):
    case = LatentCase(n_users=300, n_unseen_users=12, n_groups=3, group_ratios=[1, 2, 5], n_pairs=400,
                      annotations="sparse", min_annotations=2, annotations_per_user=12, seed=5)
    generate_latent_dataset(case, tmp_path / "d")
    summary = validate_dataset(tmp_path / "d")
    assert summary.n_seen_users == 300
    users = read_table(tmp_path / "d", "users").to_pandas()
    seen = users[users.split == "seen"]
    assert seen.group.value_counts().sort_index().tolist() == [38, 75, 187]  # 1:2:5 of 300
    assert not users.user_id.str.fullmatch(r"\d+").any()  # ids are opaque, not dense integers
    train = read_annotations(tmp_path / "d", "train").to_pandas()
    per_user = train.groupby("user_id").size()
    assert per_user.min() >= 2 and per_user.max() <= 12 and per_user.nunique() > 5
    test = read_annotations(tmp_path / "d", "test").to_pandas()
    both = train.merge(test, on=["user_id", "prompt_id"])
    assert both.empty  # a user's test pairs are survey pairs they did not annotate
    assert set(test.chosen_id) | set(test.rejected_id) <= set(read_table(tmp_path / "d", "responses")
                                                                 .column("response_id").to_pylist())


def test_labels_follow_the_group_direction_up_to_the_noise(tmp_path):
    case = LatentCase(n_users=200, n_unseen_users=0, n_groups=2, n_pairs=300, label_noise=0.1,
                      user_spread=0.0, seed=1)
    generate_latent_dataset(case, tmp_path / "d")
    users = pq.read_table(tmp_path / "d" / "users.parquet").to_pandas().set_index("user_id")
    resp = pq.read_table(tmp_path / "d" / "responses.parquet").to_pandas().set_index("response_id")
    scores = resp[[f"score_{j}" for j in range(case.n_attributes)]]
    train = read_annotations(tmp_path / "d", "train").to_pandas()
    w = np.stack(users.loc[train.user_id, "weights"].to_numpy())
    diff = scores.loc[train.chosen_id].to_numpy() - scores.loc[train.rejected_id].to_numpy()
    agree = ((w * diff).sum(1) > 0).mean()
    assert 0.86 < agree < 0.94  # 10% of labels flipped


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="group_ratios"):
        LatentCase(n_groups=3, group_ratios=[1, 2])
    with pytest.raises(ValueError, match="n_pairs"):
        LatentCase(n_pairs=10, annotations_per_user=12)


def test_true_groups_reference_beats_one_shared_preference_on_opposed_groups(tmp_path):
    import torch

    from copl_ray.eval.references import fit_clusters, fit_free, fit_shared, fit_true_groups
    from copl_ray.graph.build import Triples
    from copl_ray.graph.id_map import IdMap

    torch.set_num_threads(1)
    case = LatentCase(n_users=300, n_unseen_users=0, n_groups=2, n_pairs=200, label_noise=0.0, seed=2)
    generate_latent_dataset(case, tmp_path / "d")
    users, resp = read_table(tmp_path / "d", "users"), read_table(tmp_path / "d", "responses")
    um, rm = IdMap(users.column("user_id").combine_chunks()), IdMap(resp.column("response_id").combine_chunks())

    def triples(split):
        t = read_annotations(tmp_path / "d", split)
        return Triples(um.lookup(t.column("user_id")), rm.lookup(t.column("chosen_id")), rm.lookup(t.column("rejected_id")))

    train, test = triples("train"), triples("test")
    fit = Triples(train.user[::2], train.chosen[::2], train.rejected[::2])
    val = Triples(train.user[1::2], train.chosen[1::2], train.rejected[1::2])
    groups = users.column("group").to_numpy(zero_copy_only=False)
    shared = fit_shared(len(um), len(rm), fit, val, test)
    oracle = fit_true_groups(groups, len(rm), fit, val, test)
    free = fit_free(len(um), len(rm), fit, val, test, grid=((2, 0.1), (4, 0.1)), epochs=5)
    assert oracle.test_accuracy > shared.test_accuracy + 0.1
    assert oracle.test_accuracy > 0.85 and oracle.settings["n_groups"] == 2
    assert free.settings["dim"] in (2, 4) and 0 <= free.settings["epoch"] < 5
    assert pc.sum(pc.equal(users.column("split"), "seen")).as_py() == 300
    # Two opposed groups with 18 annotators per pair: agreement alone recovers them.
    clusters = fit_clusters(len(um), len(rm), fit, val, test, grid=((4, 2), (4, 3)))
    assert clusters.test_accuracy > oracle.test_accuracy - 0.03 and clusters.settings["clusters"] in (2, 3)


@pytest.mark.integration
def test_references_of_a_gnn_run_without_validation_carve_the_default_split(ray_session, tmp_path):
    """A train_gnn run with val_fraction 0 leaves nothing to choose on; the references then carve
    train_gnn's default share (same seed), not an empty split."""
    import math

    from copl_ray.eval.references import fit_references, fit_references_for

    case = LatentCase(n_users=200, n_unseen_users=0, n_groups=2, n_pairs=150, seed=3)
    generate_latent_dataset(case, tmp_path / "d")
    (tmp_path / "gnn").mkdir()
    (tmp_path / "gnn" / "config.yaml").write_text("val_fraction: 0.0\nseed: 4\n")
    fits = fit_references_for(tmp_path / "d", tmp_path / "gnn", which=("shared",))
    assert math.isfinite(fits["shared"].val.accuracy)
    assert fits["shared"].val == fit_references(tmp_path / "d", 0.1, 4, which=("shared",))["shared"].val
