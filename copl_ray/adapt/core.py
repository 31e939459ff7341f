"""Optimization-free adaptation of unseen users (paper Section 4.3, Eq. 11): the entry points.

``adapt_one(artifacts, annotations)`` serves one request; ``adapt_batch(artifacts, table)`` adapts
many users for a job (chunks of ``chunk_users`` users, each chunk fully vectorized). Both apply the
same neighbour sets, caps and fallbacks, so a user gets the same embedding either way.

Resolution ladder (reported per user in ``resolution``; never the official code's silent zero
embedding, never a crash):

1. ``"khop"``: N+_{u*}(k) over positive edges, weights softmax(gamma / kappa) (the paper).
2. ``"widened"``: no k-hop neighbour, i.e. nobody else chose any response u* chose. Widening the
   positive walk to 2k hops cannot help (every 2k-hop path passes a k-hop user), so the widened set
   starts from the users who *rejected* a response u* rejected (they agree with u* on that pair)
   and continues 2k - 2 positive hops (2k hops in all); weights as in 1.
3. ``"global_sample"``: still nobody: align against the fixed sample of ``global_sample_size``
   seen users (lowest priority rank, `GNNArtifacts.priority`); weights as in 1.
4. ``"population_mean"``: u* gave no annotation: the plain mean of all seen users' embeddings.

Departures from the paper, stated: neighbourhoods larger than ``max_neighbors`` are cut to a fixed
random subset (priority rank) to bound per-request cost; 2-4 are additions (the paper does not say
what happens without neighbours; its code returns a zero vector).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from copl_ray.adapt import alignment as al
from copl_ray.adapt import neighbors as nb
from copl_ray.adapt.artifacts import GNNArtifacts

__all__ = ["AdaptParams", "AdaptResult", "BatchAdaptResult", "RESOLUTIONS", "adapt_one", "adapt_batch",
           "AdaptInputError"]

RESOLUTIONS = ("khop", "widened", "global_sample", "population_mean")


class AdaptInputError(ValueError):
    """Annotations that cannot be adapted from; the message names the row and field."""


class AdaptParams(BaseModel):
    """Adaptation hyper-parameters (paper App. B: 2 hops, kappa = 0.07)."""

    model_config = ConfigDict(extra="forbid")

    hops: int = Field(2, description="k of N+(k); even (paper footnote 1)")
    kappa: float = Field(0.07, gt=0, description="softmax temperature")
    weighting: Literal["alignment", "uniform"] = Field(
        "alignment", description="alignment: Eq. 11 (CoPL); uniform: Naive Avg baseline (Table 5)")
    max_neighbors: int | None = Field(50_000, ge=1, description="cap on |N+(k)| (fixed random subset)")
    global_sample_size: int = Field(10_000, ge=1, description="fallback 3's sample of seen users")
    chunk_users: int = Field(1024, ge=1, description="batch path: users per vectorized chunk")

    @field_validator("hops")
    @classmethod
    def _even(cls, v: int) -> int:
        return nb.check_hops(v)


@dataclass
class AdaptResult:
    """One adapted user: ``embedding [d]``, the neighbours used ``neighbors [N]`` (dense seen-user
    indices) with their ``weights [N]``, and how the user was resolved."""

    embedding: torch.Tensor
    neighbors: np.ndarray
    weights: torch.Tensor
    resolution: str
    n_annotations: int

    @property
    def n_neighbors(self) -> int:
        return int(len(self.neighbors))


@dataclass
class BatchAdaptResult:
    """Adapted users: ``user_ids [B]``, ``embeddings [B, d]``, ``n_neighbors [B]``,
    ``n_annotations [B]``, ``resolution [B]`` (strings of RESOLUTIONS)."""

    user_ids: pa.Array
    embeddings: torch.Tensor
    n_neighbors: np.ndarray
    n_annotations: np.ndarray
    resolution: np.ndarray

    def resolution_counts(self) -> dict[str, int]:
        return {r: int((self.resolution == r).sum()) for r in RESOLUTIONS}


def _column(annotations, name: str) -> list:
    if isinstance(annotations, (pa.Table, pa.RecordBatch)):
        if name not in annotations.column_names:
            raise AdaptInputError(f"annotations: missing column {name!r} (has {annotations.column_names})")
        return annotations.column(name).to_pylist()
    if isinstance(annotations, Mapping):
        if name not in annotations:
            raise AdaptInputError(f"annotations: missing field {name!r}")
        return list(annotations[name])
    raise AdaptInputError(f"annotations must be a pyarrow table or a mapping of columns, got "
                          f"{type(annotations).__name__}")


def _table_pairs(art: GNNArtifacts, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Batch form of `_index_pairs` for a table: one vectorized ``index_in`` per column."""
    out = []
    for name in ("chosen_id", "rejected_id"):
        if name not in table.column_names:
            raise AdaptInputError(f"annotations: missing column {name!r} (has {table.column_names})")
        col = table.column(name).combine_chunks()
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise AdaptInputError(f"annotations: column {name!r} has type {col.type}, expected string")
        idx = pc.index_in(col, value_set=art.response_ids)
        bad = np.flatnonzero(idx.is_null().to_numpy(zero_copy_only=False))
        if bad.size:
            what = "is null" if not col[int(bad[0])].is_valid else \
                f"names unknown response {col[int(bad[0])].as_py()!r} ({bad.size} unknown); it is not in the GNN's graph"
            raise AdaptInputError(f"annotations: row {int(bad[0])}: field {name!r} {what}")
        out.append(idx.to_numpy(zero_copy_only=False).astype(np.int64))
    same = np.flatnonzero(out[0] == out[1])
    if same.size:
        raise AdaptInputError(f"annotations: row {int(same[0])}: fields 'chosen_id' and 'rejected_id' are "
                              f"the same response {table.column('chosen_id')[int(same[0])].as_py()!r}")
    return out[0], out[1]


