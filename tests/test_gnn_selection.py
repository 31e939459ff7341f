"""Model selection in train_gnn (copl_ray.gnn.selection): the validation split, the choice of the
best epoch and candidate, early stopping, and that test labels never influence any choice."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from copl_ray.gnn.selection import (EarlyStopping, Score, beats_chance, best_index, better, candidate_grid,
                                    chance_threshold, split_validation)
from copl_ray.graph.build import Triples
from copl_ray.graph.signed_graph import SignedGraph
from tests.job_loader import load_job


def _triples(counts: list[int]) -> Triples:
    user = np.repeat(np.arange(len(counts)), counts)
    n = len(user)
    return Triples(user, np.arange(n), np.arange(n) + n, kind=np.zeros(n, np.int8))


def test_validation_split_keeps_a_train_pair_per_user_and_is_a_partition():
    t = _triples([1, 2, 5, 40, 40, 3] * 50)
    fit, val = split_validation(t, 0.25, seed=3)
    assert len(fit) + len(val) == len(t)
    assert sorted(np.concatenate([fit.chosen, val.chosen])) == list(range(len(t)))
    assert set(fit.user) == set(t.user)  # nobody loses every edge
    one_pair_users = np.flatnonzero(np.bincount(t.user) == 1)
    assert not np.isin(val.user, one_pair_users).any()
    assert 0.15 < len(val) / len(t) < 0.3
    assert val.kind is not None and len(val.kind) == len(val)
    again = split_validation(t, 0.25, seed=3)[1]
    assert np.array_equal(again.chosen, val.chosen)
    assert not np.array_equal(split_validation(t, 0.25, seed=4)[1].chosen, val.chosen)
    assert len(split_validation(t, 0.0, seed=3)[1]) == 0
    with pytest.raises(ValueError, match="fraction"):
        split_validation(t, 1.0, seed=0)


def test_best_index_prefers_accuracy_then_loss_then_the_earliest():
    nan = float("nan")
    assert best_index([Score(0.6, 0.5), Score(0.8, 0.9), Score(0.7, 0.1)]) == 1
    assert best_index([Score(0.8, 0.5), Score(0.8, 0.4), Score(0.8, 0.4)]) == 1
    assert best_index([Score(nan, 0.1), Score(0.55, 0.9)]) == 1
    assert best_index([Score(nan, nan)]) is None and best_index([]) is None
    assert not better(Score(nan, 0.0), Score(0.5, 1.0)) and better(Score(0.5, 1.0), Score(nan, 0.0))


def test_validation_chooses_only_when_it_beats_chance_by_z_standard_errors():
    # 400 pairs: one standard error under chance is 0.025, so z=3 asks for 0.575.
    assert chance_threshold(400, 3.0) == pytest.approx(0.575)
    assert beats_chance(Score(0.58, 0.6), 400, z=3.0) and not beats_chance(Score(0.57, 0.6), 400, z=3.0)
    assert beats_chance(Score(0.53, 0.6), 10_000, z=3.0)  # the same margin is significant on more pairs
    assert beats_chance(Score(0.51, 0.7), 400, z=0.0) and not beats_chance(Score(0.49, 0.7), 400, z=0.0)
    assert not beats_chance(Score(float("nan"), 0.6), 400, z=0.0) and not beats_chance(Score(0.9, 0.1), 0, z=0.0)


def test_early_stopping_waits_patience_epochs_and_restores():
    stop = EarlyStopping(patience=2)
    accs = [0.6, 0.7, 0.69, 0.72, 0.71, 0.70]
    decisions = [stop.update(e, Score(a, 1.0 - a)) for e, a in enumerate(accs)]
    assert decisions == [False, False, False, False, False, True]
    assert stop.best_epoch == 3 and stop.best.accuracy == 0.72
    again = EarlyStopping(patience=2)
    again.load_state_dict(json.loads(json.dumps(stop.state_dict())))
    assert again.best == stop.best and again.best_epoch == 3 and again.bad_epochs == 2
    never = EarlyStopping(patience=None)
    assert not any(never.update(e, Score(0.5 - e / 100, 1.0)) for e in range(50))


def test_grid_runs_where_cheap_and_only_for_copl():
    assert len(candidate_grid("auto", 1000, 500_000, "copl")) >= 2
    assert candidate_grid("auto", 600_000, 500_000, "copl") == [{}]
    assert candidate_grid("auto", 1000, 500_000, "learnable") == [{}]
    assert candidate_grid(False, 10, 500_000, "copl") == [{}]
    assert len(candidate_grid(True, 10**9, 0, "learnable")) >= 2


def test_explicit_keys_are_not_varied_by_the_grid():
    from copl_ray.config import load_config
    from copl_ray.gnn.train import TrainGNNConfig

    job = load_job("train_gnn")
    base = ["dataset=d", "output_dir=o"]
    free = job.grid_candidates(load_config(TrainGNNConfig, None, base), 1000)
    assert len(free) >= 2 and all({"num_layers", "lr", "l2", "transform"} <= set(c) for c in free)
    assert {c["transform"] for c in free} == {True, False}  # both layers compete
    layer = job.grid_candidates(load_config(TrainGNNConfig, None, base + ["transform=true", "activation=true"]), 1000)
    assert all("transform" not in c and "exclude_target_edges" not in c for c in layer)
    pinned = job.grid_candidates(load_config(TrainGNNConfig, None, base + ["num_layers=2", "fanouts=[5,5]"]), 1000)
    assert all("num_layers" not in c and "fanouts" not in c for c in pinned)
    everything = base + ["num_layers=2", "fanouts=[5,5]", "lr=0.01", "l2=0.5", "transform=false", "user_init=random"]
    assert job.grid_candidates(load_config(TrainGNNConfig, None, everything), 1000) == [{}]
    # The latent-class candidate brings its own start norm, unless the user set one.
    latent = [c for c in free if c.get("user_init") == "latent_classes"]
    assert latent and latent[0]["user_init_norm"] == 1.0
    normed = job.grid_candidates(load_config(TrainGNNConfig, None, base + ["user_init_norm=0.5"]), 1000)
    assert len(normed) == len(free) and all("user_init_norm" not in c for c in normed)


# ----------------------------------------------------------------------------- integration


def _flip_test_labels(src, dst):
    """A copy of the dataset whose annotations/test has every label reversed."""
    shutil.copytree(src, dst)
    for path in (dst / "annotations" / "test").glob("*.parquet"):
        t = pq.read_table(path)
        t = t.set_column(t.schema.get_field_index("chosen_id"), "chosen_id", t.column("rejected_id")) \
             .set_column(t.schema.get_field_index("rejected_id"), "rejected_id", t.column("chosen_id"))
        pq.write_table(t, path)


@pytest.mark.integration
def test_selection_picks_the_best_validation_epoch_and_never_reads_test_labels(ray_session, tmp_path):
    from copl_ray.data.synthetic import SyntheticSpec, generate_dataset
    from copl_ray.embeddings import read_embeddings

    data, flipped = tmp_path / "data", tmp_path / "flipped"
    # test pairs among the survey pairs, so their responses are in the graph and test accuracy is defined
    generate_dataset(SyntheticSpec(preset="ufp4", n_users=200, survey_size=300, n_unseen_users=4,
                                   test_pairs_per_unseen_user=5, test_pool="survey", seed=0), data)
    _flip_test_labels(data, flipped)
    args = ["batch_size=256", "dim=16", "epochs=3", "grid=true", "val_fraction=0.2",
            "early_stopping_patience=2", "mode=full"]
    job = load_job("train_gnn")
    a = job.main([f"dataset={data}", f"output_dir={tmp_path / 'a'}", *args])
    b = job.main([f"dataset={flipped}", f"output_dir={tmp_path / 'b'}", *args])
    sel = a["selection"]
    assert sel["val_pairs"] > 0 and len(sel["candidates"]) >= 2
    # The chosen candidate has the best validation score; its best epoch is its validation argmax.
    scores = [Score(c["val_accuracy"], c["val_loss"]) for c in sel["candidates"]]
    assert sel["chosen_candidate"] == best_index(scores)
    val_acc = a["epoch_val_accuracy"]
    assert sel["best_epoch"] == int(np.argmax(val_acc)) or val_acc[sel["best_epoch"]] == max(val_acc)
    # Reversed test labels change the test accuracy, not one choice or one exported number.
    assert b["selection"] == sel
    assert a["gnn_test_pairs"]["counted"] > 1000
    assert abs(a["gnn_test_accuracy"] + b["gnn_test_accuracy"] - 1.0) < 1e-6
    for name in ("users.parquet", "responses.parquet"):
        np.testing.assert_array_equal(read_embeddings(tmp_path / "a" / name)[1], read_embeddings(tmp_path / "b" / name)[1])
    # The exported graph holds the validation edges again (all train pairs), and config.yaml the choice.
    cfg = (tmp_path / "a" / "config.yaml").read_text()
    assert f"lr: {sel['chosen']['lr']}" in cfg and "grid: false" in cfg
    graph = SignedGraph.load(tmp_path / "a")
    assert graph.num_edges == 2 * pq.read_table(data / "annotations" / "train").num_rows


def _shuffle_train_labels(src, dst, seed: int = 0):
    """A copy of the dataset whose annotations/train labels are coin flips: no validation pair can
    be predicted, so validation accuracy is chance whatever is trained."""
    shutil.copytree(src, dst)
    rng = np.random.default_rng(seed)
    for path in (dst / "annotations" / "train").glob("*.parquet"):
        t = pq.read_table(path)
        swap = rng.random(t.num_rows) < 0.5
        a, b = t.column("chosen_id").to_numpy(zero_copy_only=False), t.column("rejected_id").to_numpy(zero_copy_only=False)
        t = t.set_column(t.schema.get_field_index("chosen_id"), "chosen_id", pa.array(np.where(swap, b, a))) \
             .set_column(t.schema.get_field_index("rejected_id"), "rejected_id", pa.array(np.where(swap, a, b)))
        pq.write_table(t, path)


@pytest.mark.integration
def test_validation_at_chance_does_not_choose_the_epoch(ray_session, tmp_path):
    """Where validation cannot beat chance, the job trains the first candidate on every train pair
    for every epoch (no early stop on noise) and says so in metrics.json and config.yaml."""
    from copl_ray.data.synthetic import SyntheticSpec, generate_dataset

    generate_dataset(SyntheticSpec(preset="ufp4", n_users=150, survey_size=200, n_unseen_users=4,
                                   test_pairs_per_unseen_user=5, seed=1), tmp_path / "data")
    _shuffle_train_labels(tmp_path / "data", tmp_path / "noise")
    out = tmp_path / "o"
    m = load_job("train_gnn").main([f"dataset={tmp_path / 'noise'}", f"output_dir={out}", "batch_size=256",
                                    "dim=16", "epochs=6", "grid=false", "val_fraction=0.2",
                                    "early_stopping_patience=1", "mode=full"])
    sel = m["selection"]
    assert sel["val_pairs"] > 0 and "refit" in sel and "cannot choose" in sel["refit"]["reason"]
    assert sel["chosen_candidate"] == 0 and sel["best_epoch"] is None
    assert m["epochs_run"] == 6 and not m["stopped_early"]  # every epoch, no validation to stop on
    assert all(v is None for v in m["epoch_val_accuracy"])
    # config.yaml reruns the refit: one candidate, the same split (whose validation is at chance again)
    cfg = (out / "config.yaml").read_text()
    assert "grid: false" in cfg and "val_fraction: 0.2" in cfg
    graph = SignedGraph.load(out)
    assert graph.num_edges == 2 * pq.read_table(tmp_path / "noise" / "annotations" / "train").num_rows
