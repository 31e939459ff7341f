"""Latent-factor preference datasets unlike the presets: the robustness suite's data.

The four presets (`copl_ray.data.synthetic`) rebuild the paper's datasets; defaults tuned on them
did not carry over to other data (issue 14). This generator makes contract datasets from a plain
latent-factor model with the knobs a real annotation set varies on, so `jobs/bench_robustness.py`
can check the job defaults across many of them:

* responses carry ``n_attributes`` latent scores s_r ~ N(0, Sigma), Sigma = (1 - rho) I + rho 11^T
  (``attribute_correlation`` = rho: correlated attributes make groups agree more often);
* ``n_groups`` groups with sizes in ``group_ratios`` (imbalance), each a random unit direction w_g
  in attribute space; a user's weights are w_g + ``user_spread`` * N(0, I / n_attributes)
  (people in a group are alike, not identical);
* a label prefers the larger w_u . s and is flipped with probability ``label_noise`` (all splits);
* the survey is ``n_pairs`` pairs, each of two responses of one prompt; every pair is kept (common
  pairs, where all groups agree, are labelled ``common``, the others ``controversial``);
* a seen user annotates ``annotations_per_user`` survey pairs (``dense``) or a uniform
  ``min_annotations .. annotations_per_user`` (``sparse``), and gets ``test_pairs_per_user`` test
  pairs among the survey pairs they did not annotate (so the test responses are in the graph, and
  GNN accuracy on seen users is defined); unseen users likewise for ``fewshot`` / ``test_unseen``;
* unseen users are spread evenly over the groups (round robin), whatever ``group_ratios`` say, so
  adaptation is scored on a minority group's newcomers as much as on the majority's (unseen
  accuracy can then sit well below seen accuracy on imbalanced cases: g2_1to9_sparse);
* ids are opaque (hex digests), never dense integers.

Users' true group is in ``users.group`` (a learner given the true groups reads it) and their weights
in an extra ``weights`` column.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from copl_ray.data.dataset import write_dataset
from copl_ray.data.synthetic_sampling import sample_distinct


class LatentCase(BaseModel):
    """One dataset of the suite (every field has a default; ``name`` labels it in tables)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "case"
    n_users: int = Field(4000, ge=2, description="seen users")
    n_unseen_users: int = Field(200, ge=0)
    n_groups: int = Field(3, ge=1)
    group_ratios: list[float] | None = Field(None, description="relative group sizes; default equal")
    n_attributes: int = Field(4, ge=1)
    attribute_correlation: float = Field(0.0, ge=0.0, lt=1.0)
    user_spread: float = Field(0.2, ge=0.0, description="within-group spread of user weights")
    label_noise: float = Field(0.05, ge=0.0, lt=0.5)
    n_pairs: int = Field(3000, ge=2, description="survey pairs")
    responses_per_prompt: int = Field(4, ge=2)
    annotations: Literal["dense", "sparse"] = "dense"
    annotations_per_user: int = Field(12, ge=1, description="dense: exactly this; sparse: the maximum")
    min_annotations: int = Field(2, ge=1, description="sparse: the minimum")
    fewshot_per_user: int = Field(8, ge=1)
    test_pairs_per_user: int = Field(10, ge=1)
    test_pairs_per_unseen_user: int = Field(20, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        if self.group_ratios is not None and (len(self.group_ratios) != self.n_groups
                                              or min(self.group_ratios) <= 0):
            raise ValueError(f"group_ratios must hold n_groups={self.n_groups} positive numbers,"
                             f" got {self.group_ratios}")
        if self.annotations == "sparse" and self.min_annotations > self.annotations_per_user:
            raise ValueError(f"min_annotations={self.min_annotations} > annotations_per_user="
                             f"{self.annotations_per_user}")
        need = max(self.annotations_per_user + self.test_pairs_per_user,
                   self.fewshot_per_user + self.test_pairs_per_unseen_user)
        if need > self.n_pairs:
            raise ValueError(f"n_pairs={self.n_pairs} is smaller than one user's train + test pairs ({need})")
        return self


def _opaque_ids(kind: str, n: int, seed: int) -> pa.Array:
    """n distinct ids like ``u-3f9a0c1d2e4b`` (hash of kind, seed and index: opaque, reproducible)."""
    return pa.array([f"{kind[0]}-{hashlib.blake2b(f'{kind}:{seed}:{i}'.encode(), digest_size=6).hexdigest()}"
                     for i in range(n)], pa.string())


def _group_sizes(n: int, ratios: list[float]) -> np.ndarray:
    """Exact group sizes summing to n (largest remainder)."""
    r = np.asarray(ratios, float) / np.sum(ratios)
    base = np.floor(r * n).astype(np.int64)
    base[np.argsort(-(r * n - base))[: n - base.sum()]] += 1
    return base


def generate_latent_dataset(case: LatentCase, root: str | os.PathLike) -> dict:
    """Write ``case`` as a contract dataset under ``root``; returns a summary dict."""
    rng = np.random.default_rng(case.seed)
    k = case.n_attributes
    n_prompts = case.n_pairs  # one survey pair per prompt
    n_resp = n_prompts * case.responses_per_prompt
    cov = (1 - case.attribute_correlation) * np.eye(k) + case.attribute_correlation
    scores = rng.multivariate_normal(np.zeros(k), cov, size=n_resp)  # [n_resp, k]

    # survey pairs: two distinct responses of each prompt
    prompt = np.arange(case.n_pairs)
    first = rng.integers(0, case.responses_per_prompt, case.n_pairs)
    second = (first + rng.integers(1, case.responses_per_prompt, case.n_pairs)) % case.responses_per_prompt
    pa_idx = prompt * case.responses_per_prompt + first
    pb_idx = prompt * case.responses_per_prompt + second
    diff = scores[pa_idx] - scores[pb_idx]  # [n_pairs, k]

    directions = rng.normal(size=(case.n_groups, k))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    group_pref = diff @ directions.T > 0  # [n_pairs, G]: does group g prefer a?
    kind = np.where(group_pref.all(1) | (~group_pref).all(1), "common", "controversial")

    n_total = case.n_users + case.n_unseen_users
    sizes = _group_sizes(case.n_users, case.group_ratios or [1.0] * case.n_groups)
    group = np.concatenate([rng.permutation(np.repeat(np.arange(case.n_groups), sizes)),
                            np.arange(case.n_unseen_users) % case.n_groups])
    weights = directions[group] + case.user_spread * rng.normal(size=(n_total, k)) / np.sqrt(k)

    user_ids = _opaque_ids("user", n_total, case.seed)
    resp_ids = _opaque_ids("resp", n_resp, case.seed)
    prompt_ids = _opaque_ids("prompt", n_prompts, case.seed)

    def split_rows(users: np.ndarray, n_first: np.ndarray, n_second: int):
        """Each user's distinct survey pairs: the first n_first[i] for one split, n_second more."""
        row, item = sample_distinct(rng, n_first + n_second, case.n_pairs)
        pos = np.arange(len(row)) - np.repeat(np.cumsum(n_first + n_second) - (n_first + n_second),
                                              n_first + n_second)
        is_first = pos < np.repeat(n_first, n_first + n_second)
        return users[row], item, is_first

    def table(users: np.ndarray, items: np.ndarray) -> pa.Table:
        pref_a = (weights[users] * diff[items]).sum(1) > 0
        pref_a ^= rng.random(len(users)) < case.label_noise
        a, b = pa_idx[items], pb_idx[items]
        chosen, rejected = np.where(pref_a, a, b), np.where(pref_a, b, a)
        return pa.table({"user_id": user_ids.take(users), "prompt_id": prompt_ids.take(prompt[items]),
                         "chosen_id": resp_ids.take(chosen), "rejected_id": resp_ids.take(rejected),
                         "kind": pa.array(kind[items])})

    seen = np.arange(case.n_users)
    if case.annotations == "dense":
        n_train = np.full(case.n_users, case.annotations_per_user, np.int64)
    else:
        n_train = rng.integers(case.min_annotations, case.annotations_per_user + 1, case.n_users)
    u, item, is_train = split_rows(seen, n_train, case.test_pairs_per_user)
    splits = {"train": table(u[is_train], item[is_train]), "test": table(u[~is_train], item[~is_train])}
    unseen = np.arange(case.n_users, n_total)
    u, item, is_few = split_rows(unseen, np.full(len(unseen), case.fewshot_per_user, np.int64),
                                 case.test_pairs_per_unseen_user)
    splits.update(fewshot=table(u[is_few], item[is_few]), test_unseen=table(u[~is_few], item[~is_few]))

    names = np.array([f"g{g}" for g in range(case.n_groups)])
    users = pa.table({"user_id": user_ids,
                      "split": pa.array(np.where(np.arange(n_total) < case.n_users, "seen", "unseen")),
                      "group": pa.array(names[group]),
                      "weights": pa.array(list(weights.astype(np.float32)), pa.list_(pa.float32(), k))})
    prompts = pa.table({"prompt_id": prompt_ids,
                        "text": pa.array([f"prompt {i}" for i in range(n_prompts)])})
    responses = pa.table({
        "response_id": resp_ids,
        "prompt_id": prompt_ids.take(np.repeat(np.arange(n_prompts), case.responses_per_prompt)),
        "text": pa.array([f"response {i}" for i in range(n_resp)]),
        **{f"score_{j}": pa.array(scores[:, j].astype(np.float32)) for j in range(k)}})
    write_dataset(root, prompts, responses, users, splits)
    return {"name": case.name, "n_train": splits["train"].num_rows,
            "common_fraction": float(np.mean(kind == "common")),
            "majority_share": float(sizes.max() / sizes.sum()), "root": str(Path(root))}
