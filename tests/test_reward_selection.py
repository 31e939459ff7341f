"""lr / step selection of train_reward (copl_ray.reward.selection and train.select_lr)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from copl_ray.reward.selection import ProbeResult, loss_fell, pick_best, plan_steps, split_validation


def _r(lr, acc, loss, train_loss=0.5):
    return ProbeResult(lr=lr, val_accuracy=acc, val_loss=loss, loss_first=0.7, loss_last=train_loss, steps=10)


def test_pick_best_takes_best_validation_accuracy_not_training_loss_nor_order():
    results = [_r(3e-3, 0.70, 0.60, train_loss=0.10),   # lowest training loss, worse validation
               _r(1e-3, 0.91, 0.30, train_loss=0.40),
               _r(3e-4, 0.60, 0.66, train_loss=0.65)]
    for perm in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        assert pick_best([results[i] for i in perm]).lr == 1e-3


def test_pick_best_ties_and_diverged_runs():
    assert pick_best([_r(1e-3, 0.8, 0.40), _r(3e-4, 0.8, 0.35)]).lr == 3e-4  # tie: lower val loss
    assert pick_best([_r(1e-3, 0.8, 0.40), _r(3e-4, 0.8, 0.40)]).lr == 3e-4  # then smaller lr
    assert pick_best([_r(1e-2, math.nan, math.nan), _r(1e-5, 0.5, 0.69)]).lr == 1e-5
    with pytest.raises(ValueError):
        pick_best([])


def test_split_validation_is_a_seeded_disjoint_slice_of_at_most_ten_percent():
    train, val = split_validation(1000, 256, seed=0)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(1000))
    np.testing.assert_array_equal(val, split_validation(1000, 256, seed=0)[1])
    assert not np.array_equal(val, split_validation(1000, 256, seed=1)[1])
    assert len(split_validation(10_000, 256, seed=0)[1]) == 256
    assert len(split_validation(1000, 0, seed=0)[1]) == 0


def test_plan_steps_raises_epochs_on_small_data():
    assert plan_steps(4000, 16, 1, 200)[:2] == (250, 1)
    assert plan_steps(400, 16, 1, 200)[:2] == (25, 8)
    assert plan_steps(400, 16, 1, 0)[:2] == (25, 1)


def test_loss_fell():
    assert loss_fell(list(np.linspace(0.69, 0.3, 50))) is True
    assert loss_fell([0.693] * 50) is False
    assert loss_fell([0.69, 0.2, 0.3]) is None
    assert loss_fell([0.69] * 25 + [math.nan] * 25) is False


@pytest.fixture()
def single_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_select_lr_picks_the_lr_that_learns_reads_no_test_split_and_restores_weights(
        tmp_path, monkeypatch, single_process_group, one_torch_thread):
    """A 1e-7 lr cannot move the model in 15 steps, 3e-3 can: the probe must pick 3e-3 on the
    held-out train pairs, reading no split but train, and leave the weights as they were."""
    from torch.utils.data import DistributedSampler

    import copl_ray.reward.data as reward_data
    from copl_ray.reward.baselines import build_model, prepare_training_data
    from copl_ray.reward.train import TrainRewardConfig, select_lr
    from tests.test_train_reward import make_two_group_dataset, write_group_embeddings

    data_dir = make_two_group_dataset(tmp_path / "data")
    gnn = write_group_embeddings(tmp_path / "gnn", data_dir)
    read = reward_data.read_annotations
    splits = []

    def train_only(dataset, split, **kw):
        splits.append(split)
        if split != "train":
            raise AssertionError(f"lr selection read the {split!r} split")
        return read(dataset, split, **kw)

    monkeypatch.setattr(reward_data, "read_annotations", train_only)
    cfg = TrainRewardConfig(dataset=str(data_dir), gnn_dir=str(gnn), output_dir=str(tmp_path / "o"),
                            model={"backbone": "tiny-llama"}, max_length=32, batch_size=16,
                            lr_candidates=[1e-7, 3e-3], probe_steps=15, val_pairs=80)
    torch.manual_seed(0)
    model, tok = build_model(cfg)
    data = prepare_training_data(cfg, model, tok)
    assert len(data.val) == 80 and len(data.dataset) == 720 and set(splits) == {"train"}
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    sampler = DistributedSampler(data.dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    lr, record = select_lr(model, trainable, data, sampler, torch.device("cpu"), cfg)
    assert lr == 3e-3 and record["chosen"] == 3e-3
    by_lr = {c["lr"]: c for c in record["candidates"]}
    assert by_lr[3e-3]["val_accuracy"] > by_lr[1e-7]["val_accuracy"]
    assert by_lr[3e-3]["val_loss"] < by_lr[1e-7]["val_loss"]
    assert all(torch.equal(p, b) for p, b in zip(trainable, before))
