"""Edge lists for message passing and a vectorized signed neighbour sampler (no pyg-lib needed).

`SignedEdges` is what a `SignedBipartiteConv` layer consumes: local edge lists per sign with a
weight per edge and direction. For the full graph the weights are the paper's
alpha_{u,r} = 1/sqrt(|N+_u| |N+_r|) (beta likewise on negative edges) in both directions.

`NeighborSampler` draws, for a batch of seed users and responses, the L-hop computation graph in
the GraphSAGE/PyG way: every node found at hop h (seeds: h=0) keeps at most ``fanouts[h]`` of its
positive and at most ``fanouts[h]`` of its negative neighbours, uniformly without replacement, and
each node is expanded once (at the hop it is first found). A sampled edge carries a message only
towards the node that sampled it (PyG samples each direction of an undirected bipartite graph
separately), so each edge has a weight for the user update and one for the response update, one
of them 0.

Normalisation in a sampled subgraph (a choice, stated): alpha/beta use the FULL-graph degrees, and
a node t that kept k_t of its deg_t neighbours scales its sum by deg_t / k_t, so that
``sum_{sampled r} (deg_t/k_t) alpha_{t,r} x_r`` is an unbiased estimate of the full-graph sum
``sum_{r in N_t} alpha_{t,r} x_r`` (exact when deg_t <= fanout). Re-computing alpha from sampled
degrees instead would change the scale of every message with the fan-out.

Sampling is numpy over CSR arrays: per hop and sign, k distinct offsets in [0, deg) per node
drawn for all nodes at once (Floyd's method for deg < k^2, draw-and-redraw-repeats above; no
per-node Python), and a sort-free de-duplication of newly found nodes through a scratch array.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from copl_ray.gnn.sparse import Adjacency, row_major_order
from copl_ray.graph.signed_graph import SignedGraph

__all__ = ["SignedEdges", "Subgraph", "NeighborSampler"]


@dataclass
class SignedEdges:
    """Local edge lists + per-edge weights of one (sub)graph, all tensors on one device.

    Attributes:
        pos_user, pos_resp: [E+] int64 local user / response index of each positive edge.
        pos_norm: [E+] float32 weight of the edge in the USER update (alpha_{u,r}, Eq. 2).
        neg_user, neg_resp, neg_norm: [E-] the same for negative edges (beta_{u,r}).
        pos_norm_to_resp, neg_norm_to_resp: [E+] / [E-] weights in the RESPONSE update (Eq. 12);
            ``None`` means the same as ``pos_norm`` / ``neg_norm`` (full graph). A weight of 0
            means the edge carries no message in that direction (a sampled subgraph).
        user_hops, resp_hops: [H+1] int64 (sampled subgraphs only): entry h = number of local
            users / responses found within h hops of the seeds (local ids are numbered hop by hop,
            seeds first). `CoPLGNN` uses them to update at layer l only the nodes within L-1-l
            hops (PyG's ``trim_to_layer``): the others' values could not reach the seeds.
    """

    pos_user: Tensor
    pos_resp: Tensor
    pos_norm: Tensor
    neg_user: Tensor
    neg_resp: Tensor
    neg_norm: Tensor
    pos_norm_to_resp: Tensor | None = None
    neg_norm_to_resp: Tensor | None = None
    user_hops: Tensor | None = None
    resp_hops: Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_graph(cls, graph: SignedGraph) -> "SignedEdges":
        """All edges of ``graph`` with alpha / beta from its degrees (global = local indices)."""
        return cls(graph.pos_user, graph.pos_response, graph.edge_norm(True),
                   graph.neg_user, graph.neg_response, graph.edge_norm(False))

    def to(self, device) -> "SignedEdges":
        move = (lambda t: None if t is None else t.to(device))
        # Hop sizes stay on the CPU: they are read as Python ints for every layer.
        return SignedEdges(*(move(getattr(self, n)) for n in (
            "pos_user", "pos_resp", "pos_norm", "neg_user", "neg_resp", "neg_norm",
            "pos_norm_to_resp", "neg_norm_to_resp")), user_hops=self.user_hops, resp_hops=self.resp_hops)

    @property
    def num_edges(self) -> int:
        return int(self.pos_user.numel() + self.neg_user.numel())

    def adjacency(self, positive: bool, to: str, n_users: int, n_resps: int,
                  n_out: int | None = None) -> Adjacency:
        """Weighted adjacency for one sign and message direction (cached).

        ``to="user"``: A [n_users, n_resps], (A e_resp)[u] = sum_r w_{u,r} e_r (Eq. 2);
        ``to="resp"``: A [n_resps, n_users] (Eq. 12). ``n_users``/``n_resps``: rows of the input
        embedding tables. ``n_out``: keep only the first ``n_out`` target rows (a sampled subgraph,
        whose nodes are numbered hop by hop: layer l only needs the nodes within L-1-l hops).
        """
        if to not in ("user", "resp"):
            raise ValueError(f"to must be 'user' or 'resp', got {to!r}")
        key = (positive, to, n_users, n_resps, n_out)
        if key in self._cache:
            return self._cache[key]
        u, r, w = ((self.pos_user, self.pos_resp, self.pos_norm) if positive
                   else (self.neg_user, self.neg_resp, self.neg_norm))
        if (self.pos_norm_to_resp if positive else self.neg_norm_to_resp) is None and n_out is None:
            # Symmetric weights: one matrix per sign, its transpose is the other direction (and
            # each one's backward uses the other, so nothing is sorted twice).
            to_user = Adjacency(u, r, w, n_users, n_resps)
            self._cache[(positive, "user", n_users, n_resps, None)] = to_user
            self._cache[(positive, "resp", n_users, n_resps, None)] = to_user.t()
            return self._cache[key]
        rows, cols, vals = self._directed(positive, to)
        n_rows, n_cols = (n_users, n_resps) if to == "user" else (n_resps, n_users)
        m = len(rows)
        if n_out is not None:  # rows are sorted: the first n_out targets are a prefix
            m = int(torch.searchsorted(rows, torch.tensor(n_out, device=rows.device)))
            n_rows = n_out

        def transpose() -> Adjacency:
            # A^T from the edges sorted once by source (cached), cut to this block's targets:
            # a mask per layer instead of a sort per layer (only the backward pass needs it).
            t_rows, t_cols, t_vals = self._directed(positive, to, by_source=True)
            keep = t_cols < n_rows
            return Adjacency(t_rows[keep], t_cols[keep], t_vals[keep], n_cols, n_rows, rows_sorted=True)

        self._cache[key] = Adjacency(rows[:m], cols[:m], vals[:m], n_rows, n_cols, transpose=transpose,
                                     rows_sorted=True)
        return self._cache[key]

    def _directed(self, positive: bool, to: str, by_source: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(target, source, weight) of the edges carrying messages towards ``to``, sorted by target;
        ``by_source``: (source, target, weight) sorted by source. Cached: every layer of a forward
        and backward pass shares them."""
        key = ("directed", positive, to, by_source)
        if key not in self._cache:
            if by_source:
                rows, cols, vals = self._directed(positive, to)
                order = row_major_order(cols, rows, int(rows.max()) + 1 if rows.numel() else 1)
                # (source, target, weight): the rows of A^T are the sources
                self._cache[key] = (cols[order], rows[order], vals[order])
            else:
                u, r, w = ((self.pos_user, self.pos_resp, self.pos_norm) if positive
                           else (self.neg_user, self.neg_resp, self.neg_norm))
                w_r = self.pos_norm_to_resp if positive else self.neg_norm_to_resp
                rows, cols, vals = (u, r, w) if to == "user" else (r, u, w if w_r is None else w_r)
                if w_r is not None:
                    keep = vals != 0  # edges sampled by the other side carry nothing this way
                    rows, cols, vals = rows[keep], cols[keep], vals[keep]
                if rows.numel() > 1 and not bool((rows[1:] >= rows[:-1]).all()):
                    order = row_major_order(rows, cols, int(cols.max()) + 1)
                    rows, cols, vals = rows[order], cols[order], vals[order]
                self._cache[key] = (rows, cols, vals)
        return self._cache[key]


@dataclass
class Subgraph:
    """A sampled neighbourhood.

    Attributes:
        user_nodes: [nu] int64 global user ids; the seed users first, in the order given.
        resp_nodes: [nr] int64 global response ids; the seed responses first, in the order given.
        edges: `SignedEdges` over local ids (row i of ``user_nodes`` is local user i).
    """

    user_nodes: Tensor
    resp_nodes: Tensor
    edges: SignedEdges


def floyd_offsets(deg: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """[n, k] distinct uniform offsets in [0, deg_i) per row (needs deg_i >= k), Floyd's method.

    Step i draws t in [0, j] with j = deg - k + i and keeps j instead when t was already drawn;
    this yields a uniform k-subset. Vectorized over rows: k steps of O(n i) comparisons.
    """
    n = len(deg)
    out = np.empty((n, k), dtype=np.int64)
    for i in range(k):
        j = deg - k + i
        t = (rng.random(n) * (j + 1)).astype(np.int64)
        np.minimum(t, j, out=t)  # guard the float edge case rand*(j+1) == j+1
        if i:
            t = np.where((out[:, :i] == t[:, None]).any(1), j, t)
        out[:, i] = t
    return out


def rejection_offsets(deg: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Same contract as `floyd_offsets`, for deg_i >= k^2: draw k offsets with replacement and
    redraw the rows that hold a repeat (P(repeat) <= k^2 / (2 deg) <= 1/2, so few rounds); a
    uniform k-subset, since accepted draws are i.i.d. uniform conditioned on being distinct."""
    out = np.empty((len(deg), k), dtype=np.int64)
    todo = np.arange(len(deg))
    while len(todo):
        d = deg[todo, None]
        t = np.minimum((rng.random((len(todo), k)) * d).astype(np.int64), d - 1)
        srt = np.sort(t, axis=1)
        ok = (srt[:, 1:] != srt[:, :-1]).all(1)
        out[todo[ok]] = t[ok]
        todo = todo[~ok]
    return out


def sample_csr(indptr: np.ndarray, targets: np.ndarray, fanout: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """At most ``fanout`` CSR entries per target, without replacement.

    Returns:
        owner [S] (position in ``targets`` of the node that sampled the entry; non-decreasing),
        pos [S] (index into the CSR arrays), grouped by target in ``targets`` order, and per
        target its degree deg [T] and number kept k [T] = min(deg, fanout).
    """
    start = indptr[targets]
    deg = indptr[targets + 1] - start
    k = np.minimum(deg, fanout)
    offs = np.zeros(len(targets) + 1, dtype=np.int64)
    np.cumsum(k, out=offs[1:])
    owner = np.repeat(np.arange(len(targets)), k)
    pos = np.empty(offs[-1], dtype=np.int64)
    full = np.flatnonzero(deg <= fanout)  # keep every neighbour: contiguous CSR ranges
    if len(full):
        kf = k[full]
        first = np.repeat(offs[full], kf)  # slot of each kept entry's first sibling
        rank = np.arange(len(first)) - np.repeat(np.cumsum(kf) - kf, kf)
        pos[first + rank] = np.repeat(start[full], kf) + rank
    for sel, draw in ((np.flatnonzero((deg > fanout) & (deg < fanout * fanout)), floyd_offsets),
                      (np.flatnonzero(deg >= max(fanout * fanout, fanout + 1)), rejection_offsets)):
        if len(sel):
            picks = draw(deg[sel], fanout, rng) + start[sel, None]
            pos[(offs[sel][:, None] + np.arange(fanout)).ravel()] = picks.ravel()
    return owner, pos, deg, k


class _NodeSet:
    """Global -> local ids of one node type during one `sample` call (scratch array, reset after)."""

    def __init__(self, n: int):
        self.local = np.full(n, -1, dtype=np.int64)
        self.parts: list[np.ndarray] = []
        self.count = 0

    def add(self, cand: np.ndarray) -> np.ndarray:
        """Give local ids to the not-yet-seen distinct ids of ``cand``; returns them (new ids)."""
        new = cand[self.local[cand] < 0]
        if len(new) == 0:
            return new
        # Sort-free de-duplication: write each occurrence's position; one write per id survives.
        marks = np.arange(len(new))
        self.local[new] = marks
        uniq = new[self.local[new] == marks]
        self.local[uniq] = self.count + np.arange(len(uniq))
        self.count += len(uniq)
        self.parts.append(uniq)
        return uniq

    def nodes(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.int64)

    def reset(self, nodes: np.ndarray) -> None:
        self.local[nodes] = -1
        self.parts, self.count = [], 0


class NeighborSampler:
    """L-hop signed neighbourhood sampler over a `SignedGraph` (module docstring: the method).

    Args:
        graph: the full graph (edges need not be sorted).
        fanouts: neighbours kept per sign and node at each hop; ``fanouts[0]`` for the seeds,
            ``len(fanouts)`` = number of message-passing layers.
        seed: seed of this sampler's random stream.
        negative_edges: False skips negative edges (for the "w/o negative edges" ablation).
    Not thread-safe (one scratch index per node type).
    """

    def __init__(self, graph: SignedGraph, fanouts: list[int], seed: int = 0, negative_edges: bool = True):
        if not fanouts or any(int(f) < 1 for f in fanouts):
            raise ValueError(f"fanouts must be a non-empty list of positive ints, got {fanouts}")
        self.fanouts = [int(f) for f in fanouts]
        self.n_users, self.n_responses = graph.n_users, graph.n_responses
        self.negative_edges = negative_edges
        self.rng = np.random.default_rng(seed)
        signs = (True, False) if negative_edges else (True,)
        # Per sign: CSR by user (indptr_u, resp ids) and by response (indptr_r, user ids).
        self.csr = {s: self._both_csr(graph, s) for s in signs}
        self._users, self._resps = _NodeSet(graph.n_users), _NodeSet(graph.n_responses)

    @staticmethod
    def _both_csr(graph: SignedGraph, positive: bool) -> dict:
        u = (graph.pos_user if positive else graph.neg_user).numpy()
        r = (graph.pos_response if positive else graph.neg_response).numpy()
        if len(u) > 1 and not (u[1:] >= u[:-1]).all():  # SignedGraph keeps them sorted; be safe
            order = np.argsort(u, kind="stable")
            u, r = u[order], r[order]
        by_r = np.argsort(r, kind="stable")
        out = {}
        for name, rows, cols, n in (("user", u, r, graph.n_users), ("resp", r[by_r], u[by_r], graph.n_responses)):
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
            deg = np.diff(indptr).astype(np.float32)
            # 1/sqrt(deg), 0 for isolated nodes (never a message source)
            isd = np.divide(1.0, np.sqrt(deg), out=np.zeros_like(deg), where=deg > 0)
            out[name] = (indptr, np.ascontiguousarray(cols), isd)
        return out

    def _hop(self, targets_local: np.ndarray, targets_global: np.ndarray, side: str, fanout: int,
             positive: bool, other: _NodeSet):
        """Sample one sign's neighbours of ``targets``; returns (target local, source local, weight)."""
        indptr, cols, _ = self.csr[positive][side]
        isd_src = self.csr[positive]["resp" if side == "user" else "user"][2]
        owner, pos, deg, k = sample_csr(indptr, targets_global, fanout, self.rng)
        src = cols[pos]
        other.add(src)
        # alpha with full-graph degrees, times deg_t / k_t (unbiased for the full-graph sum):
        # (deg_t / k_t) / sqrt(deg_t deg_s) = sqrt(deg_t) / k_t * deg_s^-1/2.
        scale = (np.sqrt(deg) / np.maximum(k, 1)).astype(np.float32)
        return targets_local[owner], other.local[src], scale[owner] * isd_src[src]

    def sample(self, seed_users: Tensor | np.ndarray, seed_resps: Tensor | np.ndarray) -> Subgraph:
        """The ``len(fanouts)``-hop neighbourhood of distinct seed users [Bu] and responses [Br]."""
        su = np.asarray(seed_users.cpu() if torch.is_tensor(seed_users) else seed_users, dtype=np.int64)
        sr = np.asarray(seed_resps.cpu() if torch.is_tensor(seed_resps) else seed_resps, dtype=np.int64)
        for name, s, n in (("seed_users", su, self.n_users), ("seed_resps", sr, self.n_responses)):
            if s.size and (s.min() < 0 or s.max() >= n):
                raise ValueError(f"{name} out of range [0, {n})")
        users, resps = self._users, self._resps
        try:
            if len(users.add(su)) != len(su) or len(resps.add(sr)) != len(sr):
                raise ValueError("seed_users and seed_resps must each be distinct (e.g. torch.unique)")
            parts = {True: [], False: []}  # sign -> [(user, resp, w_to_user, w_to_resp)]
            fu, fr = su, sr  # frontier (global ids); their local ids are users.local[fu]
            hops_u, hops_r = [users.count], [resps.count]
            for fanout in self.fanouts:
                n_u, n_r = users.count, resps.count
                for positive in self.csr:
                    t, s, w = self._hop(users.local[fu], fu, "user", fanout, positive, resps)
                    parts[positive].append((t, s, w, np.zeros_like(w)))
                    t, s, w = self._hop(resps.local[fr], fr, "resp", fanout, positive, users)
                    parts[positive].append((s, t, np.zeros_like(w), w))
                fu = users.nodes()[n_u:]  # found at this hop: expanded at the next
                fr = resps.nodes()[n_r:]
                hops_u.append(users.count)
                hops_r.append(resps.count)
            user_nodes, resp_nodes = users.nodes(), resps.nodes()
        finally:
            users.reset(users.nodes())
            resps.reset(resps.nodes())
        cat = {sign: [torch.from_numpy(np.concatenate(col)) for col in zip(*p)] if p else
               [torch.zeros(0, dtype=torch.int64)] * 2 + [torch.zeros(0)] * 2 for sign, p in parts.items()}
        pu, pr, pw, pw_r = cat[True]
        nu, nr, nw, nw_r = cat[False]
        edges = SignedEdges(pu, pr, pw, nu, nr, nw, pos_norm_to_resp=pw_r, neg_norm_to_resp=nw_r,
                            user_hops=torch.tensor(hops_u), resp_hops=torch.tensor(hops_r))
        return Subgraph(torch.from_numpy(user_nodes), torch.from_numpy(resp_nodes), edges)
