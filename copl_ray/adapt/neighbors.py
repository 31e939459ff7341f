"""k-hop positive neighbourhoods N+_{u*}(k) of unseen users (paper Section 4.3, Eq. 11).

Hop 1 goes from u* to the responses u* chose; hop 2 to the seen users who chose any of them;
hop 3 to the responses those users chose; hop 4 to the users who chose those; and so on. Only
positive edges are walked and k must be even so the walk ends on users (paper footnote 1).
N+(k) is every seen user reached within k hops (the 2-hop users are part of the 4-hop set).

Two implementations of the same set:

* `khop_one`: one user, CSR row gathers on numpy arrays (serving path, no matrix built);
* `khop_batch`: many users at once, as products of scipy sparse matrices
  ``Q [B, R] @ A [R, U]`` (then ``@ A^T @ A`` per further 2 hops); no Python loop per user.

Both cap each neighbourhood at ``max_neighbors`` by keeping the users of lowest
``GNNArtifacts.priority`` rank (a fixed random order), so they return the same users.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from copl_ray.adapt.artifacts import GNNArtifacts

__all__ = ["check_hops", "gather_rows", "khop_one", "khop_batch", "negative_agreement_one",
           "negative_agreement_batch", "cap_rows"]


def check_hops(k: int) -> int:
    """Reject a hop count that does not end on users (paper footnote 1: k must be even)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2 or k % 2:
        raise ValueError(f"hops must be an even integer >= 2 (paper footnote 1: only an even number "
                         f"of hops ends on users), got {k!r}")
    return int(k)


