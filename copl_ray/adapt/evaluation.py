"""Scoring adapted users: dot-product accuracy (Eq. 4) of held-out pairs, grouped, and the curve
of accuracy against the number of annotations given (paper Fig. 5, Table 5), as table and PNG.

A tie (equal scores) counts as half right, the expected accuracy of a random tie-break, as in
`copl_ray.eval.gnn_metrics`. Pairs whose two responses have an edge in the graph are reported
apart (``in_graph``): a response without any edge keeps whatever embedding the GNN gives an
isolated node, so accuracy on it says little about the user embedding.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from copl_ray.adapt.artifacts import GNNArtifacts

__all__ = ["pair_correct", "accuracy_report", "first_n_per_user", "first_n_rank", "plot_curves"]


@torch.no_grad()
def pair_correct(emb: torch.Tensor, e_resp: torch.Tensor, pu: np.ndarray, chosen: np.ndarray,
                 rejected: np.ndarray) -> np.ndarray:
    """1 / 0.5 / 0 per pair: user ``pu`` [P] (row of ``emb [B, d]``) ranks chosen over rejected."""
    margin = (emb[torch.from_numpy(pu)] * (e_resp[torch.from_numpy(chosen)] - e_resp[torch.from_numpy(rejected)])).sum(-1)
    return np.where(margin.numpy() > 0, 1.0, np.where(margin.numpy() == 0, 0.5, 0.0))


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


def accuracy_report(art: GNNArtifacts, user_ids: pa.Array, emb: torch.Tensor, test: pa.Table,
                    groups: dict[str, str | None] | None = None,
                    n_given: np.ndarray | None = None) -> dict:
    """Accuracy of ``emb [B, d]`` (rows = ``user_ids``) on ``test`` (contract annotation rows).

    Returns:
        ``{"accuracy", "n_pairs", "in_graph": {"accuracy", "n_pairs", "coverage"},
        "by_group": {g: acc}, "by_n_given": {n: acc}}``. Rows of users not in ``user_ids`` are an
        error; test responses unknown to the graph are an error naming the row.
    """
    pu = pc.index_in(test.column("user_id"), value_set=user_ids)
    if pu.null_count:
        row = int(np.flatnonzero(pu.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"test row {row}: user {test.column('user_id')[row].as_py()!r} was not adapted")
    pu = pu.to_numpy(zero_copy_only=False).astype(np.int64)
    chosen = art.response_index(test.column("chosen_id").to_pylist(), "chosen_id", "test pairs")
    rejected = art.response_index(test.column("rejected_id").to_pylist(), "rejected_id", "test pairs")
    correct = pair_correct(emb, art.e_resp, pu, chosen, rejected)
    deg = np.diff(art.resp_users_indptr) + np.diff(art.resp_neg_indptr)
    in_graph = (deg[chosen] > 0) & (deg[rejected] > 0)
    out = {"accuracy": _mean(correct), "n_pairs": int(correct.size),
           "in_graph": {"accuracy": _mean(correct[in_graph]), "n_pairs": int(in_graph.sum()),
                        "coverage": float(in_graph.mean()) if correct.size else float("nan")}}
    if groups is not None:
        g = np.array([groups.get(u) or "(none)" for u in user_ids.to_pylist()], dtype=object)[pu]
        out["by_group"] = {str(k): _mean(correct[g == k]) for k in sorted(set(g))}
    if n_given is not None:
        n = np.asarray(n_given)[pu]
        out["by_n_given"] = {str(int(k)): _mean(correct[n == k]) for k in np.unique(n)}
    return out


def first_n_per_user(table: pa.Table, n: int) -> pa.Table:
    """The first ``n`` rows (file order) of every user in ``table``."""
    return table.filter(pa.array(first_n_rank(table) < n))


def first_n_rank(table: pa.Table) -> np.ndarray:
    """[P] position of each row among its user's rows (0 = the user's first row, file order)."""
    uid = table.column("user_id").combine_chunks()
    codes = pc.index_in(uid, value_set=pc.unique(uid)).to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    first = np.searchsorted(sorted_codes, sorted_codes, side="left")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order)) - first
    return rank


def plot_curves(curves: dict[str, dict[int, float]], path: str | os.PathLike,
                title: str = "unseen-user accuracy vs annotations given") -> Path:
    """One line per method: x = annotations given, y = accuracy. Written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, curve in curves.items():
        xs = sorted(curve)
        ax.plot(xs, [curve[x] for x in xs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("annotations given per unseen user")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