def _index_pairs(art: GNNArtifacts, chosen_ids: list, rejected_ids: list, where: str):
    for field_name, col in (("chosen_id", chosen_ids), ("rejected_id", rejected_ids)):
        for row, v in enumerate(col):
            if not isinstance(v, str):
                raise AdaptInputError(f"{where}: row {row}: field {field_name!r} must be a string, got {v!r}")
    try:
        chosen = art.response_index(chosen_ids, "chosen_id", where)
        rejected = art.response_index(rejected_ids, "rejected_id", where)
    except KeyError as exc:
        raise AdaptInputError(exc.args[0]) from None
    same = np.flatnonzero(chosen == rejected)
    if same.size:
        raise AdaptInputError(f"{where}: row {int(same[0])}: fields 'chosen_id' and 'rejected_id' are "
                              f"the same response {chosen_ids[int(same[0])]!r}")
    return chosen, rejected


# ----------------------------------------------------------------------------- one user


def adapt_one(art: GNNArtifacts, annotations, params: AdaptParams | None = None) -> AdaptResult:
    """Embedding of one unseen user from their annotations.

    Args:
        annotations: table or mapping with columns ``chosen_id``, ``rejected_id`` ([P] strings,
            P >= 0; other columns ignored).
    Returns:
        `AdaptResult` with ``embedding [d]``.
    Raises:
        AdaptInputError: unknown response or chosen == rejected, naming the row and field.
    """
    p = params or AdaptParams()
    chosen, rejected = _index_pairs(art, _column(annotations, "chosen_id"),
                                    _column(annotations, "rejected_id"), "annotations")
    if chosen.size == 0:
        return AdaptResult(art.population_mean.clone(), np.empty(0, np.int64), torch.empty(0),
                           "population_mean", 0)
    resolution, nbrs = "khop", nb.khop_one(art, chosen, p.hops, p.max_neighbors)
    if nbrs.size == 0:
        resolution, nbrs = "widened", nb.negative_agreement_one(art, rejected, p.hops, p.max_neighbors)
    if nbrs.size == 0:
        resolution, nbrs = "global_sample", art.users_by_priority(p.global_sample_size)
    e_nbr = art.e_user.index_select(0, torch.from_numpy(nbrs))
    if p.weighting == "uniform":
        w = torch.full((len(nbrs),), 1.0 / len(nbrs))
    else:
        delta = art.e_resp[torch.from_numpy(chosen)] - art.e_resp[torch.from_numpy(rejected)]
        w = al.weights_one(al.gamma_one(e_nbr, delta), p.kappa)
    return AdaptResult(al.aggregate_one(e_nbr, w), nbrs, w, resolution, int(chosen.size))


# ----------------------------------------------------------------------------- batch


