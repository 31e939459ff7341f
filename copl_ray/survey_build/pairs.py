"""From candidates to survey pairs, per prompt: length limits, de-duplication, pair choice.

1. Length limits: candidates outside ``[min_words, max_words]`` (or over ``max_chars``) are dropped.
2. Exact duplicates (same text after lower-casing and collapsing white space) are dropped, the
   first (model order, then candidate index) kept.
3. Near duplicates: a candidate whose MiniLM cosine to an already kept candidate of the prompt
   reaches ``near_duplicate_threshold`` is dropped (greedy, in the same order).
4. Pairs: every pair of the kept candidates, or at most ``max_pairs_per_prompt`` of them: at random,
   or (``prefer=informative``) the pairs most different in length and embedding. Each pair gets
   ``length_gap = |log(1 + words_a) - log(1 + words_b)|`` scaled to [0, 1] over the whole survey,
   ``embedding_distance = (1 - cos) / 2`` and ``informativeness = w * length_gap + (1 - w) *
   embedding_distance`` (``w = length_weight``). Near-identical pairs tell little about a user
   (paper, Limitations: uninformative common pairs hurt new-user adaptation).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from copl_ray.data.importers.common import stable_id
from copl_ray.survey_build.spec import PairSpec

__all__ = ["CandidateFilter", "filter_candidates", "near_duplicates", "build_pairs", "response_ids"]

_WS = re.compile(r"\s+")


@dataclass
class CandidateFilter:
    """Per-candidate outcome: ``keep`` [N] bool and ``reason`` [N] (None where kept)."""

    keep: np.ndarray
    reason: np.ndarray


def response_ids(candidates: pa.Table) -> list[str]:
    """Stable ids of candidates (prompt, model, candidate index): the same run gives the same ids."""
    cols = [candidates.column(c).to_pylist() for c in ("prompt_id", "model", "candidate")]
    return [stable_id("resp", p, m, str(c)) for p, m, c in zip(*cols)]


def filter_candidates(candidates: pa.Table, spec: PairSpec) -> CandidateFilter:
    """Steps 1-2 of the module docstring on ``candidates`` (prompt_id, model, candidate, response)."""
    texts = candidates.column("response").to_pylist()
    pids = candidates.column("prompt_id").to_pylist()
    keep = np.ones(len(texts), bool)
    reason = np.full(len(texts), None, object)
    seen: set[tuple[str, str]] = set()
    for i, (pid, text) in enumerate(zip(pids, texts)):
        words = len(text.split())
        norm = _WS.sub(" ", text.strip().lower())
        if not norm:
            why = "empty"
        elif words < spec.min_words:
            why = "too_short"
        elif (spec.max_words is not None and words > spec.max_words) or (
                spec.max_chars is not None and len(text) > spec.max_chars):
            why = "too_long"
        elif spec.dedup and (pid, norm) in seen:
            why = "duplicate"
        else:
            seen.add((pid, norm))
            continue
        keep[i], reason[i] = False, why
    return CandidateFilter(keep, reason)


def _rows_by_prompt(prompt_ids: list[str]) -> dict[str, list[int]]:
    """{prompt_id: its row indices in order}, prompts in first-appearance order."""
    by_prompt: dict[str, list[int]] = {}
    for i, pid in enumerate(prompt_ids):
        by_prompt.setdefault(pid, []).append(i)
    return by_prompt


def near_duplicates(prompt_ids: list[str], emb: np.ndarray, threshold: float) -> np.ndarray:
    """[N] bool: rows whose cosine to an earlier kept row of the same prompt is >= ``threshold``.
    ``emb`` [N, d] unit vectors, rows in keep-priority order."""
    drop = np.zeros(len(prompt_ids), bool)
    for rows in _rows_by_prompt(prompt_ids).values():
        kept: list[int] = []
        for i in rows:
            if kept and float(np.max(emb[kept] @ emb[i])) >= threshold:
                drop[i] = True
            else:
                kept.append(i)
    return drop


def build_pairs(responses: pa.Table, emb: np.ndarray, spec: PairSpec) -> pa.Table:
    """Survey pairs (``pairs.parquet`` rows, ``pool="survey"``) of the kept ``responses``
    (response_id, prompt_id, model, n_words) with their unit embeddings ``emb`` [N, d]."""
    rng = np.random.default_rng(spec.seed)
    pids = responses.column("prompt_id").to_pylist()
    rids = responses.column("response_id").to_pylist()
    models = responses.column("model").to_pylist()
    loglen = np.log1p(np.asarray(responses.column("n_words").to_pylist(), np.float64))
    by_prompt = _rows_by_prompt(pids)
    a_idx, b_idx = [], []
    for rows in by_prompt.values():
        for a, b in itertools.combinations(rows, 2):
            a_idx.append(a)
            b_idx.append(b)
    a_idx, b_idx = np.asarray(a_idx, np.int64), np.asarray(b_idx, np.int64)
    gap = np.abs(loglen[a_idx] - loglen[b_idx])
    gap = gap / gap.max() if gap.size and gap.max() > 0 else gap
    dist = (1.0 - np.einsum("nd,nd->n", emb[a_idx], emb[b_idx])) / 2.0 if a_idx.size else np.zeros(0)
    score = spec.length_weight * gap + (1.0 - spec.length_weight) * dist
    keep = np.ones(a_idx.size, bool)
    if spec.max_pairs_per_prompt is not None and a_idx.size:
        keep[:] = False
        start = 0
        for rows in by_prompt.values():  # the order the pairs were listed in
            n = len(rows) * (len(rows) - 1) // 2
            span = np.arange(start, start + n)
            start += n
            if n <= spec.max_pairs_per_prompt:
                keep[span] = True
            elif spec.prefer == "random":
                keep[rng.choice(span, spec.max_pairs_per_prompt, replace=False)] = True
            else:  # most informative first; random order among equal scores
                order = np.lexsort((rng.random(n), -score[span]))
                keep[span[order[: spec.max_pairs_per_prompt]]] = True
    a_idx, b_idx = a_idx[keep], b_idx[keep]
    return pa.table({
        "pool": pa.array(["survey"] * a_idx.size, pa.string()),
        "prompt_id": pa.array([pids[a] for a in a_idx], pa.string()),
        "response_a_id": pa.array([rids[a] for a in a_idx], pa.string()),
        "response_b_id": pa.array([rids[b] for b in b_idx], pa.string()),
        "kind": pa.nulls(a_idx.size, pa.string()),
        "model_a": pa.array([models[a] for a in a_idx], pa.string()),
        "model_b": pa.array([models[b] for b in b_idx], pa.string()),
        "length_gap": pa.array(gap[keep], pa.float32()),
        "embedding_distance": pa.array(dist[keep], pa.float32()),
        "informativeness": pa.array(score[keep], pa.float32()),
    })
