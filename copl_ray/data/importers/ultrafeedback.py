"""Import `openbmb/UltraFeedback` fine-grained ratings as UF-P-2 / UF-P-4 (CoPL App. D.1).

Input: one file or a folder of ``*.jsonl`` (JSON lines) or older ``*.json`` (JSON array) files,
one instruction per record::

    {"source", "instruction", "models": [4], "completions": [{"model", "principle", "response",
      "annotations": {"helpfulness"|"honesty"|"instruction_following"|"truthfulness":
                      {"Rating": "1".."5"|"N/A", ...} or a one-element list of that},
      "overall_score", "fine-grained_score", ...}, x4], ...}

Construction (CoPL's ``ultrafeedback_init.py`` + ``datagen_ufp.py``, whose pairs come from
``argilla/ultrafeedback-binarized-preferences-cleaned``; we re-derive them with Argilla's rule):

1. Per instruction (first occurrence of each distinct text; TruthfulQA removed, as Argilla did):
   completions with all four aspect ratings numeric are *rated*; chosen = highest mean rating
   (first one in file order among equal means), rejected = a seeded uniform draw among rated
   completions with a strictly lower mean; no such completion (all tie) = no pair.
2. Aspect label per pair: chosen wins on an aspect if its rating is higher, loses if lower; a tie is
   a fair (seeded) coin, as in CoPL.
3. ``controversial_only`` (CoPL ran with ``-c``): keep pairs whose four aspect labels do not all
   agree. ``kind`` = whether the preset's groups disagree (UF-P-2: helpfulness vs honesty, which is
   CoPL's recomputed flag; UF-P-4: all four). App. D.1 says UF-P-2 "removes pairs that both user
   groups label identically", but CoPL's code keeps them (its Table 3 reports UF-P-2's *common*
   pairs), so we keep them too; ``group_controversial_only=true`` gives the App. D.1 reading.
4. A seeded 10% of the prompts form the test pool; users are split evenly into the groups
   (UF-P-2: helpfulness, honesty; UF-P-4: + instruction_following, truthfulness) and label each
   pair by their group's aspect.

Departures: no 1024-token filter (needs gemma's tokenizer); CoPL's quirk of indexing test pairs
by position in the wrong list is not copied; ids are content hashes, not row numbers.
"""

from __future__ import annotations

import os
import re
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from copl_ray.data.importers.common import (
    FormatError, PairPool, SimulationPlan, even_groups, iter_json_records, located, pool_tables, require,
    simulate_users, source_files, split_prompts, stable_id, users_table,
)

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
VARIANT_GROUPS = {"ufp2": ASPECTS[:2], "ufp4": ASPECTS}
_RATING = re.compile(r"^[0-5]$")


class UltraFeedbackOptions(BaseModel):
    """Options of the UltraFeedback importer (``ultrafeedback.*`` keys of import_dataset)."""

    model_config = ConfigDict(extra="forbid")
    variant: Literal["ufp2", "ufp4"] = "ufp4"
    controversial_only: bool = Field(True, description="drop pairs on which all four aspects agree")
    group_controversial_only: bool = Field(
        False, description="also drop pairs the preset's groups agree on (App. D.1's UF-P-2 text; "
                           "CoPL's code and its Table 3 keep them as 'common')")
    drop_truthful_qa: bool = Field(True, description="Argilla's cleaned set removes TruthfulQA prompts")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="share of prompts held out as the test pool")


def _rating(value, path, line, field) -> float:
    """A rating string "0".."5" -> float, "N/A" -> nan; anything else is a format error."""
    if isinstance(value, list):  # pre-fix README shape: a one-element list of the aspect object
        if len(value) != 1:
            raise located(path, line, field, f"is a list of {len(value)}, expected one aspect object")
        value = value[0]
    if not isinstance(value, dict):
        raise located(path, line, field, f"is {type(value).__name__}, expected an object with 'Rating'")
    rating = value.get("Rating")
    if rating is None or rating == "N/A":
        return np.nan
    if not isinstance(rating, str) or not _RATING.match(rating.strip()):
        raise located(path, line, f"{field}.Rating", f"is {rating!r}, expected '0'..'5' or 'N/A'")
    return float(rating)


