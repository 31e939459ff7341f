"""GNN test accuracy (paper Table 6): does the dot-product score s_{u,r} = e_u . e_r (Eq. 4) rank
the held-out pair the way the user did?

Only test pairs whose two responses are *in the graph* (at least one train edge, of either sign) are
counted, as in the paper's "seen users and responses" evaluation; the share of test pairs that
qualify is reported as ``coverage``. A tie (equal scores, e.g. two responses that only carry their
untrained initial embedding under a model without them) counts as half right, the expected accuracy
of a random tie-break, so ties neither help nor hurt a model.

Everything is vectorized (gathers in chunks, ``bincount`` per kind and per group).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["pair_margins", "gnn_accuracy", "KIND_NAMES"]

KIND_NAMES = {0: "common", 1: "controversial", -1: "unknown"}


@torch.no_grad()
def pair_margins(
    e_user: torch.Tensor,
    e_resp: torch.Tensor,
    user: np.ndarray,
    chosen: np.ndarray,
    rejected: np.ndarray,
    chunk: int = 262_144,
) -> np.ndarray:
    """s_{u,chosen} - s_{u,rejected} for each pair.

    Args:
        e_user: [n_users, d]; e_resp: [n_responses, d]; user, chosen, rejected: [N] int indices.
    Returns:
        [N] float64 margins (> 0: the model agrees with the user).
    """
    out = np.empty(len(user), dtype=np.float64)
    for s in range(0, len(user), chunk):
        u = torch.as_tensor(np.asarray(user[s:s + chunk]), dtype=torch.long)
        a = torch.as_tensor(np.asarray(chosen[s:s + chunk]), dtype=torch.long)
        b = torch.as_tensor(np.asarray(rejected[s:s + chunk]), dtype=torch.long)
        eu = e_user[u].float()
        out[s:s + chunk] = ((eu * (e_resp[a].float() - e_resp[b].float())).sum(-1)).double().numpy()
    return out


def _grouped_accuracy(correct: np.ndarray, codes: np.ndarray, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(codes, minlength=n_codes)
    hits = np.bincount(codes, weights=correct, minlength=n_codes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts, counts


def gnn_accuracy(
    e_user: torch.Tensor,
    e_resp: torch.Tensor,
    user: np.ndarray,
    chosen: np.ndarray,
    rejected: np.ndarray,
    response_in_graph: np.ndarray,
    kind: np.ndarray | None = None,
    user_group: np.ndarray | None = None,
) -> dict:
    """Test accuracy overall, by ``kind`` and by user group, on pairs whose responses are in the graph.

    Args:
        e_user: [n_users, d], e_resp: [n_responses, d] final embeddings.
        user, chosen, rejected: [N] dense indices of the test pairs.
        response_in_graph: [n_responses] bool, True where the response has a train edge.
        kind: [N] int8 (0 common, 1 controversial, -1 unknown), optional.
        user_group: [n_users] object array of group names (None = no group), optional.
    Returns:
        ``{"accuracy", "n_pairs", "n_pairs_total", "coverage", "by_kind": {...}, "by_group": {...}}``;
        accuracy is NaN when no pair qualifies (written as null in metrics.json).
    """
    user, chosen, rejected = (np.asarray(x, dtype=np.int64) for x in (user, chosen, rejected))
    mask = response_in_graph[chosen] & response_in_graph[rejected]
    n_total = int(len(user))
    user, chosen, rejected = user[mask], chosen[mask], rejected[mask]
    margins = pair_margins(e_user, e_resp, user, chosen, rejected)
    correct = (margins > 0).astype(np.float64) + 0.5 * (margins == 0)
    out = {
        "accuracy": float(correct.mean()) if correct.size else float("nan"),
        "n_pairs": int(correct.size),
        "n_pairs_total": n_total,
        "coverage": float(correct.size / n_total) if n_total else float("nan"),
        "ties": int((margins == 0).sum()),
    }
    if kind is not None:
        codes = np.asarray(kind, dtype=np.int64)[mask] + 1  # -1..1 -> 0..2
        acc, counts = _grouped_accuracy(correct, codes, 3)
        out["by_kind"] = {KIND_NAMES[c - 1]: {"accuracy": float(acc[c]), "n_pairs": int(counts[c])}
                          for c in range(3) if counts[c]}
    if user_group is not None:
        names = np.asarray([g if g is not None else "<none>" for g in user_group], dtype=object)
        uniq, per_user = np.unique(names.astype(str), return_inverse=True)
        acc, counts = _grouped_accuracy(correct, per_user[user], len(uniq))
        out["by_group"] = {str(g): {"accuracy": float(acc[i]), "n_pairs": int(counts[i])}
                           for i, g in enumerate(uniq) if counts[i]}
    return out
