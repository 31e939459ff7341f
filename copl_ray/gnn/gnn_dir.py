"""A ``train_gnn`` output folder (``gnn_dir``, docs/ARCHITECTURE.md): its one writer, its readers,
and the only place its file names are spelled:

```
users.parquet          CONTRACT 3 (user_id, embedding); rows in dense-index order
responses.parquet      CONTRACT 3 (response_id, embedding); rows in dense-index order
user_index.parquet     IdMap of users; response_index.parquet IdMap of responses
graph.safetensors      SignedGraph (dense indices)
model.safetensors      `copl_ray.gnn.model.save_model`: weights + format_version, kind, config JSON
```

``metrics.json`` and ``config.yaml`` are written by the job. Every file is written atomically by
its writer, and the embedding files last, so a reader that finds ``users.parquet`` finds the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from copl_ray.embeddings import read_embeddings, write_embeddings
from copl_ray.graph.id_map import IdMap
from copl_ray.graph.signed_graph import GRAPH_FILE, SignedGraph

USERS_FILE = "users.parquet"  # also the name of adapt_users' output (CONTRACT 3): same format
RESPONSES_FILE = "responses.parquet"
USER_INDEX_FILE = "user_index.parquet"
RESPONSE_INDEX_FILE = "response_index.parquet"
MODEL_FILE = "model.safetensors"

__all__ = ["USERS_FILE", "RESPONSES_FILE", "USER_INDEX_FILE", "RESPONSE_INDEX_FILE", "MODEL_FILE", "GRAPH_FILE",
           "export_gnn_dir", "users_path", "read_user_embeddings", "read_response_embeddings", "read_id_maps"]


def users_path(folder: str | os.PathLike) -> Path:
    """The user-embedding file of a gnn_dir or an adapt_users output."""
    return Path(folder) / USERS_FILE


def read_user_embeddings(folder: str | os.PathLike) -> tuple[pa.Array, np.ndarray]:
    """(user ids, [n_users, d] float32) of a gnn_dir or an adapt_users output."""
    return read_embeddings(users_path(folder), "user_id")


def read_response_embeddings(gnn_dir: str | os.PathLike) -> tuple[pa.Array, np.ndarray]:
    """(response ids, [n_responses, d] float32) of a gnn_dir."""
    return read_embeddings(Path(gnn_dir) / RESPONSES_FILE, "response_id")


def read_id_maps(gnn_dir: str | os.PathLike) -> tuple[IdMap, IdMap]:
    """(users, responses) id maps of a gnn_dir: the dense order of its embeddings and graph."""
    return IdMap.load(Path(gnn_dir) / USER_INDEX_FILE), IdMap.load(Path(gnn_dir) / RESPONSE_INDEX_FILE)


def export_gnn_dir(
    out_dir: str | os.PathLike,
    graph: SignedGraph,
    user_map: IdMap,
    response_map: IdMap,
    e_user: torch.Tensor | np.ndarray,
    e_resp: torch.Tensor | np.ndarray,
    model: torch.nn.Module,
    embedding_meta: dict | None = None,
) -> dict[str, Path]:
    """Write the gnn_dir artifacts.

    Args:
        e_user: [n_users, d] final user embeddings e_u^(L), dense order of ``user_map``.
        e_resp: [n_responses, d] final response embeddings e_r^(L), dense order of ``response_map``.
        embedding_meta: optional producer metadata for the embedding files.
    Returns:
        name -> path of every file written.
    """
    from copl_ray.gnn.model import save_model  # here: the readers stay free of the model's imports

    out = Path(out_dir)
    e_user = np.asarray(e_user.detach().cpu() if torch.is_tensor(e_user) else e_user, dtype=np.float32)
    e_resp = np.asarray(e_resp.detach().cpu() if torch.is_tensor(e_resp) else e_resp, dtype=np.float32)
    if e_user.shape[0] != len(user_map) or e_resp.shape[0] != len(response_map):
        raise ValueError(f"embeddings {e_user.shape}/{e_resp.shape} do not match the id maps "
                         f"({len(user_map)} users, {len(response_map)} responses)")
    if e_user.shape[1] != e_resp.shape[1]:
        raise ValueError(f"user dim {e_user.shape[1]} != response dim {e_resp.shape[1]}: no dot product")
    paths = {
        "user_index": user_map.save(out / USER_INDEX_FILE),
        "response_index": response_map.save(out / RESPONSE_INDEX_FILE),
        "graph": graph.save(out),
        # `save_model` records kind + config, so `load_model` rebuilds any of the four models.
        "model": save_model(getattr(model, "module", model), out / MODEL_FILE),
    }
    meta = {"producer": "train_gnn", **(embedding_meta or {})}
    paths["responses"] = write_embeddings(out / RESPONSES_FILE, "response_id", response_map.ids,
                                          e_resp, meta=meta)
    paths["users"] = write_embeddings(users_path(out), "user_id", user_map.ids, e_user, meta=meta)
    return paths
