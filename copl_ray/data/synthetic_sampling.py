"""Vectorized per-user sampling and streamed shard writing for the synthetic generators.

`sample_distinct` draws, for every user of a block at once, a uniform random subset of distinct
pair indices (sampling without replacement per user, as the paper's users each answer N_u
different survey items). `ShardWriter` turns a stream of annotation blocks into Parquet shards of
a fixed row count, so 16M annotation rows never sit in memory at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from copl_ray.data import schema
from copl_ray.data.dataset import write_table

# Rows x pool entries of random keys held at once by the small-pool path (~32 MB of float64).
_KEY_BUDGET = 4_000_000


def annotation_counts(rng: np.random.Generator, n_users: int, mean: int, mode: str) -> np.ndarray:
    """Annotations per user: ``all`` gives exactly ``mean``; ``avg`` a uniform draw on
    ``1 .. 2*mean-1`` (paper Sec. 5.1: 1..15 averaging 8, 1..31 averaging 16). Shape [n_users]."""
    if mode == "all":
        return np.full(n_users, mean, np.int64)
    if mode == "avg":
        return rng.integers(1, 2 * mean, size=n_users, dtype=np.int64)
    raise ValueError(f"annotations must be 'all' or 'avg', got {mode!r}")


def sample_distinct(rng: np.random.Generator, counts: np.ndarray, pool_size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row i draw ``counts[i]`` distinct items of ``range(pool_size)``, uniformly.

    Two exact methods, chosen by the expected collision rate: when ``c_max^2 <= 2 * pool_size``
    rows are drawn with replacement and rows holding a repeat are redrawn whole (rejection keeps
    the law uniform over ordered distinct tuples; about ``exp(-c^2 / 2R)`` of rows are accepted
    per round); otherwise each row takes the items with the ``c`` smallest of ``pool_size``
    random keys (chunked so the key matrix stays near 32 MB).

    Args:
        counts: [n] int, each in ``0 .. pool_size``.
    Returns:
        row [sum(counts)] int64 and item [sum(counts)] int64, row-major (row 0's items first).
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = counts.shape[0]
    c_max = int(counts.max()) if n else 0
    if c_max > pool_size:
        raise ValueError(f"a user needs {c_max} distinct pairs but the pool holds only {pool_size}")
    if c_max == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cols = np.arange(c_max)
    unused = cols[None, :] >= counts[:, None]  # [n, c_max] padding beyond each row's count
    if c_max * c_max <= 2 * pool_size:
        draw = rng.integers(0, pool_size, size=(n, c_max), dtype=np.int64)
        todo = np.arange(n)
        while todo.size:
            block = draw[todo]
            # Padding gets distinct negative sentinels so it never counts as a repeat.
            block = np.where(unused[todo], -1 - cols[None, :], block)
            s = np.sort(block, axis=1)
            todo = todo[(s[:, 1:] == s[:, :-1]).any(axis=1)]
            if todo.size:
                draw[todo] = rng.integers(0, pool_size, size=(todo.size, c_max), dtype=np.int64)
    else:
        draw = np.empty((n, c_max), np.int64)
        step = max(1, _KEY_BUDGET // pool_size)
        for start in range(0, n, step):
            keys = rng.random((min(step, n - start), pool_size))
            if c_max < pool_size:
                part = np.argpartition(keys, c_max - 1, axis=1)[:, :c_max]
            else:
                part = np.broadcast_to(np.arange(pool_size), keys.shape).copy()
            # argpartition leaves the c_max smallest in arbitrary order; sort them by key so the
            # first counts[i] of them are the counts[i] smallest keys (a uniform subset).
            order = np.argsort(np.take_along_axis(keys, part, axis=1), axis=1)
            draw[start:start + step] = np.take_along_axis(part, order, axis=1)
    keep = ~unused
    row = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], draw.shape)[keep]
    return row, draw[keep]


class ShardWriter:
    """Write contract annotation tables into ``folder/part-NNNNN.parquet`` shards of exactly
    ``rows_per_shard`` rows (the last one shorter), in the order the tables arrive.

    Other Parquet files left in the folder by an earlier write are removed on `close`.
    """

    def __init__(self, folder: str | os.PathLike, rows_per_shard: int):
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows_per_shard = rows_per_shard
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._written: list[str] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if table.schema.names[: len(schema.ANNOTATIONS)] != schema.ANNOTATIONS.names:
            raise ValueError(f"annotation block has columns {table.schema.names}")
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        while self._pending_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _flush(self, n_rows: int) -> None:
        table = pa.concat_tables(self._pending)
        self._write(table.slice(0, n_rows))
        rest = table.slice(n_rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def _write(self, table: pa.Table) -> None:
        name = f"part-{len(self._written):05d}.parquet"
        write_table(table.combine_chunks(), self.folder / name)
        self._written.append(name)

    def close(self) -> int:
        """Write what is left (an empty split still gets one empty shard); return rows written."""
        if self._pending_rows or not self._written:
            table = pa.concat_tables(self._pending) if self._pending else schema.ANNOTATIONS.empty_table()
            self._write(table)
            self._pending, self._pending_rows = [], 0
        # Shards of an earlier dataset in this folder (base or appended) would mix two datasets.
        for stale in self.folder.glob("*.parquet"):
            if stale.name not in self._written:
                stale.unlink()
        return self.rows
