"""Import PersonalLLM (`namkoong-lab/PersonalLLM`) into a contract dataset (CoPL App. D.1).

Input: a Parquet file or a folder of them (``data/{train,test}-00000-of-00001.parquet`` or the
``refs/convert/parquet`` layout ``default/{train,test}/0000.parquet``), columns selected by name::

    prompt: string, prompt_id: int64, subset: string,
    response_{k}: string, response_{k}_model: string                    k = 1..8
    response_{k}_{rm}: float64                                           10 reward models

Files whose path mentions ``test`` form the test pool, the others the train pool; with no test
file a seeded ``test_fraction`` of the prompts is held out.

Construction (CoPL's official ``datagen_plm.py``): responses ``responses`` (default 5, 6, 7) of
each prompt; raw scores of ``reward_models`` (default gemma_7b, mistral_weqweasdas, llama3_sfairx,
oasst_deberta_v3); every pair of them is kept only if the reward models disagree on its order
(one says first > second, another first < second), i.e. not Pareto-dominated. Each user has
weights w ~ Dirichlet(alpha * 1) over the reward models (alpha 0.1) and prefers the response with
the larger w . scores. Users have no group; ``users.parquet`` gets the extra columns ``weights``
and ``dominant_dimension`` (the reward model with the largest weight). Every kept pair is
``controversial`` (its dimensions disagree).

Interpretations / departures: a pair on which the models tie on some dimension and never disagree
counts as dominated (dropped); an exact tie w.(s_a - s_b) = 0 goes to the second response; no
1024-token filter (needs gemma's tokenizer); ``score_scale=zscore`` standardizes each reward model
with the train pool's own mean/sd (PersonalLLM's published constants are not available here).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from copl_ray.data.importers.common import (
    FormatError, PairPool, SimulationPlan, pool_tables, simulate_users, source_files,
    split_prompts, users_table,
)

COPL_REWARD_MODELS = ["gemma_7b", "mistral_weqweasdas", "llama3_sfairx", "oasst_deberta_v3"]
ALL_REWARD_MODELS = ["gemma_2b", "gemma_7b", "mistral_raft", "mistral_ray", "mistral_weqweasdas",
                     "llama3_sfairx", "oasst_deberta_v3", "beaver_7b", "oasst_pythia_7b", "oasst_pythia_1b"]


class PersonalLLMOptions(BaseModel):
    """Options of the PersonalLLM importer (``personalllm.*`` keys of import_dataset)."""

    model_config = ConfigDict(extra="forbid")
    responses: list[int] = Field(default_factory=lambda: [5, 6, 7], description="response numbers used (1..8)")
    reward_models: list[str] = Field(default_factory=lambda: list(COPL_REWARD_MODELS))
    alpha: float = Field(0.1, gt=0, description="Dirichlet concentration of user weights")
    score_scale: Literal["raw", "zscore"] = "raw"
    test_fraction: float = Field(0.1, gt=0, lt=1, description="held-out prompt share when no test file exists")

    @field_validator("responses")
    @classmethod
    def _responses(cls, v):
        if len(set(v)) < 2 or any(k < 1 or k > 8 for k in v):
            raise ValueError(f"responses must be >= 2 distinct numbers in 1..8, got {v}")
        return sorted(set(v))

    @field_validator("reward_models")
    @classmethod
    def _rms(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError(f"reward_models must be a non-empty list without repeats, got {v}")
        return v


def _column(table: pa.Table, name: str, path: Path, kind: str) -> np.ndarray:
    if name not in table.column_names:
        raise FormatError(f"{path}: field {name!r} is missing (PersonalLLM needs response_{{k}} and "
                          f"response_{{k}}_{{rm}} columns)")
    col = table.column(name)
    ok = {"string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
          "float": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
          "id": lambda t: pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)}[kind]
    if not ok(col.type):
        raise FormatError(f"{path}: field {name!r} has type {col.type}, expected {kind}")
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise FormatError(f"{path}: row {row}: field {name!r} is null")
    values = col.to_numpy(zero_copy_only=False)
    if kind == "float":
        values = values.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise FormatError(f"{path}: row {int(bad[0])}: field {name!r} is {values[bad[0]]}, expected a finite score")
    return values


def _read(path: Path, opts: PersonalLLMOptions, split: str):
    """prompt ids/texts [N], response texts [N, K], scores [N, K, M] of one file."""
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise FormatError(f"{path}: not a readable Parquet file: {exc}") from exc
    prompt = _column(table, "prompt", path, "string")
    raw_id = _column(table, "prompt_id", path, "id")
    pid = np.array([f"plm-{split}-{x}" for x in raw_id], object)
    uniq, first = np.unique(pid, return_index=True)
    if len(uniq) != len(pid):
        dup = int(np.setdiff1d(np.arange(len(pid)), first)[0])
        raise FormatError(f"{path}: row {dup}: field 'prompt_id' value {raw_id[dup]!r} is not unique")
    texts = np.stack([_column(table, f"response_{k}", path, "string") for k in opts.responses], axis=1)
    scores = np.stack([np.stack([_column(table, f"response_{k}_{rm}", path, "float") for rm in opts.reward_models],
                                axis=1) for k in opts.responses], axis=1)
    return pid, prompt, texts, scores


def import_personalllm(input_path: str | os.PathLike, plan: SimulationPlan, opts: PersonalLLMOptions, seed: int):
    """Read PersonalLLM Parquet files and simulate Dirichlet users.

    Returns:
        (prompts, responses, users, annotations by split, stats dict).
    """
    files = source_files(input_path, ("*.parquet",), "PersonalLLM Parquet")
    rng = np.random.default_rng(seed)
    parts = {"train": [], "test": []}
    root = Path(input_path)
    for path in files:
        # Only the part of the path below the input folder decides (a "test" in the caller's own
        # directory names must not turn every file into test data).
        rel = path.name if root.is_file() else str(path.relative_to(root))
        split = "test" if "test" in rel.lower() else "train"
        parts[split].append(_read(path, opts, split))
    data = {s: [np.concatenate(x) for x in zip(*v)] for s, v in parts.items() if v}
    if "train" not in data:
        raise FormatError(f"{input_path}: no PersonalLLM train file (only files mentioning 'test')")
    if "test" not in data:  # hold out prompts of the single file
        pid = data["train"][0]
        held = np.isin(pid, np.array(sorted(split_prompts(rng, pid.tolist(), opts.test_fraction)), object))
        data = {"train": [x[~held] for x in data["train"]], "test": [x[held] for x in data["train"]]}
    if opts.score_scale == "zscore":
        s = data["train"][3]
        mean, sd = s.mean(axis=(0, 1)), s.std(axis=(0, 1))
        for split in data:
            data[split][3] = (data[split][3] - mean) / np.where(sd > 0, sd, 1.0)

    prompt_text, response_text, response_prompt, pools, stats = {}, {}, {}, {}, {}
    for split, (pid, prompt, texts, scores) in data.items():
        rid = np.array([[f"{p}-r{k}" for k in opts.responses] for p in pid], object).reshape(len(pid), -1)
        prompt_text.update(zip(pid.tolist(), prompt.tolist()))
        response_text.update(zip(rid.ravel().tolist(), texts.ravel().tolist()))
        response_prompt.update(zip(rid.ravel().tolist(), np.repeat(pid, rid.shape[1]).tolist()))
        cols = {k: [] for k in ("pid", "a", "b", "diff")}
        for i, j in itertools.combinations(range(len(opts.responses)), 2):
            diff = scores[:, i] - scores[:, j]  # [N, M]
            keep = (diff > 0).any(axis=1) & (diff < 0).any(axis=1) & (texts[:, i] != texts[:, j])
            cols["pid"].append(pid[keep])
            cols["a"].append(rid[keep, i])
            cols["b"].append(rid[keep, j])
            cols["diff"].append(diff[keep])
        cat = {k: np.concatenate(v) for k, v in cols.items()}
        pools[split] = PairPool(cat["pid"], cat["a"], cat["b"], np.full(len(cat["a"]), "controversial", object),
                                {"diff": cat["diff"]})  # diff [P, M]: first minus second score
        stats[f"{split}_prompts"] = len(pid)
        stats[f"{split}_pairs"] = len(cat["a"])
        stats[f"{split}_pairs_dominated"] = len(pid) * len(opts.responses) * (len(opts.responses) - 1) // 2 - len(cat["a"])
    if not len(pools["train"]) or not len(pools["test"]):
        raise FormatError(f"{input_path}: no non-dominated pair in a pool ({stats})")

    m = len(opts.reward_models)
    w_seen = rng.dirichlet(np.full(m, opts.alpha), size=plan.n_users)
    w_unseen = rng.dirichlet(np.full(m, opts.alpha), size=plan.n_unseen_users)
    (seen_ids, unseen_ids), ann = simulate_users(
        plan, pools["train"], pools["test"],
        lambda u, p, pool: np.einsum("nm,nm->n", w_seen[u], pool.data["diff"][p]) > 0,
        lambda u, p, pool: np.einsum("nm,nm->n", w_unseen[u], pool.data["diff"][p]) > 0, rng,
    )
    weights = np.concatenate([w_seen, w_unseen]).astype(np.float32)
    extra = {"weights": pa.FixedSizeListArray.from_arrays(pa.array(weights.ravel(), pa.float32()), m),
             # the reward model a user weighs most, for group-wise views of a group-less dataset
             "dominant_dimension": pa.array(np.asarray(opts.reward_models, object)[weights.argmax(axis=1)], pa.string())}
    users = users_table(seen_ids, unseen_ids, None, None, extra)
    prompts, responses = pool_tables(list(pools.values()), prompt_text, response_text, response_prompt)
    stats["reward_models"] = list(opts.reward_models)
    return prompts, responses, users, ann, stats
