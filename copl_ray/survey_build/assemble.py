"""Candidates -> the dataset files: ``prompts.parquet``, ``responses.parquet``, ``pairs.parquet``.

``responses.parquet`` holds the candidates that survive the length limits and de-duplication
(contract columns plus ``model``, ``candidate``, ``n_tokens``, ``n_words``); every candidate and
why it was dropped is in ``generations/candidates.parquet``. Embeddings are computed through Ray
Data (a MiniLM actor) and written nowhere: pairs only need them here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from copl_ray.data.dataset import write_table
from copl_ray.survey_build.embed import MiniLMEmbedder
from copl_ray.survey_build.pairs import build_pairs, filter_candidates, near_duplicates, response_ids
from copl_ray.survey_build.spec import PairSpec

__all__ = ["embed_responses", "assemble_survey"]


def embed_responses(ids: list[str], texts: list[str], batch_size: int, num_cpus: float = 1.0) -> np.ndarray:
    """[N, 384] MiniLM embeddings of ``texts`` [N], computed by a Ray Data actor, in ``ids`` order."""
    import ray

    if not ids:
        return np.zeros((0, 384), np.float32)
    ds = ray.data.from_arrow(pa.table({"response_id": ids, "response": texts}))
    out = ds.map_batches(MiniLMEmbedder, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1),
                         num_cpus=num_cpus).to_pandas()
    by_id = dict(zip(out["response_id"], out["embedding"]))
    return np.stack([np.asarray(by_id[i], np.float32) for i in ids])


def assemble_survey(out: Path, prompts: pa.Table, candidates: pa.Table, spec: PairSpec,
                    embed_cpus: float = 1.0) -> dict:
    """Write the survey dataset files into ``out`` from ``candidates`` (prompt_id, model,
    candidate, response, n_tokens; model order = keep priority) and return counts."""
    candidates = candidates.append_column("response_id", pa.array(response_ids(candidates), pa.string()))
    n_words = [len(t.split()) for t in candidates.column("response").to_pylist()]
    candidates = candidates.append_column("n_words", pa.array(n_words, pa.int64()))
    filt = filter_candidates(candidates, spec)
    kept = np.flatnonzero(filt.keep)
    emb = embed_responses([candidates.column("response_id")[i].as_py() for i in kept],
                          [candidates.column("response")[i].as_py() for i in kept], spec.embed_batch_size, embed_cpus)
    if spec.near_duplicate_threshold is not None:
        near = near_duplicates([candidates.column("prompt_id")[i].as_py() for i in kept], emb,
                               spec.near_duplicate_threshold)
        filt.keep[kept[near]] = False
        filt.reason[kept[near]] = "near_duplicate"
        kept, emb = kept[~near], emb[~near]
    write_table(candidates.append_column("dropped", pa.array(filt.reason, pa.string())),
                out / "generations" / "candidates.parquet")
    sel = candidates.take(pa.array(kept, pa.int64()))
    responses = pa.table({
        "response_id": sel.column("response_id"), "prompt_id": sel.column("prompt_id"),
        "text": sel.column("response"), "model": sel.column("model"),
        "candidate": sel.column("candidate"), "n_tokens": sel.column("n_tokens"), "n_words": sel.column("n_words"),
    })
    pairs = build_pairs(responses, emb, spec)
    write_table(prompts.select(["prompt_id", "text"]), out / "prompts.parquet")
    write_table(responses, out / "responses.parquet")
    write_table(pairs, out / "pairs.parquet")
    per_prompt = Counter(pairs.column("prompt_id").to_pylist())
    return {
        "candidates": candidates.num_rows, "responses": responses.num_rows, "pairs": pairs.num_rows,
        "dropped": dict(Counter(r for r in filt.reason if r is not None)),
        "prompts_without_pairs": prompts.num_rows - len(per_prompt),
        "mean_words": float(np.mean(sel.column("n_words").to_numpy())) if sel.num_rows else None,
        "mean_informativeness": float(np.mean(pairs.column("informativeness").to_numpy())) if pairs.num_rows else None,
    }
