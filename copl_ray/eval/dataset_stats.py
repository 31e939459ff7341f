"""Dataset characteristics of personalized preference data ("Personalization meets reality",
Sec. 4.2) plus the graph statistics CoPL's message passing and k-hop adaptation depend on.

Definitions (a *pair* is an unordered response pair {a, b}; a user's *label* on it is which one
they chose; a user who labelled the same pair several times counts once, with their majority
label, and not at all on a tie):

* **preference divergence rate** (paper: "percentage of inputs that elicit any disagreement among
  users"): among pairs labelled by >= 2 users, the share whose labels are not all equal.
* **high-divergence share** ("at least 30% of users deviate from the majority"): among the same
  pairs, the share whose minority label holds >= 30% of the pair's users.
* **MV-ACC** (per user "accuracy under majority vote"): over the user's pairs that >= 2 users
  labelled, the share where the user's label equals the pair's majority label among all its users
  (the user included, as a majority-vote aggregate of all annotators would be); a tied majority
  scores 0.5. ``mv_acc_loo`` is the same against the *other* users' majority. **Minority users**
  have MV-ACC < 0.5.
* **room for personalization** (the gap between "the performance of a non-personalized aggregate
  reward model" and "the consistency of individual user preferences"): consistency minus the
  accuracy of the majority-vote aggregate over all (user, pair) labels of multi-user pairs.
  Consistency is measured as the share of a user's repeated labels on a pair that agree with
  their own majority on it; with no repeated labels it cannot be measured and is taken as 1
  (consistent by construction, as the paper assumes for synthetic data) and flagged.

Interpretations (the paper gives only the prose above): pairs a single user labelled cannot show
disagreement and are left out of the denominators (their count is reported); "users" for the
30% rule are distinct users, not annotations.

Graph statistics use `SignedGraph`: connected components over all edges and over positive edges
(scipy.sparse.csgraph, nodes without edges left out; ``*_largest_component_user_share``), and
reachability through positive edges (user -> chosen response -> user ...) within 2 and 4 hops:
``reach_{k}hop_mean_user_share`` is the mean share of the other annotating users a user reaches,
``reach_{k}hop_users_with_neighbour`` the share of users who reach at least one other user (the
k-hop neighbourhood CoPL's unseen-user adaptation averages over). Computed by sparse matrix
products from up to ``reach_sources`` source users, sampled uniformly (seeded) when the graph has
more users than that (``reach_sampled``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from scipy.sparse.csgraph import connected_components

from copl_ray.config import JobConfig
from copl_ray.data.dataset import ANNOTATION_SPLITS, read_annotations, read_table
from copl_ray.graph.id_map import IdMap
from copl_ray.graph.signed_graph import SignedGraph

HIGH_DIVERGENCE = 0.3  # paper: "at least 30% of users deviate from the majority"


class DatasetStatsConfig(JobConfig):
    """dataset_stats: characteristics of one annotation split of a dataset."""

    dataset: str = Field(description="a dataset directory (CONTRACT section 1)")
    output_dir: str
    split: Literal[ANNOTATION_SPLITS] = "train"
    reach_sources: int = Field(2000, ge=1, description="source users for k-hop reach (sampled above this)")
    high_divergence: float = Field(HIGH_DIVERGENCE, gt=0, le=0.5)
    seed: int = 0


@dataclass
class Triples:
    """Annotations as dense indices: user, chosen, rejected [N] int64, over n_users / n_responses."""

    user: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    n_users: int
    n_responses: int


def load_triples(root: str | os.PathLike, split: str) -> tuple[Triples, IdMap]:
    """Dense-index triples of one split; users are every user of users.parquet (so users without
    annotations in the split are counted), responses every row of responses.parquet."""
    users = IdMap(read_table(root, "users").column("user_id").combine_chunks())
    responses = IdMap(read_table(root, "responses").column("response_id").combine_chunks())
    ann = read_annotations(root, split)
    t = Triples(users.lookup(ann.column("user_id"), "user"), responses.lookup(ann.column("chosen_id"), "response"),
                responses.lookup(ann.column("rejected_id"), "response"), len(users), len(responses))
    return t, users


def user_pair_labels(t: Triples):
    """One label per (user, pair).

    Returns:
        user [M], pair [M] (dense pair index), first_wins [M] bool (the lower response index won),
        plus the repeated-label consistency: (agreeing label count, repeated label count).
    """
    a, b = np.minimum(t.chosen, t.rejected), np.maximum(t.chosen, t.rejected)
    vote = np.where(t.chosen == a, 1, -1)
    _, pair = np.unique(a * t.n_responses + b, return_inverse=True)
    up_key, up, count = np.unique(pair.astype(np.int64) * t.n_users + t.user, return_inverse=True, return_counts=True)
    net = np.bincount(up, weights=vote, minlength=len(up_key))
    first = np.bincount(up, weights=vote > 0, minlength=len(up_key))
    # Consistency over repeated labels: each label agrees with the user's own majority or not
    # (a tie scores half, as a coin would).
    rep = count >= 2
    agree = np.where(net[rep] == 0, count[rep] / 2, np.maximum(first[rep], count[rep] - first[rep]))
    decided = net != 0
    return (up_key[decided] % t.n_users, up_key[decided] // t.n_users, net[decided] > 0,
            float(agree.sum()), int(count[rep].sum()))


def divergence_stats(t: Triples, high: float = HIGH_DIVERGENCE) -> tuple[dict, dict]:
    """Inter-personal disagreement, MV-ACC and room for personalization.

    Returns:
        (metrics dict, per-user arrays dict: ``mv_acc`` [n_users], ``mv_acc_loo`` [n_users],
        NaN for users with no pair that another user also labelled).
    """
    user, pair, first_wins, agree, repeated = user_pair_labels(t)
    n_pairs = int(pair.max()) + 1 if pair.size else 0
    n = np.bincount(pair, minlength=n_pairs)
    k = np.bincount(pair, weights=first_wins, minlength=n_pairs)  # users choosing the first response
    multi = n >= 2
    minority = np.minimum(k, n - k)
    m = {
        "n_pairs": n_pairs,
        "n_pairs_multi_user": int(multi.sum()),
        "divergence_rate": float((minority[multi] > 0).mean()) if multi.any() else float("nan"),
        "high_divergence_share": float((minority[multi] >= high * n[multi]).mean()) if multi.any() else float("nan"),
    }
    if not multi.any():  # the NaN figures below need pairs that several users labelled
        m["undefined_reason"] = ("no pair was labelled by two or more users: divergence, MV-ACC,"
                                 " minority users and room for personalization are undefined")
    sel = multi[pair]
    u, p, fw = user[sel], pair[sel], first_wins[sel]

    def score(k_, n_):  # 1 if the user's label is the majority, 0.5 on a tie, else 0
        maj_first = 2 * k_ - n_
        mine = np.where(fw, 1, -1)
        return np.where(maj_first == 0, 0.5, (np.sign(maj_first) == mine).astype(float))

    s_all = score(k[p], n[p])
    s_loo = score(k[p] - fw, n[p] - 1)
    cnt = np.bincount(u, minlength=t.n_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        mv = np.bincount(u, weights=s_all, minlength=t.n_users) / cnt
        mv_loo = np.bincount(u, weights=s_loo, minlength=t.n_users) / cnt
    has = cnt > 0
    aggregate = float(s_all.mean()) if s_all.size else float("nan")
    consistency = agree / repeated if repeated else None
    m.update({
        "mv_acc_users": int(has.sum()),
        "mv_acc_min": float(mv[has].min()) if has.any() else float("nan"),
        "mv_acc_mean": float(mv[has].mean()) if has.any() else float("nan"),
        "mv_acc_max": float(mv[has].max()) if has.any() else float("nan"),
        "mv_acc_loo_mean": float(mv_loo[has].mean()) if has.any() else float("nan"),
        "minority_users": int((mv[has] < 0.5).sum()),
        "minority_share": float((mv[has] < 0.5).mean()) if has.any() else float("nan"),
        "minority_users_loo": int((mv_loo[has] < 0.5).sum()),
        "aggregate_mv_accuracy": aggregate,
        "consistency": consistency,
        "consistency_assumed": consistency is None,
        "consistency_repeated_labels": repeated,
        "room_for_personalization": (1.0 if consistency is None else consistency) - aggregate,
    })
    return m, {"mv_acc": mv, "mv_acc_loo": mv_loo}


def _components(n_users: int, n_responses: int, u: np.ndarray, r: np.ndarray) -> dict:
    """Connected components of the bipartite graph among nodes with at least one edge."""
    n = n_users + n_responses
    adj = sp.coo_matrix((np.ones(len(u), np.int8), (u, n_users + r)), shape=(n, n)).tocsr()
    n_comp, label = connected_components(adj, directed=False)
    active = np.zeros(n, bool)
    active[u] = True
    active[n_users + r] = True
    sizes = np.bincount(label[:n_users][active[:n_users]], minlength=n_comp)  # users per component
    return {"components": int(np.count_nonzero(np.bincount(label[active], minlength=n_comp))),
            "largest_component_user_share": float(sizes.max() / sizes.sum()) if sizes.sum() else float("nan")}


def graph_stats(t: Triples, reach_sources: int = 2000, seed: int = 0) -> dict:
    """Components (all edges / positive edges) and 2- and 4-hop positive reachability of users."""
    g = SignedGraph.from_triples(t.user, t.chosen, t.rejected, t.n_users, t.n_responses)
    pu, pr = g.pos_user.numpy(), g.pos_response.numpy()
    nu, nr = g.neg_user.numpy(), g.neg_response.numpy()
    out = {f"all_edges_{k}": v for k, v in _components(t.n_users, t.n_responses,
                                                       np.concatenate([pu, nu]), np.concatenate([pr, nr])).items()}
    out.update({f"positive_{k}": v for k, v in _components(t.n_users, t.n_responses, pu, pr).items()})
    active = np.flatnonzero(np.bincount(t.user, minlength=t.n_users))  # users with an annotation
    a = sp.csr_matrix((np.ones(len(pu), np.float32), (pu, pr)), shape=(t.n_users, t.n_responses))
    at = a.T.tocsr()
    rng = np.random.default_rng(seed)
    sources = active if len(active) <= reach_sources else np.sort(rng.choice(active, reach_sources, replace=False))
    out.update({"reach_sources": int(len(sources)), "reach_sampled": bool(len(sources) < len(active))})
    others = max(len(active) - 1, 1)
    has_pos = np.diff(a.indptr) > 0  # a source with a positive edge reaches itself; not counted
    frac = {2: [], 4: []}
    # 2 hops: sparse rows (few users per response). 4 hops saturate on dense graphs, so the
    # responses reached in 3 hops become a dense [R, c] indicator and one CSR x dense product
    # (cost nnz(A) * c) counts the users touching them; c bounds that [n_users, c] block to ~5e7.
    step = int(max(1, min(256, 50_000_000 // max(t.n_users, 1))))
    for start in range(0, len(sources), step):
        s = sources[start:start + step]
        hop2 = (a[s] @ at).tocsr()                                   # [c, n_users]
        hop3 = (hop2 @ a).toarray() > 0                              # [c, n_responses]
        hop4 = np.count_nonzero(a @ hop3.T.astype(np.float32), axis=0)  # [c] users reached
        self_hit = has_pos[s].astype(int)
        frac[2].append((np.diff(hop2.indptr) - self_hit) / others)
        frac[4].append((hop4 - self_hit) / others)
    for hops in (2, 4):
        f = np.concatenate(frac[hops]) if frac[hops] else np.zeros(0)
        out[f"reach_{hops}hop_mean_user_share"] = float(f.mean()) if f.size else float("nan")
        out[f"reach_{hops}hop_users_with_neighbour"] = float((f > 0).mean()) if f.size else float("nan")
    return out


def annotation_counts(t: Triples, users: np.ndarray) -> dict:
    """Annotations per user over ``users`` (dense indices of the users the split is for)."""
    c = np.bincount(t.user, minlength=t.n_users)[users]
    return {"n_annotations": int(len(t.user)), "n_users": int(len(users)),
            "users_without_annotations": int((c == 0).sum()),
            "annotations_per_user_min": int(c.min()) if c.size else 0,
            "annotations_per_user_mean": float(c.mean()) if c.size else float("nan"),
            "annotations_per_user_max": int(c.max()) if c.size else 0}


def format_table(metrics: dict) -> str:
    """Two aligned columns, one metric per line."""
    width = max(len(k) for k in metrics)
    lines = []
    for key, value in metrics.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)