def gather_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenated CSR rows ``indices[indptr[r]:indptr[r+1]]`` for every r in ``rows`` [n]."""
    rows = np.asarray(rows, dtype=np.int64)
    starts, lens = indptr[rows], indptr[rows + 1] - indptr[rows]
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    # Position of each output element = its row's start + its offset within the row.
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    return indices[np.repeat(starts, lens) + offsets]


def _cap_one(art: GNNArtifacts, users: np.ndarray, max_neighbors: int | None) -> np.ndarray:
    if max_neighbors is None or users.size <= max_neighbors:
        return users
    keep = np.argpartition(art.priority[users], max_neighbors - 1)[:max_neighbors]
    return np.sort(users[keep])


def _expand_positive(art: GNNArtifacts, users: np.ndarray, extra_hops: int) -> np.ndarray:
    """``users`` plus every seen user reached from them in ``extra_hops`` (even) positive hops."""
    reached, frontier = users, users
    for _ in range(extra_hops // 2):
        resp = np.unique(gather_rows(art.user_resps_indptr, art.user_resps, frontier))
        nxt = np.unique(gather_rows(art.resp_users_indptr, art.resp_users, resp))
        frontier = np.setdiff1d(nxt, reached, assume_unique=True)  # only new users expand further
        if frontier.size == 0:
            break
        reached = np.union1d(reached, frontier)
    return reached


def khop_one(art: GNNArtifacts, chosen: np.ndarray, k: int = 2,
             max_neighbors: int | None = None) -> np.ndarray:
    """N+_{u*}(k) of one user.

    Args:
        chosen: [P] dense indices of the responses u* chose.
    Returns:
        [N] sorted int64 dense indices of seen users (at most ``max_neighbors``).
    """
    k = check_hops(k)
    first = np.unique(gather_rows(art.resp_users_indptr, art.resp_users, np.unique(chosen)))
    return _cap_one(art, _expand_positive(art, first, k - 2), max_neighbors)


def negative_agreement_one(art: GNNArtifacts, rejected: np.ndarray, k: int = 2,
                           max_neighbors: int | None = None) -> np.ndarray:
    """Widened set of the fallback: seen users who also rejected one of u*'s rejected responses
    (2 hops over negative edges), expanded by 2k - 2 further positive hops (2k hops in all)."""
    k = check_hops(k)
    first = np.unique(gather_rows(art.resp_neg_indptr, art.resp_neg_users, np.unique(rejected)))
    return _cap_one(art, _expand_positive(art, first, 2 * k - 2), max_neighbors)


# ----------------------------------------------------------------------------- batch


def _incidence(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_rows, n_cols))
    m.sum_duplicates()
    m.data[:] = 1.0  # a pattern: path counts would only grow the values
    return m


def _positive_matrix(art: GNNArtifacts, transpose: bool = False) -> sp.csr_matrix:
    """A [R, U] (response -> users who chose it), a view on the artifacts' CSR arrays; or A^T
    [U, R] (built once per artifacts object, only needed beyond 2 hops: ~6 s at 1M users)."""
    U, R = art.n_users, art.graph.n_responses
    if not transpose:
        return sp.csr_matrix((np.ones(len(art.resp_users), np.float32), art.resp_users,
                              art.resp_users_indptr), shape=(R, U), copy=False)
    cached = getattr(art, "_pos_matrix_t", None)
    if cached is None:
        cached = sp.csr_matrix((np.ones(len(art.user_resps), np.float32), art.user_resps,
                                art.user_resps_indptr), shape=(U, R), copy=False)
        art._pos_matrix_t = cached
    return cached


def _expand_positive_batch(art: GNNArtifacts, n: sp.csr_matrix, extra_hops: int) -> sp.csr_matrix:
    if extra_hops < 2:
        return n
    a, at = _positive_matrix(art), _positive_matrix(art, transpose=True)
    reached, frontier = n, n
    for _ in range(extra_hops // 2):
        frontier = (frontier @ at) @ a
        frontier.data[:] = 1.0
        reached = reached + frontier
        reached.data[:] = 1.0
    return reached


def cap_rows(art: GNNArtifacts, n: sp.csr_matrix, max_neighbors: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists of a [B, U] pattern as CSR (indptr [B + 1], users [M], sorted per row), each
    row cut to its ``max_neighbors`` users of lowest priority rank."""
    n = n.tocsr()
    n.sort_indices()
    indptr, users = n.indptr.astype(np.int64), n.indices.astype(np.int64)
    if max_neighbors is None or users.size == 0 or np.diff(indptr).max() <= max_neighbors:
        return indptr, users
    row = np.repeat(np.arange(n.shape[0]), np.diff(indptr))
    order = np.lexsort((art.priority[users], row))  # by row, then priority
    rank = np.arange(users.size) - indptr[row[order]]
    keep = np.sort(order[rank < max_neighbors])  # back to (row, user) order
    counts = np.bincount(row[keep], minlength=n.shape[0])
    new_indptr = np.zeros(n.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=new_indptr[1:])
    return new_indptr, users[keep]


def khop_batch(art: GNNArtifacts, pair_user: np.ndarray, chosen: np.ndarray, n_batch: int, k: int = 2,
               max_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """N+(k) of ``n_batch`` users at once.

    Args:
        pair_user: [P] batch-local user index (0..n_batch-1) of each annotation.
        chosen: [P] dense index of the chosen response of each annotation.
    Returns:
        (indptr [n_batch + 1], users [M]): CSR of the neighbour sets, sorted per row.
    """
    k = check_hops(k)
    q = _incidence(pair_user, chosen, n_batch, art.graph.n_responses)
    n = q @ _positive_matrix(art)
    n.data[:] = 1.0
    return cap_rows(art, _expand_positive_batch(art, n, k - 2), max_neighbors)


def negative_agreement_batch(art: GNNArtifacts, pair_user: np.ndarray, rejected: np.ndarray,
                             n_batch: int, k: int = 2, max_neighbors: int | None = None):
    """Batch form of `negative_agreement_one`; same return as `khop_batch`."""
    k = check_hops(k)
    U, R = art.n_users, art.graph.n_responses
    neg = sp.csr_matrix((np.ones(len(art.resp_neg_users), np.float32), art.resp_neg_users,
                         art.resp_neg_indptr), shape=(R, U))
    n = _incidence(pair_user, rejected, n_batch, R) @ neg
    n.data[:] = 1.0
    return cap_rows(art, _expand_positive_batch(art, n, 2 * k - 2), max_neighbors)
