"""Integration: 2 CPU workers train a tiny random Llama reward model with FSDP2 on Ray Train.

One run covers the whole chain: loss falls; a failure injected after a checkpoint restarts the
worker group, which resumes from the DCP checkpoint and scores a fixed probe batch exactly as
before the failure; the trainable state gathered to rank 0 and exported reloads (no process
group) to the scores the sharded model gave; the frozen backbone did not move while adapters did.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from copl_ray.data.dataset import write_dataset
from copl_ray.embeddings import write_embeddings

integration = pytest.mark.integration
# lr fixed (the auto choice is tested in test_reward_selection.py), min_steps off: the step counts
# below are the epochs asked for.
COMMON = ["method=copl", "model.backbone=tiny-llama", "lr=0.003", "max_length=32", "warmup_ratio=0.03",
          "min_steps=0"]


def make_two_group_dataset(root: Path, n_users: int = 100, n_prompts: int = 24, seed: int = 0) -> Path:
    """Two groups that disagree on every pair: 'short' users prefer the shorter response.

    Every seen user gets 8 train and 2 test pairs; 10 unseen users get 4 fewshot and 2 test pairs.
    """
    rng = np.random.default_rng(seed)
    words = ["river", "market", "garden", "engine", "winter", "planet", "signal", "forest"]
    prompts = [f"p{i}" for i in range(n_prompts)]
    ptext = [f"post {i} about the {words[i % 8]} and the {words[(3 * i) % 8]}" for i in range(n_prompts)]
    rid, rprompt, rtext = [], [], []
    for i, p in enumerate(prompts):
        rid += [f"{p}s", f"{p}l"]
        rprompt += [p, p]
        rtext += [f"the {words[i % 8]}", f"a long story of the {words[i % 8]} " + " ".join(words)]
    users, split, group = [], [], []
    for u in range(n_users + 10):
        users.append(f"u{u}")
        split.append("seen" if u < n_users else "unseen")
        group.append("short" if u % 2 == 0 else "long")
    rows = {s: [] for s in ("train", "test", "fewshot", "test_unseen")}
    for u, s, g in zip(users, split, group):
        picks = rng.choice(n_prompts, size=10 if s == "seen" else 6, replace=False)
        for j, pi in enumerate(picks):
            p = prompts[pi]
            chosen, rejected = (f"{p}s", f"{p}l") if g == "short" else (f"{p}l", f"{p}s")
            name = ("train" if j < 8 else "test") if s == "seen" else ("fewshot" if j < 4 else "test_unseen")
            rows[name].append((u, p, chosen, rejected, "controversial"))
    ann = {k: pa.table({c: [r[i] for r in v] for i, c in enumerate(
        ["user_id", "prompt_id", "chosen_id", "rejected_id", "kind"])}) for k, v in rows.items()}
    write_dataset(root, pa.table({"prompt_id": prompts, "text": ptext}),
                  pa.table({"response_id": rid, "prompt_id": rprompt, "text": rtext}),
                  pa.table({"user_id": users, "split": split, "group": group}), ann)
    return root


def write_group_embeddings(out: Path, dataset: Path, dim: int = 8, seed: int = 0) -> Path:
    """Stand-in GNN output: each seen user's embedding is its group's direction plus noise."""
    import pyarrow.parquet as pq

    users = pq.read_table(dataset / "users.parquet").to_pylist()
    seen = [u for u in users if u["split"] == "seen"]
    rng = np.random.default_rng(seed)
    centre = {"short": rng.normal(size=dim), "long": rng.normal(size=dim)}
    emb = np.stack([centre[u["group"]] + 0.1 * rng.normal(size=dim) for u in seen])
    write_embeddings(out / "users.parquet", "user_id", [u["user_id"] for u in seen], emb)
    return out


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jobs.train_reward import main

    root = tmp_path_factory.mktemp("train_reward")
    data = make_two_group_dataset(root / "data")
    gnn = write_group_embeddings(root / "gnn", data)
    out = root / "out"
    metrics = main([
        f"dataset={data}", f"gnn_dir={gnn}", f"output_dir={out}", *COMMON,
        "batch_size=8", "epochs=2", "checkpoint_every=20", "fail_at_step=30", "num_workers=2",
    ])
    return data, gnn, out, metrics


@integration
def test_two_workers_agree_with_one(trained, tmp_path):
    """1 worker with the global batch (2 x 8) sees the same pairs per step as 2 FSDP workers
    (DistributedSampler splits one seeded permutation), so the loss curves must match."""
    from jobs.train_reward import main

    data, gnn, out, _ = trained
    main([f"dataset={data}", f"gnn_dir={gnn}", f"output_dir={tmp_path}", *COMMON,
          "batch_size=16", "epochs=2", "max_steps=12", "num_workers=1"])
    one = json.loads((tmp_path / "train_summary.json").read_text())["losses"]
    two = json.loads((out / "train_summary.json").read_text())["losses"][:12]
    np.testing.assert_allclose(one, two, rtol=2e-3, atol=1e-4)


def test_config_names_the_missing_field():
    from copl_ray.config import ConfigError, load_config
    from copl_ray.reward.train import TrainRewardConfig

    with pytest.raises(ConfigError, match="gnn_dir"):
        load_config(TrainRewardConfig, overrides=["dataset=d", "output_dir=o", "method=copl"])
    cfg = load_config(TrainRewardConfig, overrides=["dataset=d", "output_dir=o", "method=uniform"])
    assert cfg.lr == "auto" and cfg.warmup_ratio == 0.03  # lr chosen on held-out train pairs
    with pytest.raises(ConfigError, match="val_pairs"):
        load_config(TrainRewardConfig, overrides=["dataset=d", "output_dir=o", "method=uniform", "val_pairs=0"])
    with pytest.raises(ConfigError, match="btach_size"):
        load_config(TrainRewardConfig, overrides=["dataset=d", "output_dir=o", "btach_size=3"])


@integration
def test_fsdp_training_lowers_loss_and_resumes(trained):
    _, _, out, metrics = trained
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["resumed"] is True  # the injected failure at step 30 forced a restart
    assert summary["resume_probe_max_abs_diff"] == pytest.approx(0.0, abs=1e-6)
    assert summary["steps"] == 2 * summary["steps_per_epoch"]
    losses = summary["losses"]
    assert len(losses) == summary["steps"]  # the curve survives the restart
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1
    assert metrics["loss_last"] < metrics["loss_first"]
    assert metrics["loss_fell"] is True and metrics["learned"] is True and metrics["warnings"] == []
    assert metrics["lr"] == 0.003 and metrics["lr_selection"]["mode"] == "fixed"
    assert summary["n_val_pairs"] == 80 and summary["n_train_pairs"] == 720
    assert summary["val_accuracy"] >= 0.8


@integration
def test_export_reloads_to_identical_scores(trained):
    from copl_ray.reward.baselines import UserConditionedRM
    from copl_ray.reward.data import load_user_table
    from copl_ray.reward.model import load_reward_model

    _, gnn, out, _ = trained
    summary = json.loads((out / "train_summary.json").read_text())
    rm = load_reward_model(out / "model")
    table = load_user_table(gnn)
    model = UserConditionedRM(rm, table.index, table.emb, learnable=False).eval()
    probe = torch.load(out / "probe_batch.pt")
    with torch.no_grad():
        rewards = model(**probe).rewards
    assert torch.allclose(rewards, torch.tensor(summary["probe_rewards"]), atol=1e-5)


@integration
def test_frozen_backbone_unchanged_adapters_trained(trained):
    from copl_ray.reward.model import PersonalRewardModel, load_reward_model

    _, _, out, _ = trained
    rm = load_reward_model(out / "model")
    torch.manual_seed(0)
    fresh = PersonalRewardModel(rm.cfg)
    trained_sd, fresh_sd = rm.state_dict(), fresh.state_dict()
    frozen = {n for n, p in fresh.named_parameters() if not p.requires_grad}
    moved = {n for n, p in fresh.named_parameters() if p.requires_grad
             and not torch.equal(trained_sd[n], fresh_sd[n])}
    assert frozen and all(torch.equal(trained_sd[n], fresh_sd[n]) for n in frozen)
    assert moved, "no trainable tensor changed"


@integration
def test_evaluate_separates_groups(trained, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jobs.evaluate import main

    data, gnn, out, _ = trained
    metrics = main([f"dataset={data}", f"gnn_dir={gnn}", f"reward_dir={out}", f"output_dir={tmp_path}"])
    # Groups disagree on every pair, so a model ignoring the user is at 50%.
    assert metrics["seen_accuracy"] >= 0.8
    assert set(metrics["seen"]["by_group"]) == {"short", "long"}
    assert metrics["unseen"]["available"] is False and "adapt_dir" in metrics["unseen"]["reason"]
    assert (tmp_path / "tsne_users.png").stat().st_size > 0
    assert (tmp_path / "expert_allocation.png").stat().st_size > 0


@integration
@pytest.mark.parametrize("method", ["g_oracle", "no_gnn", "no_mole"])
def test_baselines_share_the_harness(trained, tmp_path, method):
    from jobs.evaluate import main as evaluate
    from jobs.train_reward import main as train

    data, gnn, _, _ = trained
    out = tmp_path / "rm"
    train([f"dataset={data}", f"gnn_dir={gnn}", f"output_dir={out}", *COMMON[1:], f"method={method}",
           "batch_size=8", "max_steps=4", "num_workers=2"])
    m = evaluate([f"dataset={data}", f"reward_dir={out}", f"output_dir={tmp_path / 'ev'}", "plots=false"])
    assert m["method"] == method and m["seen"]["n_pairs"] == 200
    if method == "g_oracle":  # one model per true group; unseen users' groups are known too
        assert sorted(p.name for p in (out / "groups").iterdir()) == ["long", "short"]
        assert m["unseen"]["available"] is True and m["unseen"]["n_pairs"] == 20
    if method == "no_gnn":  # learned table exported; no embedding exists for unseen users
        from copl_ray.embeddings import read_embeddings

        ids, emb = read_embeddings(out / "user_embeddings.parquet")
        assert len(ids) == 100 and emb.shape == (100, 8)
        assert m["unseen"]["available"] is False


def test_learning_warnings_flag_a_flat_loss_and_chance_validation():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jobs.train_reward import learning_warnings

    flat = {"loss_fell": False, "loss_first": 0.6935, "loss_last": 0.6931, "steps": 250, "lr": 5e-5,
            "val_accuracy": 0.52}
    warnings = learning_warnings(flat)
    assert len(warnings) == 2 and "did not fall" in warnings[0] and "chance" in warnings[1]
    assert learning_warnings({**flat, "loss_fell": True, "val_accuracy": 0.9}) == []
    assert learning_warnings({**flat, "loss_fell": None, "val_accuracy": None}) == []
