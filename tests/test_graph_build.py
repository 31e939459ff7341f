"""Graph construction with Ray Data (copl_ray.graph.build): the Ray path agrees with a plain pyarrow
reference, does not depend on sharding, and names file/row/field of bad input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from copl_ray.data import write_dataset
from copl_ray.data.dataset import DatasetError, annotation_files, append_annotations, read_annotations
from copl_ray.graph.build import (Triples, _canonical_order, build_graph, build_id_maps,
                                  index_annotations, signed_graph_from_sorted, split_holdout)
from copl_ray.graph.signed_graph import SignedGraph
from tests.tiny_data import tiny_tables



def test_sort_based_graph_equals_from_triples():
    # Duplicated annotations and a user holding + and - edges to one response.
    rng = np.random.default_rng(0)
    n = 5000
    cols = {"user": rng.integers(0, 40, n), "chosen": rng.integers(0, 30, n),
            "rejected": rng.integers(0, 30, n), "kind": rng.integers(-1, 2, n).astype(np.int8)}
    names = ["user", "chosen", "rejected", "kind"]
    got = _canonical_order(dict(cols), names, 40, 30)
    order = np.lexsort([cols[k] for k in reversed(names)])
    for k in names:
        np.testing.assert_array_equal(got[k], cols[k][order])
    assert got["kind"].dtype == np.int8
    train = Triples(got["user"], got["chosen"], got["rejected"])
    fast = signed_graph_from_sorted(train, 40, 30)
    ref = SignedGraph.from_triples(cols["user"], cols["chosen"], cols["rejected"], 40, 30)
    for name in ("pos_user", "pos_response", "neg_user", "neg_response"):
        assert torch.equal(getattr(fast, name), getattr(ref, name))


def test_holdout_split_is_seeded_and_disjoint():
    t = Triples(np.arange(100), np.arange(100) + 1, np.arange(100) + 2, np.zeros(100, np.int8))
    kept, held = split_holdout(t, 0.1, seed=3)
    assert len(held) == 10 and len(kept) == 90
    assert not set(held.user) & set(kept.user) and set(held.user) | set(kept.user) == set(range(100))
    assert np.array_equal(held.user, split_holdout(t, 0.1, seed=3)[1].user)
    assert not np.array_equal(held.user, split_holdout(t, 0.1, seed=4)[1].user)
    with pytest.raises(ValueError, match="holdout fraction"):
        split_holdout(t, 1.0, seed=0)


def _write(root, rows_per_shard):
    t = tiny_tables()
    write_dataset(root, t["prompts"], t["responses"], t["users"], t["annotations"],
                  rows_per_shard=rows_per_shard)
    return root


def _reference(root, user_map, response_map):
    table = read_annotations(root, "train")
    u = user_map.lookup(table.column("user_id").combine_chunks())
    c = response_map.lookup(table.column("chosen_id").combine_chunks())
    r = response_map.lookup(table.column("rejected_id").combine_chunks())
    order = np.lexsort((r, c, u))
    return u[order], c[order], r[order]


@pytest.mark.integration
def test_build_matches_reference_and_ignores_sharding(ray_session, tmp_path):
    one = _write(tmp_path / "one", rows_per_shard=1000)
    many = _write(tmp_path / "many", rows_per_shard=3)
    assert len(annotation_files(many, "train")) == 3  # 8 rows in shards of 3
    a, b = build_graph(one), build_graph(many)
    # Seen users only, in users.parquet order; every response, in responses.parquet order.
    assert a.user_map.ids.to_pylist() == ["alice", "bob", "carol", "dave"]
    assert a.response_map.ids.to_pylist() == ["r0a", "r0b", "r1a", "r1b", "r2a", "r2b"]
    assert list(a.user_group) == ["short", "short", "long", "long"]
    ref = _reference(one, a.user_map, a.response_map)
    for got in (a.train, b.train):
        np.testing.assert_array_equal(got.user, ref[0])
        np.testing.assert_array_equal(got.chosen, ref[1])
        np.testing.assert_array_equal(got.rejected, ref[2])
    expect = SignedGraph.from_triples(*ref, 4, 6)
    for name in ("pos_user", "pos_response", "neg_user", "neg_response"):
        assert torch.equal(getattr(a.graph, name), getattr(expect, name))
        assert torch.equal(getattr(b.graph, name), getattr(expect, name))
    # alice chose r0a (index 0) over r0b (index 1): one positive and one negative edge.
    pos = set(zip(a.graph.pos_user.tolist(), a.graph.pos_response.tolist()))
    neg = set(zip(a.graph.neg_user.tolist(), a.graph.neg_response.tolist()))
    assert (0, 0) in pos and (0, 1) in neg and (0, 1) not in pos
    assert a.stats["n_train_annotations"] == 8 and a.stats["n_pos_edges"] == 8


@pytest.mark.integration
def test_kinds_are_coded(ray_session, tiny_dataset):
    user_map, response_map, _ = build_id_maps(tiny_dataset)
    append_annotations(tiny_dataset, "test", pa.table({
        "user_id": ["bob", "dave"], "prompt_id": ["p1", "p0"], "chosen_id": ["r1a", "r0b"],
        "rejected_id": ["r1b", "r0a"], "kind": ["common", None]}))
    t = index_annotations(tiny_dataset, "test", user_map, response_map, with_kind=True)
    by_user = {int(u): int(k) for u, k in zip(t.user, t.kind)}
    # alice, carol: controversial (1); bob: common (0); dave: unknown (-1).
    assert by_user == {0: 1, 2: 1, 1: 0, 3: -1}


@pytest.mark.integration
def test_unknown_user_names_file_row_and_field(ray_session, tiny_dataset):
    path = append_annotations(tiny_dataset, "train", pa.table({
        "user_id": ["bob", "mallory"], "prompt_id": ["p1", "p1"], "chosen_id": ["r1a", "r1a"],
        "rejected_id": ["r1b", "r1b"], "kind": [None, None]}))
    with pytest.raises(DatasetError) as err:
        build_graph(tiny_dataset)
    msg = str(err.value)
    assert str(path) in msg and "row 1" in msg and "'user_id'" in msg and "mallory" in msg


@pytest.mark.integration
def test_unseen_user_in_train_is_rejected(ray_session, tiny_dataset):
    append_annotations(tiny_dataset, "train", pa.table({
        "user_id": ["erin"], "prompt_id": ["p1"], "chosen_id": ["r1a"], "rejected_id": ["r1b"],
        "kind": [None]}))
    with pytest.raises(DatasetError, match=r"row 0: field 'user_id' names unknown seen user 'erin'"):
        build_graph(tiny_dataset)


@pytest.mark.integration
def test_same_chosen_and_rejected_is_rejected(ray_session, tiny_dataset):
    append_annotations(tiny_dataset, "train", pa.table({
        "user_id": ["bob", "bob", "bob"], "prompt_id": ["p1"] * 3, "chosen_id": ["r1a", "r1a", "r2a"],
        "rejected_id": ["r1b", "r1b", "r2a"], "kind": [None] * 3}))
    with pytest.raises(DatasetError, match=r"row 2: fields 'chosen_id' and 'rejected_id' are the same"):
        build_graph(tiny_dataset)


@pytest.mark.integration
def test_unknown_response_and_missing_column(ray_session, tiny_dataset):
    append_annotations(tiny_dataset, "train", pa.table({
        "user_id": ["bob"], "prompt_id": ["p1"], "chosen_id": ["r9"], "rejected_id": ["r1b"],
        "kind": [None]}))
    with pytest.raises(DatasetError, match=r"field 'chosen_id' names unknown response 'r9'"):
        build_graph(tiny_dataset)
    bad = tiny_dataset / "annotations" / "train" / "zz-bad.parquet"
    pq.write_table(pa.table({"user_id": ["bob"], "chosen_id": ["r1a"]}), bad)
    with pytest.raises(DatasetError, match=r"zz-bad.parquet: missing column 'rejected_id'"):
        build_graph(tiny_dataset)


@pytest.mark.integration
def test_dictionary_encoded_ids_build_the_same_graph(ray_session, tiny_dataset):
    plain = build_graph(tiny_dataset)
    for path in annotation_files(tiny_dataset, "train"):
        table = pq.read_table(path)
        pq.write_table(pa.table({c: table.column(c).dictionary_encode() for c in table.column_names}), path)
    encoded = build_graph(tiny_dataset)
    for name in ("pos_user", "pos_response", "neg_user", "neg_response"):
        assert torch.equal(getattr(plain.graph, name), getattr(encoded.graph, name))
    append_annotations(tiny_dataset, "train", pa.table({
        "user_id": ["bob"], "prompt_id": ["p1"], "chosen_id": ["r1a"], "rejected_id": ["r1a"]}))
    with pytest.raises(DatasetError, match=r"row 0: fields 'chosen_id' and 'rejected_id' are the same"):
        build_graph(tiny_dataset)


@pytest.mark.integration
def test_shard_without_kind_reads_unknown_kinds(ray_session, tmp_path):
    t = tiny_tables()
    root = tmp_path / "d"
    write_dataset(root, t["prompts"], t["responses"], t["users"].drop_columns(["group"]), t["annotations"],
                  rows_per_shard=5)
    first = annotation_files(root, "train")[0]
    pq.write_table(pq.read_table(first).drop_columns(["kind"]), first)
    pq.write_table(pq.read_table(root / "users.parquet").drop_columns(["group"]), root / "users.parquet")
    user_map, response_map, groups = build_id_maps(root)
    assert list(groups) == [None] * 4
    triples = index_annotations(root, "train", user_map, response_map, with_kind=True)
    assert sorted(triples.kind.tolist()) == [-1] * 5 + [1] * 3
    assert build_graph(root, holdout_fraction=0.25).stats["n_train_annotations"] == 6


@pytest.mark.parametrize("table, column", [("users", "user_id"), ("responses", "response_id")])
def test_duplicate_ids_name_file_and_row(tiny_dataset, table, column):
    path = tiny_dataset / f"{table}.parquet"
    t = pq.read_table(path)
    pq.write_table(pa.concat_tables([t, t.slice(1, 1)]), path)
    with pytest.raises(DatasetError, match=rf"{table}.parquet: row {t.num_rows}: field '{column}' value .* is not unique"):
        build_id_maps(tiny_dataset)


@pytest.mark.integration
def test_empty_train_split_is_named(ray_session, tiny_dataset):
    """No train rows means no graph to learn from: say so naming the split, before training."""
    for path in annotation_files(tiny_dataset, "train"):
        pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(DatasetError, match=r"annotations/train: split 'train' has no annotations"):
        build_graph(tiny_dataset)


@pytest.mark.integration
def test_kind_outside_the_contract_names_file_and_row(ray_session, tiny_dataset):
    """'Common' is not a kind: it was silently scored as 'unknown' in train_gnn's by-kind metrics."""
    user_map, response_map, _ = build_id_maps(tiny_dataset)
    path = append_annotations(tiny_dataset, "test", pa.table({
        "user_id": ["bob", "dave"], "prompt_id": ["p1", "p0"], "chosen_id": ["r1a", "r0b"],
        "rejected_id": ["r1b", "r0a"], "kind": [None, "Common"]}))
    with pytest.raises(DatasetError, match=r"row 1: field 'kind' is 'Common', expected one of") as err:
        index_annotations(tiny_dataset, "test", user_map, response_map, with_kind=True)
    assert str(path) in str(err.value)
    assert len(index_annotations(tiny_dataset, "test", user_map, response_map)) == 4  # kinds not read


def test_bad_user_split_names_users_file(tiny_dataset):
    """split 'Seen' is a users.parquet error; it was reported as an unknown seen user in train."""
    path = tiny_dataset / "users.parquet"
    t = pq.read_table(path)
    split = t.column("split").to_pylist()
    split[2] = "Seen"
    pq.write_table(t.set_column(t.column_names.index("split"), "split", pa.array(split)), path)
    with pytest.raises(DatasetError, match=r"users.parquet: row 2: field 'split' is 'Seen', expected one of"):
        build_id_maps(tiny_dataset)
