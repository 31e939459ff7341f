"""GNN training on Ray Train (jobs/train_gnn.py, copl_ray.gnn.train/export, copl_ray.eval.gnn_metrics).

Unit tests (no Ray): batch partition across ranks, schedule, config rules, the accuracy metric on
hand-computed cases, the export layout. Integration tests (real Ray, 2 CPU workers): 2 workers
lower the loss and agree with 1 worker; a worker killed mid-training resumes from the checkpoint.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from copl_ray.config import ConfigError, load_config
from copl_ray.eval.gnn_metrics import gnn_accuracy
from copl_ray.gnn.train import LARGE_BATCH, LARGE_BATCH_MIN_STEPS, TrainGNNConfig, rank_batches, resolve_mode
from tests.job_loader import load_job


def _cfg(**kw) -> TrainGNNConfig:
    return TrainGNNConfig(dataset="d", output_dir="o", **kw)


# ----------------------------------------------------------------------------- unit


def test_ranks_split_exactly_the_one_worker_batches():
    cfg = _cfg(batch_size=8)
    one = rank_batches(21, epoch=3, cfg=cfg, rank=0, world=1)
    two = [rank_batches(21, epoch=3, cfg=cfg, rank=r, world=2) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1]) == 3
    for step, batch in enumerate(one):
        joined = np.concatenate([two[0][step], two[1][step]])
        # 21 pairs pad to 22 for two workers: one wrapped pair in the last batch is the only extra.
        extra = len(joined) - len(batch)
        assert set(batch) <= set(joined) and len(set(joined) - set(batch)) == extra
        assert extra == (1 if step == 2 else 0)
        assert len(two[0][step]) == len(two[1][step])
    assert sorted(np.concatenate(one)) == list(range(21))
    # A new epoch reshuffles; the same epoch is the same on every call.
    assert not np.array_equal(one[0], rank_batches(21, 4, cfg, 0, 1)[0])
    assert np.array_equal(one[0], rank_batches(21, 3, cfg, 0, 1)[0])


def test_config_rules_name_the_fields(tmp_path):
    with pytest.raises(ValueError, match="fanouts has 3 entries but num_layers=2"):
        _cfg(fanouts=[5, 5, 5], num_layers=2)
    _cfg(fanouts=[5, 5, 5], num_layers=2, mode="full")  # fan-outs unused in full-graph mode
    with pytest.raises(ValueError, match="fail_at_epoch=5 must be < epochs=5"):
        _cfg(epochs=5, fail_at_epoch=5)
    with pytest.raises(ConfigError, match="modle"):
        load_config(TrainGNNConfig, None, ["dataset=d", "output_dir=o", "modle=copl"])


@pytest.mark.parametrize("kind", ["copl", "learnable", "uniform", "lore"])
def test_id_l2_is_the_batch_mean_of_its_rows_squared_norms(kind):
    from copl_ray.gnn.train import build_model, id_l2

    model = build_model(_cfg(model=kind, dim=4), n_users=5, n_responses=7)
    user, chosen, rejected = torch.tensor([0, 0, 3]), torch.tensor([1, 2, 6]), torch.tensor([2, 5, 1])
    tables = type(model).ID_TABLES
    expected = torch.zeros(())
    for side, ids in (("user", [user]), ("resp", [chosen, rejected])):
        for name in tables[side]:
            w = getattr(model, name).weight.detach()
            for i in ids:
                expected = expected + sum(float(w[j].pow(2).sum()) for j in i.tolist()) / len(i)
    value = id_l2(model, user, chosen, rejected)
    assert value.item() == pytest.approx(float(expected), rel=1e-6)
    value.backward()
    # Only the batch's rows are penalized; a row scored twice gets twice the pull.
    for side, rows in (("user", {0, 3}), ("resp", {1, 2, 5, 6})):
        for name in tables[side]:
            grad = getattr(model, name).weight.grad
            touched = {int(r) for r in torch.nonzero(grad.abs().sum(1)).flatten()}
            assert touched == rows, (name, touched)
    if kind == "copl":
        w, g = model.user_emb.weight.detach(), model.user_emb.weight.grad
        assert torch.allclose(g[0], 2 * 2 * w[0] / 3) and torch.allclose(g[3], 2 * w[3] / 3)


def test_unscorable_accuracy_comes_with_a_reason():
    job = load_job("train_gnn")
    e_user, e_resp = torch.ones(2, 3), torch.ones(4, 3)
    in_graph = np.array([True, True, False, False])
    none_in_graph = gnn_accuracy(e_user, e_resp, np.array([0, 1]), np.array([2, 3]), np.array([3, 2]), in_graph)
    m = job._accuracy_metrics("gnn_test", none_in_graph, "annotations/test")
    assert m["gnn_test_accuracy"] is None or math.isnan(m["gnn_test_accuracy"])
    assert "none of the 2 annotations/test pairs" in m["gnn_test_accuracy_reason"]
    empty = gnn_accuracy(e_user, e_resp, np.zeros(0, int), np.zeros(0, int), np.zeros(0, int), in_graph)
    assert job._accuracy_metrics("gnn_test", empty, "annotations/test")["gnn_test_accuracy_reason"] == \
        "annotations/test has no pair"
    scored = gnn_accuracy(e_user, e_resp, np.array([0]), np.array([0]), np.array([1]), in_graph)
    assert "gnn_test_accuracy_reason" not in job._accuracy_metrics("gnn_test", scored, "annotations/test")


def test_accuracy_counts_in_graph_pairs_ties_half_and_splits():
    e_user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e_resp = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [5.0, 5.0]])
    in_graph = np.array([True, True, True, False])
    user = np.array([0, 0, 1, 1, 0])
    chosen = np.array([0, 1, 1, 2, 3])
    rejected = np.array([1, 2, 2, 0, 0])
    # margins: u0 (0 vs 1) +2; u0 (1 vs 2) -1; u1 (1 vs 2) +1; u1 (2 vs 0) +1; pair 4 not in graph.
    kind = np.array([0, 1, 1, -1, 0], dtype=np.int8)
    groups = np.array(["a", "b"], dtype=object)
    out = gnn_accuracy(e_user, e_resp, user, chosen, rejected, in_graph, kind=kind, user_group=groups)
    assert out["accuracy"] == pytest.approx(3 / 4)
    assert out["n_pairs"] == 4 and out["coverage"] == pytest.approx(4 / 5)
    assert out["by_kind"]["common"]["accuracy"] == 1.0
    assert out["by_kind"]["controversial"]["accuracy"] == 0.5
    assert out["by_kind"]["unknown"]["n_pairs"] == 1
    assert out["by_group"] == {"a": {"accuracy": 0.5, "n_pairs": 2}, "b": {"accuracy": 1.0, "n_pairs": 2}}
    # Equal scores are half right: a model that cannot tell two responses apart scores 50%.
    tie = gnn_accuracy(torch.zeros(2, 2), e_resp, user, chosen, rejected, in_graph)
    assert tie["accuracy"] == 0.5 and tie["ties"] == 4
    none = gnn_accuracy(e_user, e_resp, user, chosen, rejected, np.zeros(4, bool))
    assert math.isnan(none["accuracy"]) and none["coverage"] == 0.0


def test_auto_mode_keeps_sampling_on_small_data_and_goes_full_graph_large_batch_above():
    base = {"dataset": "d", "output_dir": "o"}
    small, info = resolve_mode(TrainGNNConfig(**base), 500_000, node_cpus=16)
    assert (small.mode, small.batch_size, small.num_workers, small.cpus_per_worker) == ("sampled", 1024, 2, None)
    assert "500000 train pairs" in info["reason"]
    large, info = resolve_mode(TrainGNNConfig(**base), 16_000_000, node_cpus=16)
    assert large.mode == "full" and info["mode"] == "full"
    assert (large.batch_size, large.lr, large.num_workers, large.warmup_ratio) == (
        LARGE_BATCH["batch_size"], LARGE_BATCH["lr"], 1, LARGE_BATCH["warmup_ratio"])
    assert large.cpus_per_worker == 16
    steps_per_epoch = -(-16_000_000 // LARGE_BATCH["batch_size"])
    assert large.epochs == 1 and steps_per_epoch >= LARGE_BATCH_MIN_STEPS
    # fewer steps per epoch: enough epochs for LARGE_BATCH_MIN_STEPS steps, never above the default
    mid, _ = resolve_mode(TrainGNNConfig(**base), 1_000_000, node_cpus=2)
    assert mid.epochs == min(20, -(-LARGE_BATCH_MIN_STEPS // -(-1_000_000 // LARGE_BATCH["batch_size"])))
    # keys the user set stay as given; an explicit mode or a graph-free model is left alone
    pinned, info = resolve_mode(TrainGNNConfig(**base, batch_size=4096, epochs=3, cpus_per_worker=2), 16_000_000, 16)
    assert (pinned.mode, pinned.batch_size, pinned.epochs, pinned.cpus_per_worker, pinned.lr) == ("full", 4096, 3, 2, 1e-2)
    assert "batch_size" not in info and "epochs" not in info
    for explicit in ("sampled", "full"):
        cfg = TrainGNNConfig(**base, mode=explicit)
        assert resolve_mode(cfg, 16_000_000, 16) == (cfg, {"mode": explicit, "reason": "set explicitly"})
    assert resolve_mode(TrainGNNConfig(**base, model="learnable"), 16_000_000, 16)[0].mode == "sampled"


# ----------------------------------------------------------------------------- integration


def _train(dataset, out, *extra):
    return load_job("train_gnn").main([f"dataset={dataset}", f"output_dir={out}", "batch_size=256", "lr=0.01",
                     "holdout_fraction=0.1", "dim=32", "grid=false", *extra])


@pytest.mark.integration
def test_two_workers_lower_loss_and_agree_with_one(ray_session, small_ufp4, tmp_path):
    from copl_ray.embeddings import read_embeddings

    common = ["mode=full", "epochs=5"]
    two = _train(small_ufp4, tmp_path / "w2", "num_workers=2", "grad_sync=ddp", *common)
    one = _train(small_ufp4, tmp_path / "w1", "num_workers=1", *common)
    sparse = _train(small_ufp4, tmp_path / "w2s", "num_workers=2", *common)  # default: sparse_rows
    assert two["epoch_btl_loss"][-1] < 0.7 * two["epoch_btl_loss"][0]
    assert two["epoch_loss"][-1] < two["epoch_loss"][0]
    assert two["gnn_holdout_accuracy"] > 0.75  # chance is 0.5
    assert abs(two["gnn_holdout_accuracy"] - one["gnn_holdout_accuracy"]) <= 0.01
    # Same global batches, DDP-averaged gradients: the two runs train the same model.
    # Row-sparse gradient exchange averages to the same gradient as DDP's dense all-reduce.
    _, e1 = read_embeddings(tmp_path / "w1" / "users.parquet")
    for run in ("w2", "w2s"):
        _, e2 = read_embeddings(tmp_path / run / "users.parquet")
        assert np.abs(e2 - e1).max() <= 1e-3 * max(1.0, np.abs(e1).max()), run
    assert abs(sparse["gnn_holdout_accuracy"] - one["gnn_holdout_accuracy"]) <= 0.01


@pytest.mark.integration
def test_auto_mode_above_its_threshold_trains_the_full_graph_and_records_the_choice(ray_session, small_ufp4, tmp_path):
    import yaml

    m = _train(small_ufp4, tmp_path / "auto", "auto_full_min_train_pairs=0", "cpus_per_worker=1", "epochs=2")
    res = m["mode_resolution"]
    assert res["mode"] == "full" and "auto_full_min_train_pairs=0" in res["reason"]
    assert res["num_workers"] == 1 and "batch_size" not in res  # batch_size=256 was given: kept
    assert m["num_workers"] == 1 and m["steps"] > 0 and m["gnn_holdout_accuracy"] > 0.6  # chance 0.5
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert (saved["mode"], saved["batch_size"], saved["num_workers"]) == ("full", 256, 1)


@pytest.mark.integration
def test_killed_worker_resumes_from_checkpoint_and_exports(ray_session, small_ufp4, tmp_path):
    from copl_ray.embeddings import read_embeddings
    from copl_ray.gnn.model import CoPLGNN, load_model
    from copl_ray.graph.id_map import IdMap
    from copl_ray.graph.signed_graph import SignedGraph

    out = tmp_path / "resume"
    m = _train(small_ufp4, out, "num_workers=2", "epochs=3", "fail_at_epoch=2", "fanouts=[5,5]")
    assert m["resumed_from_epoch"] == 2  # epochs 0-1 came from the checkpoint, not a rerun
    assert m["epochs_run"] == 3 and len(m["epoch_loss"]) == 3
    assert m["epoch_loss"][2] < m["epoch_loss"][0]
    # gnn_dir layout (docs/ARCHITECTURE.md): embeddings in dense id-map order, graph, model.
    users = IdMap.load(out / "user_index.parquet")
    ids, emb = read_embeddings(out / "users.parquet")
    assert ids.to_pylist() == users.ids.to_pylist() and emb.shape == (200, 32)
    seen = pq.read_table(small_ufp4 / "users.parquet").to_pandas().query("split == 'seen'")
    assert ids.to_pylist() == seen.user_id.tolist()
    rids, remb = read_embeddings(out / "responses.parquet")
    assert len(rids) == pq.read_metadata(small_ufp4 / "responses.parquet").num_rows
    graph = SignedGraph.load(out)
    assert graph.n_users == 200 and graph.num_edges == 2 * m["graph"]["n_train_annotations"]
    # The saved model reproduces the exported embeddings (what adaptation relies on).
    model = load_model(out / "model.safetensors")
    assert isinstance(model, CoPLGNN) and model.cfg.dim == 32
    e_user, e_resp = model.embed_all(graph)
    np.testing.assert_allclose(e_user.numpy(), emb, atol=1e-5)
    np.testing.assert_allclose(e_resp.numpy(), remb, atol=1e-5)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["gnn_test_pairs"]["total"] == 2000 and "gnn_holdout_accuracy_by_group" in saved


def test_train_storage_keeps_uris_and_makes_paths_absolute(tmp_path, monkeypatch):
    from copl_ray.gnn.train import train_storage

    monkeypatch.chdir(tmp_path)
    base = dict(dataset="d", output_dir="out")
    assert train_storage(TrainGNNConfig(**base)) == str(tmp_path / "out" / "ray")
    assert train_storage(TrainGNNConfig(**base, storage_path="ckpt")) == str(tmp_path / "ckpt")
    assert train_storage(TrainGNNConfig(**base, storage_path="s3://bucket/copl")) == "s3://bucket/copl"
