"""Onboarding: new users' annotations are kept in the dataset so the next GNN training sees them.

``onboard_users(dataset_dir, annotations)`` validates the new rows against the dataset, then writes
in an order that keeps the dataset valid after a crash at any point:

1. ``users.parquet`` is rewritten with the new users appended as ``split="seen"`` (one file by
   contract, so it is rewritten whole: temporary file, fsync, ``os.replace``). A seen user without
   annotations is valid, so a crash after this step leaves a valid dataset.
2. Their annotations become one new shard of ``annotations/train`` through
   `copl_ray.data.append_annotations` (atomic, unique name). Until the rename the shard is a
   hidden ``.tmp`` file that readers skip.

User ids must be new to the dataset. Ids already present are refused, unseen ones included: an
unseen user's ``fewshot``/``test_unseen`` rows are evaluation data, and promoting the user to seen
would either break the contract (those splits take only unseen users) or need those rows moved,
which no single atomic write can do.

Concurrent onboarders are not serialized (no lock): two processes that rewrite ``users.parquet`` at
once can lose one's users. Run onboarding from one writer (the serving layer's single actor).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from copl_ray.data import schema
from copl_ray.data.dataset import (DatasetError, append_annotations, read_table,
                                   write_table)

__all__ = ["OnboardResult", "onboard_users"]



@dataclass
class OnboardResult:
    """What `onboard_users` wrote: ``new_users`` added as seen, ``n_annotations`` rows appended in
    ``shard``."""

    new_users: list[str]
    n_annotations: int
    shard: Path | None


def _crash_point(step: str, crash_after: str | None) -> None:
    if crash_after == step:  # tests only: die as a SIGKILL would, after this step
        os._exit(137)


def _validate(root: Path, table: pa.Table, users: pa.Table) -> pa.Table:
    where = "onboarding annotations"
    for f in schema.ANNOTATIONS:
        if f.name not in table.column_names:
            if f.name in schema.NULLABLE:
                table = table.append_column(f.name, pa.nulls(table.num_rows, pa.string()))
                continue
            raise DatasetError(f"{where}: missing column {f.name!r} (has {table.column_names})")
        col = table.column(f.name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or col.type == pa.null()):
            raise DatasetError(f"{where}: column {f.name!r} has type {col.type}, expected string")
        if f.name not in schema.NULLABLE and col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DatasetError(f"{where}: row {row}: field {f.name!r} is null")
    responses = read_table(root, "responses")
    rid = responses.column("response_id").combine_chunks()
    for name in ("chosen_id", "rejected_id"):
        known = pc.is_in(table.column(name), value_set=rid).to_numpy(zero_copy_only=False)
        if not known.all():
            row = int(np.flatnonzero(~known)[0])
            raise DatasetError(f"{where}: row {row}: field {name!r} names unknown response "
                               f"{table.column(name)[row].as_py()!r}")
    pid = read_table(root, "prompts").column("prompt_id").combine_chunks()
    known = pc.is_in(table.column("prompt_id"), value_set=pid).to_numpy(zero_copy_only=False)
    if not known.all():
        row = int(np.flatnonzero(~known)[0])
        raise DatasetError(f"{where}: row {row}: field 'prompt_id' names unknown prompt "
                           f"{table.column('prompt_id')[row].as_py()!r}")
    same = pc.equal(table.column("chosen_id"), table.column("rejected_id")).to_numpy(zero_copy_only=False)
    if same.any():
        row = int(np.flatnonzero(same)[0])
        raise DatasetError(f"{where}: row {row}: fields 'chosen_id' and 'rejected_id' are the same response")
    kind = table.column("kind")
    bad = pc.and_kleene(pc.invert(pc.is_in(kind, value_set=pa.array(schema.KINDS))),
                        pc.is_valid(kind)).to_numpy(zero_copy_only=False)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{where}: row {row}: field 'kind' is {kind[row].as_py()!r}")
    uid = users.column("user_id").combine_chunks()
    exists = pc.is_in(table.column("user_id"), value_set=uid).to_numpy(zero_copy_only=False)
    if exists.any():
        row = int(np.flatnonzero(exists)[0])
        value = table.column("user_id")[row].as_py()
        split = users.column("split")[pc.index(uid, value).as_py()].as_py()
        raise DatasetError(f"{where}: row {row}: field 'user_id' {value!r} is already in the dataset "
                           f"(split {split!r}); onboarding takes new user ids only")
    return table.select(schema.ANNOTATIONS.names)


def onboard_users(dataset_dir: str | os.PathLike, annotations: pa.Table,
                  groups: dict[str, str] | None = None, crash_after: str | None = None) -> OnboardResult:
    """Append new users and their annotations to a dataset as seen users.

    Args:
        annotations: contract annotation columns ([P] rows; ``kind`` optional).
        groups: optional user_id -> group for the users.parquet ``group`` column.
        crash_after: tests only: ``"users"`` or ``"annotations"`` ends the process (exit 137)
            right after that step, to check a crash leaves a valid dataset.
    Raises:
        DatasetError: naming the row and field of the first bad annotation.
    """
    root = Path(dataset_dir)
    users = read_table(root, "users")
    table = _validate(root, annotations, users)
    fresh = pc.unique(table.column("user_id").combine_chunks())
    groups = groups or {}
    add = pa.table({"user_id": fresh, "split": pa.array(["seen"] * len(fresh), pa.string()),
                    "group": pa.array([groups.get(u) for u in fresh.to_pylist()], pa.string())})
    extra = [c for c in users.column_names if c not in add.column_names]
    for c in extra:  # generator columns (weights, ...) are unknown for new users: null
        add = add.append_column(users.schema.field(c), pa.nulls(len(fresh), users.schema.field(c).type))
    write_table(pa.concat_tables([users, add.select(users.column_names)]), root / "users.parquet")
    _crash_point("users", crash_after)
    shard = append_annotations(root, "train", table) if table.num_rows else None
    _crash_point("annotations", crash_after)
    return OnboardResult(fresh.to_pylist(), table.num_rows, shard)
