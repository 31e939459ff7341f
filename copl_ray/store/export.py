"""Onboarded users' annotations into a dataset, so the next ``train_gnn`` sees them as seen users.

`export_users(store, dataset_dir)` takes every user of a `UserStore` not yet in the dataset and
hands them to `copl_ray.adapt.onboarding.onboard_users` (users appended as ``split="seen"``, their
annotations one new shard of ``annotations/train``; crash-safe order, validated against the
dataset). A missing ``prompt_id`` is filled from ``responses.parquet``. Users already in the
dataset (an earlier export, or an id the dataset has as unseen) are skipped and counted, so the
export can run again after more onboarding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc

from copl_ray.adapt.onboarding import onboard_users
from copl_ray.data.dataset import read_table
from copl_ray.store.user_store import UserStore

__all__ = ["ExportResult", "export_users"]


@dataclass
class ExportResult:
    exported_users: list[str]
    n_annotations: int
    skipped_users: list[str]
    shard: Path | None


def export_users(store: UserStore, dataset_dir: str | os.PathLike) -> ExportResult:
    root = Path(dataset_dir)
    table = store.annotation_table()
    known = read_table(root, "users").column("user_id").combine_chunks()
    in_dataset = pc.is_in(table.column("user_id"), value_set=known)
    stored = store.user_ids()
    known_set = set(known.to_pylist())
    skipped = [u for u in stored if u in known_set]
    table = table.filter(pc.invert(in_dataset))
    if table.num_rows == 0:
        return ExportResult([], 0, skipped, None)
    responses = read_table(root, "responses")
    prompt_of = pc.index_in(table.column("chosen_id"), value_set=responses.column("response_id").combine_chunks())
    derived = responses.column("prompt_id").combine_chunks().take(prompt_of)
    prompt = pc.coalesce(table.column("prompt_id").combine_chunks(), derived)
    table = table.set_column(table.column_names.index("prompt_id"), "prompt_id", prompt)
    res = onboard_users(root, table)  # validates every row (unknown response -> DatasetError naming it)
    return ExportResult(res.new_users, res.n_annotations, skipped, res.shard)
