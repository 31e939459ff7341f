"""Reading the job's input prompts: a Parquet or JSON-lines file (or a folder of them) with
``prompt_id`` and ``text``. Bad input fails with the file, row (or line) and field named."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from copl_ray.data.dataset import DatasetError, is_string_type
from copl_ray.data.importers.common import iter_json_records, located, require, source_files

__all__ = ["read_prompts", "prompts_fingerprint"]


def _read_jsonl(path: Path) -> pa.Table:
    ids, texts, lines = [], [], []
    for line, rec in iter_json_records(path):
        ids.append(require(rec, "prompt_id", str, path, line))
        texts.append(require(rec, "text", str, path, line))
        lines.append(line)
    return pa.table({"prompt_id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()),
                     "_line": pa.array(lines, pa.int64())})


def _read_parquet(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DatasetError(f"{path}: not a readable Parquet file: {exc}") from None
    for name in ("prompt_id", "text"):
        if name not in table.column_names:
            raise located(path, None, name, f"is missing (columns: {table.column_names})")
        if not is_string_type(table.schema.field(name).type):
            raise located(path, None, name, f"has type {table.schema.field(name).type}, expected string")
        nulls = table.column(name).is_null().to_pylist()
        if any(nulls):
            raise DatasetError(f"{path}: row {nulls.index(True)}: field {name!r} is null")
    return pa.table({"prompt_id": table.column("prompt_id").cast(pa.string()),
                     "text": table.column("text").cast(pa.string()),
                     "_line": pa.array(range(table.num_rows), pa.int64())})


def read_prompts(path: str | os.PathLike, max_prompts: int | None = None) -> pa.Table:
    """``prompt_id``, ``text`` of every input prompt, in file order (files sorted by name).

    Raises:
        DatasetError: an unreadable file, a missing / mistyped / empty field, or a repeated
            ``prompt_id`` (naming the file and row or line of the repeat).
    """
    files = source_files(path, ("*.parquet", "*.jsonl", "*.json"), "prompt")
    tables, seen = [], {}
    for f in files:
        table = _read_parquet(f) if f.suffix == ".parquet" else _read_jsonl(f)
        unit = "row" if f.suffix == ".parquet" else "line"
        for pid, text, line in zip(*(table.column(c).to_pylist() for c in ("prompt_id", "text", "_line"))):
            if not pid.strip():
                raise DatasetError(f"{f}: {unit} {line}: field 'prompt_id' is empty")
            if not text.strip():
                raise DatasetError(f"{f}: {unit} {line}: field 'text' is empty (prompt {pid!r})")
            if pid in seen:
                raise DatasetError(f"{f}: {unit} {line}: prompt_id {pid!r} repeats ({seen[pid]})")
            seen[pid] = f"{f.name} {unit} {line}"
        tables.append(table.drop_columns(["_line"]))
    if not tables or sum(t.num_rows for t in tables) == 0:
        raise DatasetError(f"{path}: no prompts")
    table = pa.concat_tables(tables)
    return table.slice(0, max_prompts) if max_prompts is not None else table


def prompts_fingerprint(prompts: pa.Table) -> str:
    """A digest of the prompts' ids and texts in order: a restarted run resumes only on the same input."""
    h = hashlib.blake2b(digest_size=12)
    for pid, text in zip(prompts.column("prompt_id").to_pylist(), prompts.column("text").to_pylist()):
        h.update(pid.encode())
        h.update(b"\x00")
        h.update(text.encode())
        h.update(b"\x01")
    return h.hexdigest()
