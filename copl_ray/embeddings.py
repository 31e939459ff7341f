"""Embedding files (CONTRACT section 3).

``users.parquet``: ``user_id: string, embedding: fixed_size_list<float32>[d]``;
``responses.parquet``: ``response_id: string, embedding: fixed_size_list<float32>[d]``.
The file's Arrow schema metadata carries ``copl_ray.embeddings_format_version`` and optional
producer metadata (e.g. how each adapted user was resolved); readers ignore unknown metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EMBEDDINGS_FORMAT_VERSION = "1"
_VERSION_KEY = b"copl_ray.embeddings_format_version"
_META_KEY = b"copl_ray.meta"


def write_embeddings(
    path: str | os.PathLike,
    id_column: str,
    ids,
    embeddings: np.ndarray,
    extra_columns: dict | None = None,
    meta: dict | None = None,
) -> Path:
    """Write [N] ids and [N, d] embeddings (float32) atomically.

    Args:
        id_column: ``"user_id"`` or ``"response_id"``.
        extra_columns: optional more columns (allowed by the contract), each [N].
        meta: optional JSON-able dict stored in the schema metadata.
    """
    emb = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be [N, d], got shape {emb.shape}")
    if not np.isfinite(emb).all():
        bad = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
        raise ValueError(f"embedding row {bad} is not finite; refusing to write {path}")
    n, d = emb.shape
    ids = pa.array(ids, type=pa.string())
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} embeddings")
    values = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), d)
    columns = {id_column: ids, "embedding": values}
    for name, col in (extra_columns or {}).items():
        columns[name] = pa.array(col)
    table = pa.table(columns)
    metadata = {_VERSION_KEY: EMBEDDINGS_FORMAT_VERSION.encode()}
    if meta:
        metadata[_META_KEY] = json.dumps(meta).encode()
    table = table.replace_schema_metadata(metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_embeddings(path: str | os.PathLike, id_column: str | None = None) -> tuple[pa.Array, np.ndarray]:
    """Read an embedding file: (ids [N] string array, embeddings [N, d] float32)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: embedding file not found")
    table = pq.read_table(path)
    if id_column is None:
        id_column = "user_id" if "user_id" in table.column_names else "response_id"
    for col in (id_column, "embedding"):
        if col not in table.column_names:
            raise ValueError(f"{path}: missing column {col!r} (has {table.column_names})")
    emb_col = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(emb_col.type):
        raise ValueError(f"{path}: column 'embedding' has type {emb_col.type}, expected fixed_size_list<float32>[d]")
    d = emb_col.type.list_size
    emb = emb_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d)
    return table.column(id_column).combine_chunks(), emb


def read_embeddings_meta(path: str | os.PathLike) -> dict:
    """Producer metadata stored by `write_embeddings` (empty dict if none)."""
    md = pq.read_schema(path).metadata or {}
    return json.loads(md[_META_KEY]) if _META_KEY in md else {}
