"""String id <-> dense index maps, written next to the graph so embeddings export under the
original ids. Format: a Parquet file with one column ``id`` (string); row i holds the id of
dense index i.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


class IdMap:
    """Dense indices for opaque string ids.

    Args:
        ids: [N] unique string ids; index i <-> ``ids[i]``.
    """

    def __init__(self, ids: pa.Array | list[str] | np.ndarray):
        self.ids = pa.array(ids, type=pa.string()) if not isinstance(ids, pa.Array) else ids.cast(pa.string())
        if pc.count_distinct(self.ids).as_py() != len(self.ids):
            raise ValueError("IdMap ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"IdMap(n={len(self)})"

    def lookup(self, values: pa.Array | pa.ChunkedArray | list[str], what: str = "id") -> np.ndarray:
        """Dense indices [N] int64 of ``values``; raises KeyError naming the first unknown one."""
        values = pa.array(values, type=pa.string()) if isinstance(values, list) else values
        idx = pc.index_in(values, value_set=self.ids)
        if idx.null_count:
            missing = pc.filter(values, pc.is_null(idx))
            raise KeyError(f"unknown {what} {missing[0].as_py()!r} ({len(missing)} unknown)")
        return idx.to_numpy(zero_copy_only=False).astype(np.int64)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.table({"id": self.ids}), tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "IdMap":
        return cls(pq.read_table(path).column("id").combine_chunks())