def _read(files, opts: UltraFeedbackOptions, rng: np.random.Generator, stats: dict):
    """One (prompt, chosen, rejected, ratings [2, 4]) per usable instruction."""
    seen_instr = set()
    out = []
    for path in files:
        for line, rec in iter_json_records(path):
            stats["records"] += 1
            instruction = require(rec, "instruction", str, path, line)
            completions = require(rec, "completions", list, path, line)
            source = rec.get("source", path.stem)
            if not isinstance(source, str):
                raise located(path, line, "source", f"is {type(source).__name__}, expected string")
            texts, ratings = [], []
            for c, comp in enumerate(completions):
                if not isinstance(comp, dict):
                    raise located(path, line, f"completions[{c}]", "is not an object")
                texts.append(require(comp, "response", str, path, line, f"completions[{c}].response"))
                ann = comp.get("annotations") or {}
                if not isinstance(ann, dict):
                    raise located(path, line, f"completions[{c}].annotations", "is not an object")
                ratings.append([
                    _rating(ann[a], path, line, f"completions[{c}].annotations.{a}") if a in ann else np.nan
                    for a in ASPECTS
                ])
            if opts.drop_truthful_qa and source == "truthful_qa":
                stats["dropped_truthful_qa"] += 1
                continue
            if instruction in seen_instr:
                stats["dropped_duplicate_instruction"] += 1
                continue
            seen_instr.add(instruction)
            r = np.array(ratings, float).reshape(-1, len(ASPECTS))
            rated = np.flatnonzero(~np.isnan(r).any(axis=1))
            if rated.size < 2:
                stats["dropped_unrated"] += 1
                continue
            mean = r[rated].mean(axis=1)
            best = rated[int(np.argmax(mean))]
            lower = rated[mean < mean.max()]
            if not lower.size:
                stats["dropped_all_tied"] += 1
                continue
            worst = int(lower[rng.integers(len(lower))])
            if texts[best] == texts[worst]:
                stats["dropped_same_text"] += 1
                continue
            out.append((instruction, texts[best], texts[worst], r[[best, worst]]))
    return out


def import_ultrafeedback(input_path: str | os.PathLike, plan: SimulationPlan, opts: UltraFeedbackOptions, seed: int):
    """Read UltraFeedback and build a UF-P-2 / UF-P-4 dataset.

    Returns:
        (prompts, responses, users, annotations by split, stats dict).
    """
    files = source_files(input_path, ("*.jsonl", "*.json"), "UltraFeedback")
    stats = {k: 0 for k in ("records", "dropped_truthful_qa", "dropped_duplicate_instruction",
                            "dropped_unrated", "dropped_all_tied", "dropped_same_text")}
    rng = np.random.default_rng(seed)
    rows = _read(files, opts, rng, stats)
    if not rows:
        raise FormatError(f"{input_path}: no UltraFeedback record gives a preference pair ({stats})")
    ratings = np.stack([r[3] for r in rows])  # [P, 2 (chosen, rejected), 4 aspects]
    diff = ratings[:, 0] - ratings[:, 1]
    coin = rng.random(diff.shape) < 0.5
    chosen_wins = np.where(diff == 0, coin, diff > 0)  # [P, 4] per-aspect label
    all_agree = chosen_wins.all(axis=1) | (~chosen_wins).all(axis=1)
    keep = ~all_agree if opts.controversial_only else np.ones(len(rows), bool)
    stats["pairs_derived"] = len(rows)
    stats["pairs_controversial_4_aspects"] = int((~all_agree).sum())
    groups = VARIANT_GROUPS[opts.variant]
    gcols = [ASPECTS.index(g) for g in groups]
    sub = chosen_wins[:, gcols]
    kind = np.where(sub.all(axis=1) | (~sub).all(axis=1), "common", "controversial").astype(object)
    if opts.group_controversial_only:
        keep &= kind == "controversial"

    prompt_text, response_text, response_prompt = {}, {}, {}
    pid = np.empty(len(rows), object)
    rid = np.empty((len(rows), 2), object)
    for i, (instr, a, b, _) in enumerate(rows):
        pid[i] = p = stable_id("uf-p", instr)
        prompt_text[p] = instr
        for k, text in enumerate((a, b)):
            rid[i, k] = r = stable_id("uf-r", p, text)
            response_text[r], response_prompt[r] = text, p
    test_prompts = split_prompts(rng, pid[keep].tolist(), opts.test_fraction)
    is_test = np.array([p in test_prompts for p in pid], bool)
    pools = {}
    for name, sel in (("train", keep & ~is_test), ("test", keep & is_test)):
        pools[name] = PairPool(pid[sel], rid[sel, 0], rid[sel, 1], kind[sel],
                               {"first_wins": chosen_wins[sel][:, gcols]})  # [P, n_groups]
        stats[f"{name}_pairs"] = int(sel.sum())
    if not len(pools["train"]) or not len(pools["test"]):
        raise FormatError(f"{input_path}: too few pairs for a train and a test pool ({stats})")

    g_seen, g_unseen = even_groups(plan.n_users, len(groups)), even_groups(plan.n_unseen_users, len(groups))
    (seen_ids, unseen_ids), ann = simulate_users(
        plan, pools["train"], pools["test"],
        lambda u, p, pool: pool.data["first_wins"][p, g_seen[u]],
        lambda u, p, pool: pool.data["first_wins"][p, g_unseen[u]], rng,
    )
    gnames = np.asarray(groups, object)
    users = users_table(seen_ids, unseen_ids, gnames[g_seen], gnames[g_unseen])
    prompts, responses = pool_tables(list(pools.values()), prompt_text, response_text, response_prompt)
    return prompts, responses, users, ann, stats
