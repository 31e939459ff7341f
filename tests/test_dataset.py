"""The dataset contract: round trip, sharding, atomic appends, and clear rejection of bad data."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from copl_ray.data import (
    DatasetError,
    annotation_files,
    append_annotations,
    read_annotations,
    read_table,
    validate_dataset,
    write_dataset,
)
from tests.tiny_data import tiny_tables


def _rewrite_split(root, split, mutate):
    """Apply ``mutate(table) -> table`` to the single shard of a split."""
    (path,) = annotation_files(root, split)
    table = pq.read_table(path)
    pq.write_table(mutate(table), path)
    return path


def _set(table, column, row, value):
    values = table.column(column).to_pylist()
    values[row] = value
    idx = table.column_names.index(column)
    return table.set_column(idx, column, pa.array(values, type=table.schema.field(column).type))


def test_round_trip_and_summary(tiny_dataset):
    summary = validate_dataset(tiny_dataset)
    assert (summary.n_seen_users, summary.n_unseen_users) == (4, 2)
    assert summary.n_annotations == {"train": 8, "test": 2, "fewshot": 2, "test_unseen": 2}
    train = read_annotations(tiny_dataset, "train")
    assert train.column_names == ["user_id", "prompt_id", "chosen_id", "rejected_id", "kind"]
    assert train.column("user_id").to_pylist()[:2] == ["alice", "alice"]
    assert read_table(tiny_dataset, "users").num_rows == 6


def test_sharding_splits_rows_over_files(tmp_path):
    t = tiny_tables()
    write_dataset(tmp_path, t["prompts"], t["responses"], t["users"], t["annotations"], rows_per_shard=3)
    files = annotation_files(tmp_path, "train")
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert read_annotations(tmp_path, "train").equals(t["annotations"]["train"].select(
        ["user_id", "prompt_id", "chosen_id", "rejected_id", "kind"]).cast(
        read_annotations(tmp_path, "train").schema))
    validate_dataset(tmp_path)


def test_read_with_source_names_file_and_row(tmp_path):
    t = tiny_tables()
    write_dataset(tmp_path, t["prompts"], t["responses"], t["users"], t["annotations"], rows_per_shard=5)
    table = read_annotations(tmp_path, "train", with_source=True)
    assert table.column("_row").to_pylist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert table.column("_file")[6].as_py().endswith("part-00001.parquet")


def test_append_is_a_new_shard_and_keeps_old_data(tiny_dataset):
    before = read_annotations(tiny_dataset, "train")
    extra = pa.table({"user_id": ["bob"], "prompt_id": ["p1"], "chosen_id": ["r1a"], "rejected_id": ["r1b"]})
    path = append_annotations(tiny_dataset, "train", extra)
    assert path.name.startswith("append-") and path.exists()
    after = read_annotations(tiny_dataset, "train")
    assert after.num_rows == before.num_rows + 1
    assert after.slice(0, before.num_rows).equals(before)
    assert after.column("kind")[before.num_rows].as_py() is None
    validate_dataset(tiny_dataset)


def test_temporary_files_are_ignored(tiny_dataset):
    folder = tiny_dataset / "annotations" / "train"
    (folder / ".append-deadbeef.parquet.tmp").write_bytes(b"half a file")
    (folder / ".hidden.parquet").write_bytes(b"not parquet")
    validate_dataset(tiny_dataset)


@pytest.mark.parametrize(
    "split, column, row, value, message",
    [
        ("train", "user_id", 3, "mallory", "row 3: field 'user_id' 'mallory' names an unknown user"),
        ("train", "chosen_id", 5, "r9z", "row 5: field 'chosen_id' names unknown response 'r9z'"),
        ("test", "rejected_id", 1, "nope", "row 1: field 'rejected_id' names unknown response 'nope'"),
        ("train", "rejected_id", 0, "r0a", "row 0: fields 'chosen_id' and 'rejected_id' are the same"),
        ("train", "user_id", 2, "erin", "row 2: field 'user_id' 'erin' is a unseen user"),
        ("fewshot", "user_id", 1, "alice", "row 1: field 'user_id' 'alice' is a seen user"),
        ("train", "kind", 4, "spicy", "row 4: field 'kind' is 'spicy'"),
        ("train", "prompt_id", 6, "p77", "row 6: field 'prompt_id' names unknown prompt 'p77'"),
    ],
)
def test_bad_annotations_are_rejected_naming_file_row_field(tiny_dataset, split, column, row, value, message):
    path = _rewrite_split(tiny_dataset, split, lambda t: _set(t, column, row, value))
    with pytest.raises(DatasetError) as err:
        validate_dataset(tiny_dataset)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_and_mistyped_columns(tiny_dataset):
    path = _rewrite_split(tiny_dataset, "train", lambda t: t.drop_columns(["rejected_id"]))
    with pytest.raises(DatasetError, match=r"missing column 'rejected_id'") as err:
        validate_dataset(tiny_dataset)
    assert str(path) in str(err.value)

    def to_int(t):
        return t.set_column(1, "prompt_id", pa.array(np.arange(t.num_rows)))

    write = tiny_tables()
    write_dataset(tiny_dataset, write["prompts"], write["responses"], write["users"], write["annotations"])
    _rewrite_split(tiny_dataset, "train", to_int)
    with pytest.raises(DatasetError, match=r"column 'prompt_id' has type int64, expected string"):
        validate_dataset(tiny_dataset)


def test_null_in_required_field(tiny_dataset):
    _rewrite_split(tiny_dataset, "test", lambda t: _set(t, "user_id", 1, None))
    with pytest.raises(DatasetError, match=r"row 1: field 'user_id' is null"):
        validate_dataset(tiny_dataset)


def test_empty_and_missing_splits(tiny_dataset):
    _rewrite_split(tiny_dataset, "test", lambda t: t.slice(0, 0))
    with pytest.raises(DatasetError, match=r"split 'test' is empty"):
        validate_dataset(tiny_dataset)
    write = tiny_tables()
    write_dataset(tiny_dataset, write["prompts"], write["responses"], write["users"], write["annotations"])
    shutil.rmtree(tiny_dataset / "annotations" / "test_unseen")
    with pytest.raises(DatasetError, match=r"split 'test_unseen' is empty or missing"):
        validate_dataset(tiny_dataset)


def test_duplicate_ids_and_bad_user_split(tiny_dataset):
    users = pq.read_table(tiny_dataset / "users.parquet")
    pq.write_table(_set(users, "user_id", 3, "alice"), tiny_dataset / "users.parquet")
    with pytest.raises(DatasetError, match=r"users.parquet: row 3: field 'user_id' value 'alice' is not unique"):
        validate_dataset(tiny_dataset)
    pq.write_table(_set(users, "split", 2, "maybe"), tiny_dataset / "users.parquet")
    with pytest.raises(DatasetError, match=r"users.parquet: row 2: field 'split' is 'maybe'"):
        validate_dataset(tiny_dataset)


def test_missing_table_and_corrupt_file(tiny_dataset):
    (tiny_dataset / "prompts.parquet").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"prompts.parquet: not a readable Parquet file"):
        validate_dataset(tiny_dataset)
    (tiny_dataset / "prompts.parquet").unlink()
    with pytest.raises(DatasetError, match=r"prompts.parquet: file not found"):
        validate_dataset(tiny_dataset)


def test_extra_columns_are_allowed(tmp_path):
    t = tiny_tables()
    responses = t["responses"].append_column("score_length", pa.array([1.0, 5.0, 1.0, 4.0, 1.0, 3.0]))
    write_dataset(tmp_path, t["prompts"], responses, t["users"], t["annotations"])
    validate_dataset(tmp_path)
    assert "score_length" in read_table(tmp_path, "responses").column_names


def test_dictionary_encoded_string_columns_are_strings(tmp_path):
    """pandas categoricals and dictionary pages store ids as dictionary<string>: valid strings."""
    t = tiny_tables()
    write_dataset(tmp_path, t["prompts"], t["responses"], t["users"], t["annotations"])
    for path in annotation_files(tmp_path, "train") + [tmp_path / "users.parquet"]:
        table = pq.read_table(path)
        pq.write_table(pa.table({c: table.column(c).dictionary_encode() for c in table.column_names}), path)
    assert validate_dataset(tmp_path).n_annotations["train"] == 8
    train = read_annotations(tmp_path, "train")
    assert train.schema.field("user_id").type == pa.string()
    assert train.column("user_id").to_pylist()[:2] == ["alice", "alice"]


def test_absent_nullable_columns_read_as_null(tmp_path):
    """``kind`` and ``group`` are nullable: a file without them is valid and reads as all null."""
    t = tiny_tables()
    write_dataset(tmp_path, t["prompts"], t["responses"], t["users"].drop_columns(["group"]),
                  t["annotations"], rows_per_shard=5)
    first = annotation_files(tmp_path, "train")[0]
    pq.write_table(pq.read_table(first).drop_columns(["kind"]), first)
    users = pq.read_table(tmp_path / "users.parquet").drop_columns(["group"])
    pq.write_table(users, tmp_path / "users.parquet")
    assert validate_dataset(tmp_path).n_annotations["train"] == 8
    kinds = read_annotations(tmp_path, "train").column("kind").to_pylist()
    assert kinds == [None] * 5 + ["controversial"] * 3
    assert read_table(tmp_path, "users").column("group").null_count == 6
    pq.write_table(pq.read_table(first).drop_columns(["chosen_id"]), first)
    with pytest.raises(DatasetError, match=r"missing column 'chosen_id'"):
        validate_dataset(tmp_path)


def test_fewshot_is_optional_cold_start(tiny_dataset):
    """Unseen users may give no onboarding annotation at all (cold start: adaptation falls back to
    the population mean), so ``fewshot`` may be missing; ``test_unseen`` is still required."""
    shutil.rmtree(tiny_dataset / "annotations" / "fewshot")
    assert validate_dataset(tiny_dataset).n_annotations["fewshot"] == 0
    shutil.rmtree(tiny_dataset / "annotations" / "test_unseen")
    with pytest.raises(DatasetError, match=r"split 'test_unseen' is empty or missing"):
        validate_dataset(tiny_dataset)


def test_split_written_as_one_file_or_nested_gets_a_hint(tiny_dataset):
    """annotations/train.parquet (a file, not the contract's folder) or shards one folder too deep:
    the error says where the data is and what the layout wants, not just 'missing'."""
    folder = tiny_dataset / "annotations" / "test"
    (path,) = annotation_files(tiny_dataset, "test")
    nested = folder / "date=2024" / "part-0.parquet"
    nested.parent.mkdir()
    path.rename(nested)
    with pytest.raises(DatasetError, match=r"test: split 'test' is empty or missing.*date=2024/part-0.parquet"):
        validate_dataset(tiny_dataset)
    nested.rename(tiny_dataset / "annotations" / "test.parquet")
    shutil.rmtree(folder)
    with pytest.raises(DatasetError, match=r"is empty or missing.*annotations/test.parquet.*folder"):
        validate_dataset(tiny_dataset)
