"""Reading, writing and validating dataset directories (CONTRACT section 1).

Layout::

    DATASET/prompts.parquet, responses.parquet, users.parquet
    DATASET/annotations/{train,test,fewshot,test_unseen}/*.parquet

Annotation splits are folders of Parquet shards so Ray Data reads them in parallel. Every reader
checks the contract columns and their types file by file; `validate_dataset` additionally checks
the references between tables. Every error is a `DatasetError` whose message names the file, the
row (0-based, within that file) and the field.

Writes are atomic per file (write to a temporary name, then ``os.replace``), so a process that
dies mid-write leaves either the old state or the new one, never a truncated shard.
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from copl_ray.data import schema

ANNOTATION_SPLITS = ("train", "test", "fewshot", "test_unseen")
SEEN_SPLITS = ("train", "test")
UNSEEN_SPLITS = ("fewshot", "test_unseen")
DEFAULT_ROWS_PER_SHARD = 1_000_000


class DatasetError(ValueError):
    """A dataset that breaks the contract; the message names file, row and field."""


@contextmanager
def exit_on_dataset_error() -> Iterator[None]:
    """For jobs/ entry points: a `DatasetError` inside ends the job with one ``error: ...`` line
    (its message names the file, row and field) instead of a traceback."""
    try:
        yield
    except DatasetError as exc:
        raise SystemExit(f"error: {exc}") from None


# ----------------------------------------------------------------------------- writing


def write_table(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write one Parquet file atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:  # data on disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _conform(table: pa.Table, contract: pa.Schema, what: str) -> pa.Table:
    """Cast the contract columns to their contract types; keep extra columns after them."""
    missing = [f.name for f in contract if f.name not in table.column_names]
    if missing:
        raise DatasetError(f"{what}: missing column(s) {missing}")
    columns, fields = [], []
    for f in contract:
        columns.append(table.column(f.name).cast(f.type))
        fields.append(f)
    for name in table.column_names:
        if name not in contract.names:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def write_dataset(
    root: str | os.PathLike,
    prompts: pa.Table,
    responses: pa.Table,
    users: pa.Table,
    annotations: Mapping[str, pa.Table],
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
) -> Path:
    """Write a dataset directory. ``annotations`` maps split name to a table with the contract
    columns (``kind`` may be absent: it is then written as null). Splits are sharded into files
    of at most ``rows_per_shard`` rows named ``part-00000.parquet``, ...
    """
    root = Path(root)
    write_table(_conform(prompts, schema.PROMPTS, "prompts"), root / "prompts.parquet")
    write_table(_conform(responses, schema.RESPONSES, "responses"), root / "responses.parquet")
    if "group" not in users.column_names:
        users = users.append_column("group", pa.nulls(users.num_rows, pa.string()))
    write_table(_conform(users, schema.USERS, "users"), root / "users.parquet")
    for split, table in annotations.items():
        if split not in ANNOTATION_SPLITS:
            raise DatasetError(f"unknown annotation split {split!r}; expected {ANNOTATION_SPLITS}")
        if "kind" not in table.column_names:
            table = table.append_column("kind", pa.nulls(table.num_rows, pa.string()))
        table = _conform(table, schema.ANNOTATIONS, f"annotations/{split}")
        folder = root / "annotations" / split
        folder.mkdir(parents=True, exist_ok=True)
        n_shards = max(1, -(-table.num_rows // rows_per_shard))
        written = set()
        for i in range(n_shards):
            chunk = table.slice(i * rows_per_shard, rows_per_shard)
            written.add(write_table(chunk, folder / f"part-{i:05d}.parquet").name)
        for stale in folder.glob("part-*.parquet"):  # shards left by an earlier, larger write
            if stale.name not in written:
                stale.unlink()
    return root


def append_annotations(root: str | os.PathLike, split: str, table: pa.Table) -> Path:
    """Add a new shard to ``annotations/<split>`` atomically and return its path.

    Used by onboarding: the shard name is unique, so concurrent appenders never overwrite each
    other, and a crash leaves no partial file (only a hidden ``.tmp`` that readers skip).
    """
    if split not in ANNOTATION_SPLITS:
        raise DatasetError(f"unknown annotation split {split!r}; expected {ANNOTATION_SPLITS}")
    if "kind" not in table.column_names:
        table = table.append_column("kind", pa.nulls(table.num_rows, pa.string()))
    table = _conform(table, schema.ANNOTATIONS, f"annotations/{split} (appended)")
    # Time-ordered names: appended shards read after the base shards, in the order written.
    name = f"append-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    return write_table(table, Path(root) / "annotations" / split / name)


# ----------------------------------------------------------------------------- reading


def annotation_files(root: str | os.PathLike, split: str) -> list[Path]:
    """The Parquet shards of one split: base shards by name, then appended shards in the order
    they were written (hidden and temporary files skipped)."""
    folder = Path(root) / "annotations" / split
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.parquet") if not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.name.startswith("append-"), p.name))


def missing_split_hint(root: str | os.PathLike, split: str) -> str:
    """Where a split's data sits when ``annotations/<split>/`` holds no shard directly (a single
    ``annotations/<split>.parquet`` file, or shards in sub-folders); "" when nowhere."""
    annotations = Path(root) / "annotations"
    if (annotations / f"{split}.parquet").is_file():
        found = annotations / f"{split}.parquet"
    else:
        nested = sorted((annotations / split).glob("*/**/*.parquet")) if (annotations / split).is_dir() else []
        if not nested:
            return ""
        found = nested[0]
    return (f"; found {found}: a split is a folder of Parquet shards read without sub-folders"
            f" ({annotations / split}/*.parquet)")


def is_string_type(typ: pa.DataType) -> bool:
    """String columns as writers store them: string, large_string, or dictionary-encoded strings
    (pandas categoricals, Spark/Arrow dictionary pages); all read as plain strings."""
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def _check_columns(table: pa.Table, contract: pa.Schema, path: Path) -> pa.Table:
    """Check that the contract columns exist with string type and no stray nulls.

    A nullable column (``group``, ``kind``) that a file leaves out reads as all null, the way
    `write_dataset` writes it."""
    for f in contract:
        if f.name not in table.column_names:
            if f.name in schema.NULLABLE:
                table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
                continue
            raise DatasetError(
                f"{path}: missing column {f.name!r} (has {table.column_names})"
            )
        col = table.column(f.name)
        if col.type == pa.null() and f.name in schema.NULLABLE:
            continue
        if not is_string_type(col.type):
            raise DatasetError(
                f"{path}: column {f.name!r} has type {col.type}, expected {f.type}"
            )
        if f.name not in schema.NULLABLE and col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DatasetError(f"{path}: row {row}: field {f.name!r} is null")
    return _conform(table, contract, str(path))


def read_table(root: str | os.PathLike, name: str) -> pa.Table:
    """Read ``prompts``, ``responses`` or ``users`` with its contract columns checked."""
    path = Path(root) / f"{name}.parquet"
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (dataset {root} is incomplete)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DatasetError(f"{path}: not a readable Parquet file: {exc}") from exc
    return _check_columns(table, schema.TABLES[name], path)


def read_annotation_file(path: Path) -> pa.Table:
    """Read one annotation shard with its columns checked."""
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable Parquet file: {exc}") from exc
    return _check_columns(table, schema.ANNOTATIONS, path)


def read_annotations(root: str | os.PathLike, split: str, with_source: bool = False) -> pa.Table:
    """All shards of one split concatenated (contract columns first, extras kept when shared).

    With ``with_source=True`` two columns ``_file`` (dictionary string) and ``_row`` (int64, row
    within that file) are added so that later checks can name where a bad row came from.
    """
    if split not in ANNOTATION_SPLITS:
        raise DatasetError(f"unknown annotation split {split!r}; expected {ANNOTATION_SPLITS}")
    tables = []
    for path in annotation_files(root, split):
        table = read_annotation_file(path).select(schema.ANNOTATIONS.names)
        if with_source:
            n = table.num_rows
            table = table.append_column(
                "_file", pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), [str(path)])
            ).append_column("_row", pa.array(np.arange(n, dtype=np.int64)))
        tables.append(table)
    if not tables:
        return schema.ANNOTATIONS.empty_table()
    if with_source:
        return pa.concat_tables(tables, promote_options="permissive").unify_dictionaries()
    return pa.concat_tables(tables)


# ----------------------------------------------------------------------------- validation


@dataclass
class DatasetSummary:
    """Row counts of a validated dataset."""

    n_prompts: int
    n_responses: int
    n_seen_users: int
    n_unseen_users: int
    n_annotations: dict[str, int] = field(default_factory=dict)


def _first_violation(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def check_unique(table: pa.Table, column: str, path: Path) -> None:
    values = table.column(column).to_numpy(zero_copy_only=False)
    order = np.argsort(values, kind="stable")
    repeats = order[1:][values[order[1:]] == values[order[:-1]]]
    if repeats.size:
        dup = int(repeats.min())  # the first row whose value appeared earlier
        raise DatasetError(
            f"{path}: row {dup}: field {column!r} value {values[dup]!r} is not unique"
        )


def _check_refs(values: pa.ChunkedArray, known: pa.Array, path: Path, field_: str, what: str) -> None:
    mask = ~pc.is_in(values, value_set=known).to_numpy(zero_copy_only=False)
    bad = _first_violation(mask)
    if bad is not None:
        value = values[bad].as_py()
        raise DatasetError(
            f"{path}: row {bad}: field {field_!r} names unknown {what} {value!r}"
            f" ({int(mask.sum())} row(s) in this split do)"
        )


def validate_dataset(root: str | os.PathLike) -> DatasetSummary:
    """Check a dataset directory against the contract; raise `DatasetError` at the first problem.

    Checks: required files and columns with string types; unique ids; responses name known
    prompts; users' ``split`` is seen/unseen; annotations name known users, prompts and
    responses; chosen != rejected; ``kind`` is common/controversial/null; train/test hold only
    seen users and fewshot/test_unseen only unseen users; train and test are non-empty, and so
    is test_unseen when unseen users exist (fewshot may be empty: cold-start users).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset directory not found")
    prompts = read_table(root, "prompts")
    responses = read_table(root, "responses")
    users = read_table(root, "users")
    check_unique(prompts, "prompt_id", root / "prompts.parquet")
    check_unique(responses, "response_id", root / "responses.parquet")
    check_unique(users, "user_id", root / "users.parquet")
    _check_refs(
        responses.column("prompt_id"), prompts.column("prompt_id").combine_chunks(),
        root / "responses.parquet", "prompt_id", "prompt",
    )
    user_split = users.column("split").to_numpy(zero_copy_only=False)
    bad = _first_violation(~np.isin(user_split, schema.USER_SPLITS))
    if bad is not None:
        raise DatasetError(
            f"{root / 'users.parquet'}: row {bad}: field 'split' is {user_split[bad]!r},"
            f" expected one of {schema.USER_SPLITS}"
        )
    user_ids = users.column("user_id")
    seen = pc.filter(user_ids, pc.equal(users.column("split"), "seen")).combine_chunks()
    unseen = pc.filter(user_ids, pc.equal(users.column("split"), "unseen")).combine_chunks()
    response_ids = responses.column("response_id").combine_chunks()
    prompt_ids = prompts.column("prompt_id").combine_chunks()

    counts = {}
    for split in ANNOTATION_SPLITS:
        files = annotation_files(root, split)
        # fewshot may be empty: an unseen user may give no onboarding annotation (cold start,
        # adapted to the population mean), and all of them may.
        required = split in SEEN_SPLITS or (split == "test_unseen" and len(unseen) > 0)
        n_split = 0
        for path in files:
            table = read_annotation_file(path)
            n_split += table.num_rows
            allowed, other = (seen, "unseen") if split in SEEN_SPLITS else (unseen, "seen")
            mask = ~pc.is_in(table.column("user_id"), value_set=allowed).to_numpy(
                zero_copy_only=False
            )
            bad = _first_violation(mask)
            if bad is not None:
                uid = table.column("user_id")[bad].as_py()
                known = pc.is_in(pa.array([uid]), value_set=user_ids.combine_chunks())[0].as_py()
                reason = f"is a {other} user (split {split!r} takes only" \
                    f" {'seen' if split in SEEN_SPLITS else 'unseen'} users)" if known \
                    else "names an unknown user"
                raise DatasetError(f"{path}: row {bad}: field 'user_id' {uid!r} {reason}")
            _check_refs(table.column("prompt_id"), prompt_ids, path, "prompt_id", "prompt")
            for col in ("chosen_id", "rejected_id"):
                _check_refs(table.column(col), response_ids, path, col, "response")
            same = pc.equal(table.column("chosen_id"), table.column("rejected_id"))
            bad = _first_violation(same.to_numpy(zero_copy_only=False))
            if bad is not None:
                raise DatasetError(
                    f"{path}: row {bad}: fields 'chosen_id' and 'rejected_id' are the same"
                    f" response {table.column('chosen_id')[bad].as_py()!r}"
                )
            kind = table.column("kind")
            bad_kind = pc.and_kleene(
                pc.invert(pc.is_in(kind, value_set=pa.array(schema.KINDS))), pc.is_valid(kind)
            ).to_numpy(zero_copy_only=False)
            bad = _first_violation(bad_kind)
            if bad is not None:
                raise DatasetError(
                    f"{path}: row {bad}: field 'kind' is {kind[bad].as_py()!r},"
                    f" expected one of {schema.KINDS} or null"
                )
        if required and n_split == 0:
            where = root / "annotations" / split
            raise DatasetError(f"{where}: split {split!r} is empty or missing"
                               + missing_split_hint(root, split))
        counts[split] = n_split
    return DatasetSummary(
        n_prompts=prompts.num_rows,
        n_responses=responses.num_rows,
        n_seen_users=len(seen),
        n_unseen_users=len(unseen),
        n_annotations=counts,
    )