def _merge_rows(n_rows: int, parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """CSR from (row [M_i], user [M_i]) parts whose rows are disjoint; users keep their order."""
    rows = np.concatenate([r for r, _ in parts]) if parts else np.empty(0, np.int64)
    users = np.concatenate([u for _, u in parts]) if parts else np.empty(0, np.int64)
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, users[order]


def _rows_of(indptr: np.ndarray, users: np.ndarray, keep: np.ndarray, row_ids: np.ndarray):
    """Entries of the CSR rows where ``keep`` [n] holds, relabelled to ``row_ids`` [n]."""
    n = np.diff(indptr)
    row = np.repeat(np.arange(len(n)), n)
    mask = keep[row]
    return row_ids[row[mask]], users[mask]


def _adapt_chunk(art: GNNArtifacts, pu: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, B: int,
                 p: AdaptParams):
    """One vectorized chunk: pairs ``pu/chosen/rejected [P]`` sorted by local user ``pu`` in [0, B)."""
    n_ann = np.bincount(pu, minlength=B)
    pair_indptr = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(n_ann, out=pair_indptr[1:])
    resolution = np.full(B, "khop", dtype=object)
    resolution[n_ann == 0] = "population_mean"

    ip, us = nb.khop_batch(art, pu, chosen, B, p.hops, p.max_neighbors)
    has = np.diff(ip) > 0
    parts = [_rows_of(ip, us, has, np.arange(B))]
    need = np.flatnonzero(~has & (n_ann > 0))
    if need.size:
        local = np.full(B, -1)
        local[need] = np.arange(need.size)
        sel = local[pu] >= 0
        ip2, us2 = nb.negative_agreement_batch(art, local[pu][sel], rejected[sel], need.size, p.hops,
                                               p.max_neighbors)
        has2 = np.diff(ip2) > 0
        resolution[need[has2]] = "widened"
        parts.append(_rows_of(ip2, us2, has2, need))
        still = need[~has2]
        if still.size:
            resolution[still] = "global_sample"
            sample = art.users_by_priority(p.global_sample_size)
            parts.append((np.repeat(still, sample.size), np.tile(sample, still.size)))
    nbr_indptr, nbr_users = _merge_rows(B, parts)

    delta = art.e_resp[torch.from_numpy(chosen)] - art.e_resp[torch.from_numpy(rejected)]
    emb = al.align_batch(art.e_user, nbr_indptr, nbr_users, delta, pair_indptr, p.kappa,
                         uniform=p.weighting == "uniform")
    emb[torch.from_numpy(n_ann == 0)] = art.population_mean
    return emb, np.diff(nbr_indptr), n_ann, resolution


def adapt_batch(art: GNNArtifacts, table: pa.Table, params: AdaptParams | None = None,
                user_ids: pa.Array | list[str] | None = None) -> BatchAdaptResult:
    """Embeddings of many unseen users.

    Args:
        table: annotations with columns ``user_id``, ``chosen_id``, ``rejected_id`` ([P] rows).
        user_ids: users to adapt ([B]); default: the users of ``table`` in first-appearance order.
            A listed user without rows gets ``population_mean``; rows of unlisted users are an error.
    Returns:
        `BatchAdaptResult` with ``embeddings [B, d]`` in the order of ``user_ids``.
    """
    p = params or AdaptParams()
    if "user_id" not in table.column_names:
        raise AdaptInputError(f"annotations: missing column 'user_id' (has {table.column_names})")
    row_users = table.column("user_id").combine_chunks()
    if row_users.null_count:
        row = int(np.flatnonzero(row_users.is_null().to_numpy(zero_copy_only=False))[0])
        raise AdaptInputError(f"annotations: row {row}: field 'user_id' is null")
    users = pc.unique(row_users) if user_ids is None else pa.array(user_ids, type=pa.string())
    pair_user = pc.index_in(row_users, value_set=users)
    if pair_user.null_count:
        row = int(np.flatnonzero(pair_user.is_null().to_numpy(zero_copy_only=False))[0])
        raise AdaptInputError(f"annotations: row {row}: field 'user_id' {row_users[row].as_py()!r} "
                              f"is not among the users to adapt")
    pair_user = pair_user.to_numpy(zero_copy_only=False).astype(np.int64)
    chosen, rejected = _table_pairs(art, table)
    order = np.argsort(pair_user, kind="stable")
    pair_user, chosen, rejected = pair_user[order], chosen[order], rejected[order]

    B = len(users)
    emb = torch.empty(B, art.dim)
    n_nbr, n_ann = np.zeros(B, np.int64), np.zeros(B, np.int64)
    resolution = np.empty(B, dtype=object)
    for lo in range(0, B, p.chunk_users):
        hi = min(B, lo + p.chunk_users)
        a, b = np.searchsorted(pair_user, [lo, hi])
        out = _adapt_chunk(art, pair_user[a:b] - lo, chosen[a:b], rejected[a:b], hi - lo, p)
        emb[lo:hi], n_nbr[lo:hi], n_ann[lo:hi], resolution[lo:hi] = out
    return BatchAdaptResult(users, emb, n_nbr, n_ann, resolution)
