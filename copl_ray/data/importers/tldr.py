"""Import `openai/summarize_from_feedback` comparisons (TL;DR) into a contract dataset.

Input: one ``batch*.json``-style file or a folder of them, each JSON lines of ::

    {"info": {"id", "post", "title", "subreddit"} | CNN/DM {"id", "site", "title", "article"},
     "summaries": [{"text", "policy", "note"}, {...}], "choice": 0|1, "worker": str,
     "batch": str, "split": "train"|"valid1"|"valid2", "extra": {"confidence"}}

Two ways to get users (``users`` option):

* ``simulated`` (CoPL, App. D.1 and official ``datagen_tldr.py``): keep supervised-vs-supervised
  comparisons (both policies contain ``sup``, neither ``ppo``) of the ``top_workers`` most active
  workers (counted on the filtered train rows); store each pair as (shorter, longer) by characters;
  de-duplicate; train rows form the survey pool, valid1/valid2 rows the test pool. Worker and
  choice are then ignored: users are split evenly into group ``short`` (prefers the shorter summary)
  and ``long``. Every pair is ``controversial`` (the two groups always disagree).
* ``real_workers`` (LoRe): each of the ``top_workers`` workers is a user with their real choices;
  train rows go to ``train`` (or ``fewshot`` for the ``n_unseen_users`` workers held out as
  unseen, who give ``n_fewshot`` of them), valid rows to ``test`` / ``test_unseen``. ``kind`` is
  ``common``/``controversial`` for pairs labelled two or more times (all labels agree or not; a
  worker repeating a pair counts twice), else null.

Departures: no 1024-token filter (it needs gemma's tokenizer; ``max_chars`` is a tokenizer-free
stand-in, off by default); pairs of equal length or identical text are dropped in simulated mode
(neither group has a preference); unlike the official code, every draw is seeded and unseen users
exist. Prompt text is the post alone; the ``'Human: ... Assistant: ...'`` template is the reward
model's business.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from copl_ray.data.importers.common import (
    FormatError, PairPool, SimulationPlan, even_groups, iter_json_records, located, pool_tables, require,
    simulate_users, source_files, stable_id, users_table,
)

SPLITS_TRAIN = {"train"}
SPLITS_TEST = {"valid1", "valid2"}
GROUPS = ("short", "long")


class TldrOptions(BaseModel):
    """Options of the TL;DR importer (``tldr.*`` keys of import_dataset)."""

    model_config = ConfigDict(extra="forbid")
    users: Literal["simulated", "real_workers"] = "simulated"
    top_workers: int = Field(10, ge=1, description="keep the comparisons of this many most active workers")
    supervised_only: bool = Field(True, description="keep only sup-vs-sup comparisons (no ppo, no ref)")
    max_chars: int | None = Field(None, ge=1, description="drop pairs whose post+summary exceeds this")


def _read(files: list[Path]) -> dict[str, list]:
    """Parse and check every record; returns column lists (post None for CNN/DM rows)."""
    cols = {k: [] for k in ("post", "text0", "text1", "policy0", "policy1", "choice", "worker", "split", "where")}
    for path in files:
        for line, rec in iter_json_records(path):
            info = require(rec, "info", dict, path, line)
            post = info.get("post")  # absent or null on CNN/DM rows (HF loader fills None)
            if post is not None and not isinstance(post, str):
                raise located(path, line, "info.post", f"is {type(post).__name__}, expected string or null")
            summaries = require(rec, "summaries", list, path, line)
            if len(summaries) != 2:
                raise located(path, line, "summaries", f"has {len(summaries)} entries, expected 2")
            for i, s in enumerate(summaries):
                if not isinstance(s, dict):
                    raise located(path, line, f"summaries[{i}]", "is not an object")
                cols[f"text{i}"].append(require(s, "text", str, path, line, f"summaries[{i}].text"))
                cols[f"policy{i}"].append(require(s, "policy", str, path, line, f"summaries[{i}].policy"))
            choice = require(rec, "choice", int, path, line)
            if choice not in (0, 1):
                raise located(path, line, "choice", f"is {choice}, expected 0 or 1")
            split = require(rec, "split", str, path, line)
            if split not in SPLITS_TRAIN | SPLITS_TEST:
                raise located(path, line, "split", f"is {split!r}, expected train, valid1 or valid2")
            cols["worker"].append(require(rec, "worker", str, path, line))
            cols["post"].append(post)
            cols["choice"].append(choice)
            cols["split"].append(split)
            cols["where"].append(f"{path.name}:{line}")
    return cols


def _select(cols: dict[str, list], opts: TldrOptions) -> tuple[np.ndarray, dict]:
    """Row mask after the policy filter, the top-worker filter and dropping CNN/DM rows."""
    n = len(cols["post"])
    p0, p1 = np.array(cols["policy0"], object), np.array(cols["policy1"], object)
    if opts.supervised_only:
        def sup(p):
            return np.array(["sup" in x and "ppo" not in x for x in p], bool)
        keep = sup(p0) & sup(p1)
    else:
        keep = np.ones(n, bool)
    worker = np.array(cols["worker"], object)
    is_train = np.array([s in SPLITS_TRAIN for s in cols["split"]], bool)
    # Most active workers on the filtered train rows; ties broken by worker id for determinism.
    counts = Counter(worker[keep & is_train].tolist())
    top = sorted(counts, key=lambda w: (-counts[w], w))[: opts.top_workers]
    in_top = np.isin(worker, np.array(top, object))
    has_post = np.array([p is not None for p in cols["post"]], bool)
    mask = keep & in_top & has_post
    stats = {"rows_read": n, "rows_policy_kept": int(keep.sum()), "rows_top_workers": int((keep & in_top).sum()),
             "rows_without_post": int((keep & in_top & ~has_post).sum()), "workers": top}
    return mask, stats


def import_tldr(input_path: str | os.PathLike, plan: SimulationPlan, opts: TldrOptions, seed: int):
    """Read TL;DR comparisons and build the dataset tables.

    Returns:
        (prompts, responses, users, annotations by split, stats dict).
    """
    files = source_files(input_path, ("*.json", "*.jsonl"), "TL;DR comparison")
    cols = _read(files)
    mask, stats = _select(cols, opts)
    rows = np.flatnonzero(mask)
    if not rows.size:
        raise FormatError(f"{input_path}: no TL;DR comparison survives the filters ({stats})")
    prompt_text, response_text, response_prompt = {}, {}, {}
    pid = np.empty(len(rows), object)
    rid = np.empty((len(rows), 2), object)
    for j, i in enumerate(rows):
        post = cols["post"][i]
        pid[j] = p = stable_id("tldr-p", post)
        prompt_text[p] = post
        for k in (0, 1):
            text = cols[f"text{k}"][i]
            rid[j, k] = r = stable_id("tldr-r", p, text)
            response_text[r], response_prompt[r] = text, p
    lengths = np.array([[len(cols["text0"][i]), len(cols["text1"][i])] for i in rows])
    ok = rid[:, 0] != rid[:, 1]
    if opts.max_chars is not None:
        post_len = np.array([len(cols["post"][i]) for i in rows])
        ok &= post_len + lengths.max(axis=1) <= opts.max_chars
    is_train = np.array([cols["split"][i] in SPLITS_TRAIN for i in rows], bool)
    rng = np.random.default_rng(seed)
    if opts.users == "simulated":
        ok &= lengths[:, 0] != lengths[:, 1]
        stats["pairs_dropped_same_text_or_length"] = int((~ok).sum())
        swap = lengths[:, 0] > lengths[:, 1]  # first = shorter summary
        short = np.where(swap, rid[:, 1], rid[:, 0])
        long_ = np.where(swap, rid[:, 0], rid[:, 1])
        pools = {}
        for name, sel in (("train", ok & is_train), ("test", ok & ~is_train)):
            # De-duplicate pairs; order by first occurrence so the pool is independent of hashing.
            keys = list(dict.fromkeys(zip(pid[sel], short[sel], long_[sel])))
            arr = np.array(keys, object).reshape(-1, 3)
            pools[name] = PairPool(arr[:, 0], arr[:, 1], arr[:, 2], np.full(len(arr), "controversial", object))
            stats[f"{name}_pairs"] = len(arr)
        if not len(pools["train"]) or not len(pools["test"]):
            raise FormatError(f"{input_path}: need train and valid rows; pools {stats}")
        groups_seen = np.asarray(GROUPS, object)[even_groups(plan.n_users, len(GROUPS))]
        groups_unseen = np.asarray(GROUPS, object)[even_groups(plan.n_unseen_users, len(GROUPS))]
        short_seen, short_unseen = groups_seen == "short", groups_unseen == "short"
        (seen_ids, unseen_ids), ann = simulate_users(
            plan, pools["train"], pools["test"],
            lambda u, p, pool: short_seen[u], lambda u, p, pool: short_unseen[u], rng,
        )
        users = users_table(seen_ids, unseen_ids, groups_seen, groups_unseen)
        prompts, responses = pool_tables(list(pools.values()), prompt_text, response_text, response_prompt)
        return prompts, responses, users, ann, stats
    return _real_workers(cols, rows[ok], pid[ok], rid[ok], is_train[ok], plan, stats, rng,
                         prompt_text, response_text, response_prompt)


def _real_workers(cols, rows, pid, rid, is_train, plan, stats, rng, prompt_text, response_text, response_prompt):
    worker = np.array([cols["worker"][i] for i in rows], object)
    choice = np.array([cols["choice"][i] for i in rows], np.int64)
    chosen = rid[np.arange(len(rows)), choice]
    rejected = rid[np.arange(len(rows)), 1 - choice]
    # kind: the labels of a pair labelled two or more times agree (common) or not (controversial).
    first = np.where(chosen < rejected, chosen, rejected)
    pair_key = np.array([f"{p}|{min(c, r)}|{max(c, r)}" for p, c, r in zip(pid, chosen, rejected)], object)
    first_wins = (chosen == first).astype(np.int64)
    _, inv = np.unique(pair_key, return_inverse=True)
    n_lab = np.bincount(inv)
    n_first = np.bincount(inv, weights=first_wins)
    kind = np.full(len(rows), None, object)
    several = n_lab[inv] >= 2
    agree = (n_first[inv] == 0) | (n_first[inv] == n_lab[inv])
    kind[several & agree] = "common"
    kind[several & ~agree] = "controversial"
    stats["distinct_pairs"] = int(len(n_lab))
    workers = sorted(set(worker.tolist()))
    if plan.n_unseen_users >= len(workers):
        raise FormatError(f"n_unseen_users={plan.n_unseen_users} leaves no seen worker among {len(workers)}")
    # Unseen workers need rows to onboard with (train) and to be tested on (valid).
    eligible = sorted(set(worker[is_train].tolist()) & set(worker[~is_train].tolist()))
    if plan.n_unseen_users > len(eligible):
        raise FormatError(f"n_unseen_users={plan.n_unseen_users} but only {len(eligible)} of the top workers"
                          f" have both train and valid rows")
    unseen = set(np.asarray(eligible, object)[rng.permutation(len(eligible))[: plan.n_unseen_users]].tolist())
    is_unseen = np.array([w in unseen for w in worker], bool)
    n_fewshot = plan.n_fewshot if plan.n_fewshot is not None else plan.n_context
    # Each unseen worker gives n_fewshot of their train rows (a seeded random subset) at onboarding.
    order = rng.permutation(len(rows))
    fewshot = np.zeros(len(rows), bool)
    taken = Counter()
    for i in order:
        if is_unseen[i] and is_train[i] and taken[worker[i]] < n_fewshot:
            fewshot[i] = True
            taken[worker[i]] += 1

    def table(sel):
        return pa.table({"user_id": pa.array(worker[sel], pa.string()), "prompt_id": pa.array(pid[sel], pa.string()),
                         "chosen_id": pa.array(chosen[sel], pa.string()),
                         "rejected_id": pa.array(rejected[sel], pa.string()), "kind": pa.array(kind[sel], pa.string())})

    ann = {"train": table(~is_unseen & is_train), "test": table(~is_unseen & ~is_train)}
    if unseen:
        ann["fewshot"] = table(fewshot)
        ann["test_unseen"] = table(is_unseen & ~is_train)
    seen_ids = np.array([w for w in workers if w not in unseen], object)
    unseen_ids = np.array(sorted(unseen), object)
    users = users_table(seen_ids, unseen_ids, None, None)
    pool = PairPool(pid, chosen, rejected, kind)
    prompts, responses = pool_tables([pool], prompt_text, response_text, response_prompt)
    return prompts, responses, users, ann, stats
