"""Paper-faithful synthetic analogues of CoPL's datasets (Sec. 5.1, App. D.1), as contract datasets.

The real datasets cannot be downloaded here (their importers live in ``copl_ray/data/importers``),
so each preset rebuilds the *preference structure* of one of them over synthetic texts that carry
every latent attribute visibly (`copl_ray.data.synthetic_text`):

* ``tldr``: summaries of a post with 1-6 sentences, score = word count; groups ``short`` (weight
  -1) and ``long`` (+1) always disagree. 8 annotations (ALL) or uniform 1..15 (AVG). Survey 19,824.
* ``ufp2``: responses scored 1-5 on helpfulness, honesty, instruction following, truthfulness;
  groups ``helpfulness`` and ``honesty`` each label by their attribute; the survey keeps only
  pairs the two groups label differently. 8 / 1..15 annotations. Survey 25,993.
* ``ufp4``: the four attribute groups; survey pairs on which not all four groups agree (partial
  agreement remains). 16 / 1..31 annotations. Survey 25,993.
* ``personalllm``: the same four scored dimensions, 3 responses per prompt; each user a mixture
  ``w ~ Dirichlet(alpha=0.1)`` and prefers the larger ``w . s``; no groups (``group`` null, the
  argmax dimension in ``dominant_dimension``); survey pairs where no response dominates on all
  dimensions. 16 / 1..31 annotations. Survey 14,435.

Common to all: 10,000 seen users split over the groups by ``group_ratios`` (exact counts, largest
remainder, shuffled), 100 unseen users spread evenly; seen users sample their annotations from the
survey set without replacement and get 10 test pairs from a held-out pool on separate prompts;
unseen users give 8 (tldr/ufp2) or 16 few-shot annotations from the survey set and 50 test pairs
from the pool. Each prompt has 4 responses (personalllm 3) and gives at most 1 survey pair (tldr 2,
personalllm 3): UltraFeedback's one pair per instruction, PersonalLLM's ~1.5. Every user has true weights over the score dimensions (``weights`` column; one-hot
or -1 for groups) and labels ``chosen = argmax w . s``; ``label_noise`` flips a label with that
probability in every split, test splits included (people are not perfectly consistent, so the
attainable accuracy is ``1 - label_noise``). Scores go to ``score_<dim>`` response columns.

Besides the contract files, ``pairs.parquet`` lists the survey set and the test pool (``pool``,
``prompt_id``, ``response_a_id``, ``response_b_id``, ``kind``), and ``users.parquet`` carries
``weights``, ``n_train`` (N_u) and, for personalllm, ``dominant_dimension``.

Departures from the paper, on purpose:
* texts are synthetic, so attribute scores are exact and integer (PersonalLLM's are continuous
  reward-model outputs over 10 models; we keep 4 dimensions and 3 responses, as CoPL did);
* UF-P's ties on an attribute are coin-flipped by CoPL's code; here pairs where a group is
  indifferent (margin < ``min_margin``: 1 point, or 3 words for tldr) are not used;
* ``kind`` is also set for personalllm: ``common`` when one response dominates on every
  dimension (then every user agrees), else ``controversial``;
* ufp2's survey keeps only pairs the two groups disagree on (the issue's rule). Trained on those
  alone, helpfulness and honesty are perfectly anti-aligned in every label, so common test pairs
  are not identifiable; ``survey_rule=dimensions_disagree`` applies UF-P's own rule instead (drop
  pairs all four scores agree on), which keeps pairs the two groups agree on, as CoPL's data has;
* the test pool holds a share ``test_common_fraction`` of common pairs (ufp2: 0.48, the share that
  reproduces the Total row of the paper's Table 3 from its Common/Controversial rows; other presets
  0, like their filtered sources), so accuracy can be split by ``kind``;
* ``test_pool=survey`` (an option) draws each user's test pairs from the survey pairs that user
  did not annotate (disjoint from their train / few-shot pairs), so the test responses are in the
  graph and GNN dot-product accuracy (`gnn_test_accuracy`, adaptation's ``unseen_accuracy``) is
  defined; the default keeps the paper's held-out prompts ("test pairs not in the survey set");
* the official code's bugs are not repeated: test labels follow each user's own preference, unseen
  users exist, and every draw is seeded (one stream per purpose and user block, so output does not
  depend on ``rows_per_shard``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from copl_ray.config import JobConfig
from copl_ray.data.dataset import write_dataset, write_table
from copl_ray.data.synthetic_corpus import KIND_NAMES, Corpus, PairSet, build_corpus
from copl_ray.data.synthetic_sampling import ShardWriter, annotation_counts, sample_distinct

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
_ONE_HOT = {name: tuple(float(i == j) for j in range(4)) for i, name in enumerate(ASPECTS)}
BLOCK_USERS = 65_536  # users per random stream / annotation block (fixed: output independent of sharding)

PRESETS: dict[str, dict] = {
    "tldr": dict(style="tldr", dims=("length",), groups={"short": (-1.0,), "long": (1.0,)}, min_margin=3,
                 defaults=dict(survey_size=19_824, annotations_per_user=8, fewshot_per_user=8,
                               responses_per_prompt=4, pairs_per_prompt=2, test_common_fraction=0.0)),
    "ufp2": dict(style="uf", dims=ASPECTS, groups={a: _ONE_HOT[a] for a in ASPECTS[:2]}, min_margin=1,
                 defaults=dict(survey_size=25_993, annotations_per_user=8, fewshot_per_user=8,
                               responses_per_prompt=4, pairs_per_prompt=1, test_common_fraction=0.48)),
    "ufp4": dict(style="uf", dims=ASPECTS, groups={a: _ONE_HOT[a] for a in ASPECTS}, min_margin=1,
                 defaults=dict(survey_size=25_993, annotations_per_user=16, fewshot_per_user=16,
                               responses_per_prompt=4, pairs_per_prompt=1, test_common_fraction=0.0)),
    "personalllm": dict(style="uf", dims=ASPECTS, groups=None, min_margin=0,
                        defaults=dict(survey_size=14_435, annotations_per_user=16, fewshot_per_user=16,
                                      responses_per_prompt=3, pairs_per_prompt=3, test_common_fraction=0.0)),
}
# Random streams: np.random.default_rng([seed, STREAM, block]).
_CORPUS, _USERS, _COUNTS, _TRAIN, _TEST, _FEWSHOT, _TEST_UNSEEN = range(7)


class SyntheticSpec(JobConfig):
    """What to generate. Unset preset-dependent fields take the preset's paper defaults."""

    preset: Literal["tldr", "ufp2", "ufp4", "personalllm"] = "ufp4"
    n_users: int = Field(10_000, ge=1, description="seen users")
    annotations: Literal["all", "avg"] = "all"
    seed: int = Field(0, ge=0)
    n_unseen_users: int = Field(100, ge=0)
    group_ratios: list[float] | None = Field(None, description="relative group sizes of seen users, e.g. [1, 9]")
    label_noise: float = Field(0.0, ge=0.0, lt=0.5, description="probability that a label is flipped (every split)")
    dirichlet_alpha: float = Field(0.1, gt=0.0, description="personalllm: concentration of user weights")
    survey_size: int | None = Field(None, ge=1)
    test_pool_size: int | None = Field(None, ge=1, description="default: survey_size // 10")
    annotations_per_user: int | None = Field(None, ge=1, description="ALL: exactly this; AVG: its mean")
    test_pairs_per_user: int = Field(10, ge=1)
    fewshot_per_user: int | None = Field(None, ge=1)
    test_pairs_per_unseen_user: int = Field(50, ge=1)
    test_common_fraction: float | None = Field(None, ge=0.0, le=1.0)
    responses_per_prompt: int | None = Field(None, ge=2)
    pairs_per_prompt: int | None = Field(None, ge=1)
    survey_rule: Literal["groups_disagree", "dimensions_disagree"] = Field(
        "groups_disagree", description="survey pairs: the groups disagree (issue), or not all four"
        " score dimensions agree (UF-P's own rule; differs from the default only for ufp2)")
    test_pool: Literal["held_out_prompts", "survey"] = Field(
        "held_out_prompts", description="where test / test_unseen pairs come from: a pool on separate"
        " prompts (paper), or the survey pairs each user did not annotate (responses in the graph)")
    rows_per_shard: int = Field(1_000_000, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, data):
        if isinstance(data, dict) and data.get("preset", "ufp4") in PRESETS:
            data = dict(data)
            for key, value in PRESETS[data.get("preset", "ufp4")]["defaults"].items():
                if data.get(key) is None:
                    data[key] = value
            if data.get("test_pool_size") is None:
                data["test_pool_size"] = max(1, int(data["survey_size"]) // 10)
        return data

    @model_validator(mode="after")
    def _check(self):
        groups = PRESETS[self.preset]["groups"]
        if self.group_ratios is not None:
            if groups is None:
                raise ValueError(f"group_ratios: preset {self.preset!r} has no groups")
            if len(self.group_ratios) != len(groups) or min(self.group_ratios) <= 0:
                raise ValueError(f"group_ratios: need {len(groups)} positive numbers for {list(groups)},"
                                 f" got {self.group_ratios}")
        most = 2 * self.annotations_per_user - 1 if self.annotations == "avg" else self.annotations_per_user
        if self.test_pool == "survey":  # train + test (few-shot + test_unseen) distinct survey pairs
            checks = (("annotations_per_user + test_pairs_per_user", most + self.test_pairs_per_user, "survey_size"),
                      ("fewshot_per_user + test_pairs_per_unseen_user",
                       self.fewshot_per_user + self.test_pairs_per_unseen_user, "survey_size"))
        else:
            checks = (("annotations_per_user", most, "survey_size"),
                      ("fewshot_per_user", self.fewshot_per_user, "survey_size"),
                      ("test_pairs_per_user", self.test_pairs_per_user, "test_pool_size"),
                      ("test_pairs_per_unseen_user", self.test_pairs_per_unseen_user, "test_pool_size"))
        for name, need, pool in checks:
            if need > getattr(self, pool):
                raise ValueError(f"{name}: a user would need {need} distinct pairs but {pool} is {getattr(self, pool)}")
        if self.preset == "tldr" and self.test_common_fraction > 0:
            raise ValueError("test_common_fraction: tldr groups disagree on every pair, so it must be 0")
        k = self.responses_per_prompt
        if self.pairs_per_prompt > k * (k - 1) // 2:
            raise ValueError(f"pairs_per_prompt: {self.pairs_per_prompt} > {k * (k - 1) // 2} pairs of"
                             f" responses_per_prompt={k} responses")
        return self


def group_counts(n: int, ratios: list[float]) -> np.ndarray:
    """Exact group sizes summing to ``n``, proportional to ``ratios`` (largest remainder). [G] int64."""
    share = np.asarray(ratios, float) / float(np.sum(ratios)) * n
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _ids(prefix: str, n: int, start: int = 0, width: int = 7) -> pa.Array:
    return pa.array(np.char.add(prefix, np.char.zfill(np.arange(start, start + n).astype(str), width)))


def _users(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray]:
    """Group index per user (seen then unseen; None without groups) and weights [n_all, D] float32."""
    preset = PRESETS[spec.preset]
    n_seen, n_unseen = spec.n_users, spec.n_unseen_users
    if preset["groups"] is None:
        w = rng.dirichlet(np.full(len(preset["dims"]), spec.dirichlet_alpha), size=n_seen + n_unseen)
        return None, w.astype(np.float32)
    n_groups = len(preset["groups"])
    seen = np.repeat(np.arange(n_groups), group_counts(n_seen, spec.group_ratios or [1.0] * n_groups))
    unseen = np.repeat(np.arange(n_groups), group_counts(n_unseen, [1.0] * n_groups))
    group = np.concatenate([rng.permutation(seen), rng.permutation(unseen)])
    table = np.array(list(preset["groups"].values()), np.float32)
    return group, table[group]


class _Annotator:
    """Turns (user, pool pair) draws into contract annotation tables."""

    def __init__(self, user_ids: pa.Array, weights: np.ndarray, corpus: Corpus, prompt_ids: pa.Array,
                 response_ids: pa.Array, noise: float):
        self.user_ids, self.weights, self.noise = user_ids, weights.astype(np.float64), noise
        self.scores = corpus.scores.astype(np.float64)
        self.prompt_ids, self.response_ids = prompt_ids, response_ids
        self.kinds = pa.array(KIND_NAMES)

    def block(self, rng: np.random.Generator, users: np.ndarray, counts: np.ndarray, pool: PairSet) -> pa.Table:
        """Annotations of ``users [n]`` (global indices), ``counts [n]`` distinct pairs each."""
        row, item = sample_distinct(rng, counts, len(pool))
        return self._label(rng, users[row], item, pool)

    def block_split(self, rng: np.random.Generator, users: np.ndarray, first: np.ndarray, second: np.ndarray,
                    pool: PairSet) -> tuple[pa.Table, pa.Table]:
        """Two annotation tables over disjoint pairs: user i gets ``first[i] + second[i]`` distinct
        pairs, the first ``first[i]`` of them in the first table (e.g. train and test)."""
        row, item = sample_distinct(rng, first + second, len(pool))
        start = np.r_[0, np.cumsum(first + second)[:-1]]
        in_first = (np.arange(row.size) - start[row]) < first[row]
        labelled = self._label(rng, users[row], item, pool)
        mask = pa.array(in_first)
        return labelled.filter(mask), labelled.filter(pc.invert(mask))

    def _label(self, rng: np.random.Generator, user: np.ndarray, item: np.ndarray, pool: PairSet) -> pa.Table:
        """Each user's label on pool pair ``item`` (``user``, ``item`` [N] aligned)."""
        a, b = pool.a[item], pool.b[item]
        margin = np.einsum("nd,nd->n", self.weights[user], self.scores[a] - self.scores[b])
        a_wins = margin > 0  # an exact tie (w . d == 0) goes to b; grouped presets have none
        if self.noise > 0:
            a_wins ^= rng.random(a_wins.shape[0]) < self.noise
        chosen, rejected = np.where(a_wins, a, b), np.where(a_wins, b, a)
        return pa.table({
            "user_id": self.user_ids.take(pa.array(user)),
            "prompt_id": self.prompt_ids.take(pa.array(pool.prompt[item])),
            "chosen_id": self.response_ids.take(pa.array(chosen)),
            "rejected_id": self.response_ids.take(pa.array(rejected)),
            "kind": self.kinds.take(pa.array(pool.kind[item])),
        })


def _stream(seed: int, stream: int, block: int = 0) -> np.random.Generator:
    """The random stream of one purpose (and one user block): independent of everything else drawn."""
    return np.random.default_rng([seed, stream, block])


def generate_dataset(spec: SyntheticSpec, root: str | os.PathLike) -> dict:
    """Write the dataset described by ``spec`` to ``root``; return its figures (counts, shares)."""
    preset = PRESETS[spec.preset]
    root = Path(root)
    group_w = None if preset["groups"] is None else np.array(list(preset["groups"].values()), float)
    corpus = build_corpus(
        _stream(spec.seed, _CORPUS), style=preset["style"], dims=preset["dims"], group_weights=group_w,
        min_margin=preset["min_margin"], responses_per_prompt=spec.responses_per_prompt,
        pairs_per_prompt=spec.pairs_per_prompt, survey_size=spec.survey_size,
        test_pool_size=spec.test_pool_size, test_common_fraction=spec.test_common_fraction,
        survey_rule=spec.survey_rule,
    )
    n_seen, n_all = spec.n_users, spec.n_users + spec.n_unseen_users
    group, weights = _users(spec, _stream(spec.seed, _USERS))
    counts = annotation_counts(_stream(spec.seed, _COUNTS), n_seen, spec.annotations_per_user, spec.annotations)

    prompt_ids = _ids("p", len(corpus.prompt_text), width=6)
    response_ids = _ids("r", len(corpus.response_text))
    user_ids = _ids("u", n_all)
    prompts = pa.table({"prompt_id": prompt_ids, "text": pa.array(corpus.prompt_text, pa.string()),
                        **{k: pa.array(v, pa.string()) for k, v in corpus.prompt_extra.items()}})
    responses = pa.table({
        "response_id": response_ids, "prompt_id": prompt_ids.take(pa.array(corpus.response_prompt)),
        "text": pa.array(corpus.response_text, pa.string()),
        **{f"score_{d}": pa.array(corpus.scores[:, i].astype(np.int32)) for i, d in enumerate(corpus.dims)},
        **{k: pa.array(v) for k, v in corpus.response_extra.items()},
    })
    dims = len(preset["dims"])
    users = {
        "user_id": user_ids,
        "split": pa.array(np.repeat(["seen", "unseen"], [n_seen, spec.n_unseen_users])),
        "group": pa.nulls(n_all, pa.string()) if group is None
        else pa.array(np.array(list(preset["groups"]), object)[group], pa.string()),
        "weights": pa.FixedSizeListArray.from_arrays(pa.array(weights.ravel(), pa.float32()), dims),
        "n_train": pa.array(np.r_[counts, np.zeros(spec.n_unseen_users, np.int64)]),
    }
    if group is None:
        users["dominant_dimension"] = pa.array(np.array(preset["dims"], object)[weights.argmax(1)], pa.string())
    write_dataset(root, prompts, responses, pa.table(users), {})
    write_table(_pairs_table(corpus, prompt_ids, response_ids), root / "pairs.parquet")

    annot = _Annotator(user_ids, weights, corpus, prompt_ids, response_ids, spec.label_noise)
    folder = root / "annotations"
    jobs = {  # split: (users [start, stop), stream, per-user counts or a constant, pool)
        "train": (0, n_seen, _TRAIN, counts, corpus.survey),
        "test": (0, n_seen, _TEST, spec.test_pairs_per_user, corpus.test),
        "fewshot": (n_seen, n_all, _FEWSHOT, spec.fewshot_per_user, corpus.survey),
        "test_unseen": (n_seen, n_all, _TEST_UNSEEN, spec.test_pairs_per_unseen_user, corpus.test),
    }
    rows = {}
    if spec.test_pool == "survey":  # test pairs: survey pairs the user did not annotate
        rows.update(_write_split_pairs(annot, spec, folder, ("train", "test"), 0, n_seen, _TRAIN,
                                       counts, spec.test_pairs_per_user, corpus.survey))
        rows.update(_write_split_pairs(annot, spec, folder, ("fewshot", "test_unseen"), n_seen, n_all, _FEWSHOT,
                                       spec.fewshot_per_user, spec.test_pairs_per_unseen_user, corpus.survey))
    else:
        for split, (start, stop, stream, per_user, pool) in jobs.items():
            writer = ShardWriter(folder / split, spec.rows_per_shard)
            for block, lo in enumerate(range(start, stop, BLOCK_USERS)):
                users_blk = np.arange(lo, min(lo + BLOCK_USERS, stop))
                c = _block_counts(per_user, users_blk)
                writer.add(annot.block(_stream(spec.seed, stream, block), users_blk, c, pool))
            rows[split] = writer.close()

    test_pairs = corpus.survey if spec.test_pool == "survey" else corpus.test
    test_kind = np.bincount(test_pairs.kind, minlength=2) / max(len(test_pairs), 1)
    return {
        "preset": spec.preset, "n_seen_users": n_seen, "n_unseen_users": spec.n_unseen_users,
        "n_prompts": len(corpus.prompt_text), "n_responses": len(corpus.response_text),
        "survey_size": len(corpus.survey), "test_pool_size": len(corpus.test),
        "annotations": rows, "mean_train_per_user": float(counts.mean()),
        "test_pool_common_share": float(test_kind[0]),
        "group_sizes": {} if group is None else {
            g: int(n) for g, n in zip(preset["groups"], np.bincount(group[:n_seen], minlength=len(preset["groups"])))},
        "response_words_mean": float(np.mean([len(t.split()) for t in corpus.response_text])),
        "prompt_words_mean": float(np.mean([len(t.split()) for t in corpus.prompt_text])),
    }


def _write_split_pairs(annot: _Annotator, spec: SyntheticSpec, folder: Path, splits: tuple[str, str],
                       start: int, stop: int, stream: int, first, second, pool: PairSet) -> dict:
    """Write two splits over disjoint pairs of ``pool`` for users [start, stop); returns row counts.
    ``first`` / ``second``: counts indexed by global user index, or a constant."""
    writers = [ShardWriter(folder / name, spec.rows_per_shard) for name in splits]
    for block, lo in enumerate(range(start, stop, BLOCK_USERS)):
        users_blk = np.arange(lo, min(lo + BLOCK_USERS, stop))
        tables = annot.block_split(_stream(spec.seed, stream, block), users_blk,
                                   _block_counts(first, users_blk), _block_counts(second, users_blk), pool)
        for writer, table in zip(writers, tables):
            writer.add(table)
    return {name: writer.close() for name, writer in zip(splits, writers)}


def _block_counts(per_user, users_blk: np.ndarray) -> np.ndarray:
    """Counts [n] of a block's users: ``per_user`` indexed by global user index, or a constant."""
    return per_user[users_blk] if isinstance(per_user, np.ndarray) else np.full(users_blk.size, per_user)


def _pairs_table(corpus: Corpus, prompt_ids: pa.Array, response_ids: pa.Array) -> pa.Table:
    """``pairs.parquet`` (extra file): the survey set and the test pool, one row per pair."""
    tables = []
    for pool_name, ps in (("survey", corpus.survey), ("test", corpus.test)):
        tables.append(pa.table({
            "pool": pa.array([pool_name] * len(ps), pa.string()),
            "prompt_id": prompt_ids.take(pa.array(ps.prompt)),
            "response_a_id": response_ids.take(pa.array(ps.a)),
            "response_b_id": response_ids.take(pa.array(ps.b)),
            "kind": pa.array(KIND_NAMES).take(pa.array(ps.kind)),
        }))
    return pa.concat_tables(tables)
