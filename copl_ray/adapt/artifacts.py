"""A ``train_gnn`` output folder (``gnn_dir``, docs/ARCHITECTURE.md) loaded once into memory.

The serving layer loads `GNNArtifacts` once per replica and calls the plain functions of
`copl_ray.adapt.core` per request; jobs load it once per run. Everything adaptation needs is
precomputed here so a request does no O(n_users) work:

* final embeddings ``e_user [U, d]`` and ``e_resp [R, d]`` (float32 torch tensors);
* positive-edge CSR in both directions (response -> users who chose it, user -> responses chosen);
* a string -> dense index dict for responses (a per-request ``pyarrow.compute.index_in`` would
  rebuild a hash table of all R ids every call);
* ``priority [U]``: a fixed random rank of the seen users. Every neighbour cap and the global
  fallback sample keep the users of lowest rank, so the single-user and batch paths pick the very
  same users and a result never depends on batch composition.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from copl_ray.gnn.gnn_dir import (RESPONSE_INDEX_FILE, RESPONSES_FILE, USER_INDEX_FILE, USERS_FILE, read_id_maps,
                                  read_response_embeddings, read_user_embeddings)
from copl_ray.graph.signed_graph import SignedGraph, csr

__all__ = ["GNNArtifacts", "load_gnn_artifacts"]


@dataclass
class GNNArtifacts:
    """Embeddings, id maps and graph of a trained GNN, with the indexes adaptation needs.

    Attributes:
        user_ids: [U] string ids of the seen users (dense order).
        response_ids: [R] string ids of the responses (dense order).
        e_user: [U, d] float32 final user embeddings e_u^(L).
        e_resp: [R, d] float32 final response embeddings e_r^(L).
        graph: the SignedGraph over seen users' train annotations.
    """

    user_ids: pa.Array
    response_ids: pa.Array
    e_user: torch.Tensor
    e_resp: torch.Tensor
    graph: SignedGraph
    seed: int = 0
    # Derived in __post_init__.
    resp_users_indptr: np.ndarray = field(init=False, repr=False)  # [R + 1]
    resp_users: np.ndarray = field(init=False, repr=False)         # [E+] users, grouped by response
    user_resps_indptr: np.ndarray = field(init=False, repr=False)  # [U + 1]
    user_resps: np.ndarray = field(init=False, repr=False)         # [E+] responses, grouped by user
    resp_neg_indptr: np.ndarray = field(init=False, repr=False)    # [R + 1]
    resp_neg_users: np.ndarray = field(init=False, repr=False)     # [E-] users who rejected, by response
    priority: np.ndarray = field(init=False, repr=False)           # [U] int64 rank, 0 = first kept
    population_mean: torch.Tensor = field(init=False, repr=False)  # [d]
    _response_index: dict = field(init=False, repr=False)

    def __post_init__(self):
        g = self.graph
        self.e_user = torch.as_tensor(self.e_user, dtype=torch.float32).contiguous()
        self.e_resp = torch.as_tensor(self.e_resp, dtype=torch.float32).contiguous()
        if self.e_user.ndim != 2 or self.e_resp.ndim != 2 or self.e_user.shape[1] != self.e_resp.shape[1]:
            raise ValueError(f"embeddings must be [U, d] and [R, d], got {tuple(self.e_user.shape)} "
                             f"and {tuple(self.e_resp.shape)}")
        if self.e_user.shape[0] != g.n_users or len(self.user_ids) != g.n_users:
            raise ValueError(f"{len(self.user_ids)} user ids / {self.e_user.shape[0]} user embeddings "
                             f"for a graph of {g.n_users} users")
        if self.e_resp.shape[0] != g.n_responses or len(self.response_ids) != g.n_responses:
            raise ValueError(f"{len(self.response_ids)} response ids / {self.e_resp.shape[0]} response "
                             f"embeddings for a graph of {g.n_responses} responses")
        self.resp_users_indptr, self.resp_users = g.positive_csr(by="response")
        self.user_resps_indptr, self.user_resps = g.positive_csr(by="user")
        self.resp_neg_indptr, self.resp_neg_users, _ = csr(g.neg_response.numpy(), g.neg_user.numpy(),
                                                           g.n_responses)
        self.priority = np.empty(g.n_users, dtype=np.int64)
        self.priority[np.random.default_rng(self.seed).permutation(g.n_users)] = np.arange(g.n_users)
        self.population_mean = self.e_user.mean(0) if g.n_users else torch.zeros(self.dim)
        self._response_index = {rid: i for i, rid in enumerate(self.response_ids.to_pylist())}

    @property
    def dim(self) -> int:
        return int(self.e_user.shape[1])

    @property
    def n_users(self) -> int:
        return self.graph.n_users

    def __repr__(self) -> str:
        return (f"GNNArtifacts(n_users={self.n_users}, n_responses={self.graph.n_responses}, "
                f"dim={self.dim}, positive_edges={len(self.resp_users)})")

    def response_index(self, values, field_name: str = "response_id", where: str = "annotations") -> np.ndarray:
        """Dense indices [N] of response ids; `KeyError` naming the row and field of the first unknown."""
        get = self._response_index.get
        out = np.fromiter((get(v, -1) for v in values), dtype=np.int64, count=len(values))
        bad = np.flatnonzero(out < 0)
        if bad.size:
            row = int(bad[0])
            raise KeyError(f"{where}: row {row}: field {field_name!r} names unknown response "
                           f"{values[row]!r} ({bad.size} unknown); it is not in the GNN's graph")
        return out

    def users_by_priority(self, n: int) -> np.ndarray:
        """The ``n`` seen users of lowest priority rank (the deterministic global sample), sorted."""
        return np.sort(np.argsort(self.priority, kind="stable")[:n])


def load_gnn_artifacts(gnn_dir: str | os.PathLike, seed: int = 0) -> GNNArtifacts:
    """Load a gnn_dir (embeddings, id maps, graph); check that their orders agree."""
    d = Path(gnn_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: gnn_dir not found (expected a train_gnn output folder)")
    user_map, response_map = read_id_maps(d)
    u_ids, e_user = read_user_embeddings(d)
    r_ids, e_resp = read_response_embeddings(d)
    for file, ids, idmap, index in ((USERS_FILE, u_ids, user_map, USER_INDEX_FILE),
                                    (RESPONSES_FILE, r_ids, response_map, RESPONSE_INDEX_FILE)):
        if not ids.equals(idmap.ids):
            raise ValueError(f"{d / file}: rows are not in the dense order of {index}")
    graph = SignedGraph.load(d)
    return GNNArtifacts(user_map.ids, response_map.ids, torch.from_numpy(e_user),
                        torch.from_numpy(e_resp), graph, seed=seed)
