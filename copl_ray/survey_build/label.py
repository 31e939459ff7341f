"""Simulated annotations on a built survey, so it can be trained on end to end.

The labeller of the foundation's TL;DR setting (`copl_ray.data.importers.tldr`, paper App. D.1):
two groups of simulated users, ``short`` and ``long``, prefer the response with fewer / more words
(length is what a text model sees). Users are drawn with the importers' vectorized
`simulate_users`: seen users annotate ``n_context`` survey pairs and get ``n_test`` test pairs from
a held-out share of the prompts; unseen users give ``n_fewshot`` survey pairs and ``n_unseen_test``
test pairs. Pairs of equal length (no group has a preference) are not asked. ``pairs.parquet``'s
``pool`` then marks the held-out prompts' pairs ``test``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from copl_ray.data.dataset import DatasetError, write_dataset, write_table
from copl_ray.data.importers.common import PairPool, SimulationPlan, even_groups, simulate_users, split_prompts, users_table

__all__ = ["GROUPS", "label_survey"]

GROUPS = ("short", "long")


def label_survey(root: str | os.PathLike, plan: SimulationPlan, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Add ``users.parquet`` and ``annotations/`` to the survey dataset at ``root`` (written by
    `jobs/build_survey.py`) and return counts.

    Raises:
        DatasetError: too few labelable pairs for the plan (names the pool and the counts).
    """
    root = Path(root)
    prompts = pq.read_table(root / "prompts.parquet")
    responses = pq.read_table(root / "responses.parquet")
    pairs = pq.read_table(root / "pairs.parquet")
    words = dict(zip(responses.column("response_id").to_pylist(), responses.column("n_words").to_pylist()))
    a, b = pairs.column("response_a_id").to_pylist(), pairs.column("response_b_id").to_pylist()
    wa, wb = np.array([words[r] for r in a]), np.array([words[r] for r in b])
    rng = np.random.default_rng(seed)
    test_prompts = split_prompts(rng, pairs.column("prompt_id").to_pylist(), test_fraction)
    is_test = np.array([p in test_prompts for p in pairs.column("prompt_id").to_pylist()], bool)
    pid = np.asarray(pairs.column("prompt_id").to_pylist(), object)
    shorter = np.where(wa < wb, np.asarray(a, object), np.asarray(b, object))
    longer = np.where(wa < wb, np.asarray(b, object), np.asarray(a, object))
    labelable = wa != wb
    pools = {}
    for name, sel in (("train", labelable & ~is_test), ("test", labelable & is_test)):
        pools[name] = PairPool(pid[sel], shorter[sel], longer[sel], np.full(int(sel.sum()), "controversial", object))
        if not len(pools[name]):
            raise DatasetError(f"{root}/pairs.parquet: no {name} pair with a length difference to label"
                               f" ({int(labelable.sum())} labelable of {len(pid)}): generate more or longer candidates")
    g_seen = np.asarray(GROUPS, object)[even_groups(plan.n_users, 2)]
    g_unseen = np.asarray(GROUPS, object)[even_groups(plan.n_unseen_users, 2)]
    try:
        (seen, unseen), ann = simulate_users(plan, pools["train"], pools["test"],
                                             lambda u, p, pool: g_seen[u] == "short",
                                             lambda u, p, pool: g_unseen[u] == "short", rng)
    except DatasetError as exc:
        raise DatasetError(f"{root}: {exc} (train pool {len(pools['train'])}, test pool {len(pools['test'])} pairs)") from None
    users = users_table(seen, unseen, g_seen, g_unseen)
    write_dataset(root, prompts, responses, users, ann)
    pool = pa.array(np.where(is_test, "test", "survey"), pa.string())
    write_table(pairs.set_column(pairs.schema.get_field_index("pool"), "pool", pool), root / "pairs.parquet")
    return {"labelled_users": len(seen) + len(unseen), "train_pool": len(pools["train"]),
            "test_pool": len(pools["test"]), "annotations": {k: v.num_rows for k, v in ann.items()},
            "unlabelable_pairs": int((~labelable).sum()),
            "short_group_share": float(np.mean(g_seen == "short")) if len(g_seen) else None}
