"""One text encoding saved with the model; one loader for a reward_dir (evaluate and serving)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from copl_ray.graph.id_map import IdMap
from copl_ray.reward.artifacts import MANIFEST, load_reward_dir, write_manifest
from copl_ray.reward.baselines import UserConditionedRM
from copl_ray.reward.data import PairDataset, load_pairs, response_texts, tokenize_responses
from copl_ray.reward.encoding import TextEncoding
from copl_ray.reward.model import (PersonalRewardModel, RewardModelConfig, load_reward_model,
                                   save_reward_model, score_responses)
from copl_ray.eval.reward_metrics import score_pairs
from tests.test_reward_model import _perturb_adapters

DU = 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = PersonalRewardModel(RewardModelConfig(backbone="tiny-llama", user_dim=DU, num_experts=2))
    _perturb_adapters(m)
    return m


def test_encoding_is_saved_and_format_1_still_loads(model, tmp_path):
    enc = TextEncoding(max_length=40)
    save_reward_model(model, tmp_path / "rm", encoding=enc)
    meta = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    assert meta["format_version"] == 2 and meta["encoding"]["max_length"] == 40
    assert load_reward_model(tmp_path / "rm").encoding == enc
    del meta["encoding"]  # what a format-1 writer produced
    meta["format_version"] = 1
    (tmp_path / "rm" / "reward_model.json").write_text(json.dumps(meta))
    old = load_reward_model(tmp_path / "rm")
    assert old.encoding is None
    with pytest.raises(ValueError, match="no text encoding"):
        score_responses(old, ["p"], ["r"], torch.zeros(1, DU))
    meta["format_version"] = 7
    (tmp_path / "rm" / "reward_model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version 7"):
        load_reward_model(tmp_path / "rm")


def test_served_path_scores_what_evaluation_scores(model, tiny_dataset):
    """score_responses on raw texts == evaluate's path (tokenize_responses + collate_pairs), per user."""
    enc = TextEncoding(max_length=24)  # short enough to truncate some prompts
    pairs = load_pairs(tiny_dataset, "train")
    users = IdMap(["alice", "bob", "carol", "dave"])
    emb = torch.randn(4, DU, generator=torch.Generator().manual_seed(3)) * 3
    harness = UserConditionedRM(model, users, emb, learnable=False)
    tokens = tokenize_responses(tiny_dataset, list(pairs.chosen_id) + list(pairs.rejected_id),
                                model.tokenizer, encoding=enc)
    chosen, _, _ = score_pairs(harness, PairDataset.from_pairs(pairs, users, tokens), tokens, batch_size=3)
    p_text, r_text = response_texts(tiny_dataset, list(pairs.chosen_id))
    rows = users.lookup(list(pairs.user_id))
    served = score_responses(model, p_text, r_text, emb[torch.from_numpy(rows)], encoding=enc)
    np.testing.assert_allclose(served.numpy(), chosen, atol=1e-5)
    assert len(set(np.round(chosen, 4))) > 1  # users and texts matter: not a constant


def test_load_reward_dir_reads_the_manifest_or_an_old_config(model, tmp_path):
    from tests.adapt_helpers import hand_artifacts, write_gnn_dir

    gnn = write_gnn_dir(hand_artifacts(dim=DU), tmp_path / "gnn")
    rd_path = tmp_path / "rd"
    save_reward_model(model, rd_path / "model", encoding=TextEncoding(max_length=32))
    write_manifest(rd_path, "copl", str(gnn), TextEncoding(max_length=32))
    rd = load_reward_dir(rd_path)
    assert rd.method == "copl" and rd.encoding.max_length == 32 and rd.uses_user
    assert rd.user_table().emb.shape == (6, DU)
    assert load_reward_dir(rd_path, max_length=20).models[None].encoding.max_length == 20
    # An output written before the manifest: method, gnn_dir and max_length from its config.yaml.
    (rd_path / MANIFEST).unlink()
    (rd_path / "config.yaml").write_text(yaml.safe_dump(
        {"dataset": "d", "output_dir": str(rd_path), "gnn_dir": str(gnn), "method": "copl", "max_length": 48}))
    rd = load_reward_dir(rd_path)
    assert rd.method == "copl" and rd.encoding.max_length == 48 and rd.gnn_dir == str(gnn)
    (rd_path / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="train_reward"):
        load_reward_dir(rd_path)
