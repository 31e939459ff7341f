"""Resumable generation: prompts in fixed shards, each shard's candidates one Parquet file.

``output_dir/generations/<model>/shard-00003.parquet`` holds every candidate of the prompts of
shard 3 (``prompt_id, candidate, response, n_tokens``); it is written atomically once all of them
have come back, so a killed run leaves only whole shards and a restart generates just the shards
that are missing. ``generations/manifest.json`` records what the shards were generated from (the
prompts' digest, shard size, sampling, models); a restart with other inputs is refused rather than
mixing two runs. One Ray Data pipeline per model streams the pending requests through the backend;
the driver collects rows per shard and prints progress (prompts, tokens/s, ETA) as shards land,
also into ``output_dir/progress.json``.
"""

from __future__ import annotations

import _thread
import hashlib
import json
import shutil
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from copl_ray.config import write_json
from copl_ray.data.dataset import write_table

__all__ = ["GenerationPlan", "ResumeError", "candidate_seed", "check_manifest", "shard_path",
           "pending_shards", "run_generation", "read_generations"]


class ResumeError(RuntimeError):
    """An output folder holding shards of a run with other inputs."""


@dataclass
class GenerationPlan:
    """What one model generates: ``n`` candidates for each prompt, in shards of ``shard_size``."""

    model: str
    model_path: str
    n: int
    shard_size: int
    seed: int
    prompts: pa.Table  # prompt_id, text
    stats: dict = field(default_factory=dict)

    @property
    def n_shards(self) -> int:
        return -(-self.prompts.num_rows // self.shard_size)

    def shard_rows(self, k: int) -> pa.Table:
        return self.prompts.slice(k * self.shard_size, self.shard_size)


def candidate_seed(seed: int, model: str, prompt_id: str, candidate: int) -> int:
    """The sampling seed of one candidate: the same request always gets the same seed."""
    h = hashlib.blake2b(f"{seed}\x00{model}\x00{prompt_id}\x00{candidate}".encode(), digest_size=4)
    return int.from_bytes(h.digest(), "little") & 0x7FFFFFFF


def shard_path(out: Path, model: str, k: int) -> Path:
    return out / "generations" / model / f"shard-{k:05d}.parquet"


def check_manifest(out: Path, manifest: dict, resume: bool) -> None:
    """Start fresh (``resume=False``: earlier shards removed) or check that the shards already in
    ``out/generations`` came from the same inputs.

    Raises:
        ResumeError: naming the first field that differs.
    """
    gen = out / "generations"
    path = gen / "manifest.json"
    if not resume and gen.exists():
        shutil.rmtree(gen)
    if path.is_file():
        old = json.loads(path.read_text())
        for key in manifest:
            if key == "models":
                continue
            if old.get(key) != manifest[key]:
                raise ResumeError(f"{gen}: shards were generated with another {key} ({old.get(key)!r}, now"
                                  f" {manifest[key]!r}): use a new output_dir, or resume=false to start over")
        for name, what in manifest["models"].items():
            if name in old.get("models", {}) and old["models"][name] != what:
                raise ResumeError(f"{gen}: model {name!r} was {old['models'][name]!r}, now {what!r}: use a new"
                                  " output_dir, or resume=false to start over")
        manifest = dict(manifest, models={**old.get("models", {}), **manifest["models"]})
    write_json(manifest, path)


def pending_shards(out: Path, plan: GenerationPlan) -> list[int]:
    """Shards of ``plan`` without a file yet."""
    return [k for k in range(plan.n_shards) if not shard_path(out, plan.model, k).is_file()]


def _requests(plan: GenerationPlan, shards: list[int]) -> pa.Table:
    cols = defaultdict(list)
    for k in shards:
        rows = plan.shard_rows(k)
        for pid, text in zip(rows.column("prompt_id").to_pylist(), rows.column("text").to_pylist()):
            for c in range(plan.n):
                cols["prompt_id"].append(pid)
                cols["prompt"].append(text)
                cols["shard"].append(k)
                cols["candidate"].append(c)
                cols["seed"].append(candidate_seed(plan.seed, plan.model, pid, c))
    return pa.table({"prompt_id": pa.array(cols["prompt_id"], pa.string()),
                     "prompt": pa.array(cols["prompt"], pa.string()),
                     "shard": pa.array(cols["shard"], pa.int64()),
                     "candidate": pa.array(cols["candidate"], pa.int64()),
                     "seed": pa.array(cols["seed"], pa.int64())})


class _Deadline:
    """Interrupts the main thread after ``seconds`` (a hung engine would otherwise wait forever)."""

    def __init__(self, seconds: float):
        self.seconds, self.fired = seconds, False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self):
        self.fired = True
        _thread.interrupt_main()

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._timer.cancel()
        if self.fired and exc_type is KeyboardInterrupt:
            raise TimeoutError(f"generation did not finish within {self.seconds:.0f} s (timeout_s)") from None
        return False


def run_generation(out: Path, plan: GenerationPlan, generate, timeout_s: float, log=print) -> dict:
    """Generate the pending shards of ``plan`` with ``generate(requests_dataset) -> candidates
    dataset`` (a backend, backends.py) and write each shard as it completes.

    Returns:
        {"shards_total", "shards_skipped", "shards_written", "candidates", "tokens", "seconds",
        "tokens_per_s", "first_shard_s", "tokens_per_s_after_first_shard"} for this model in this
        run (seconds from the pipeline's start, so they include model loading).
    """
    import ray

    todo = pending_shards(out, plan)
    stats = {"shards_total": plan.n_shards, "shards_skipped": plan.n_shards - len(todo), "shards_written": 0,
             "candidates": 0, "tokens": 0, "seconds": 0.0, "tokens_per_s": None}
    if stats["shards_skipped"]:
        log(f"build_survey: {plan.model}: {stats['shards_skipped']}/{plan.n_shards} shards already generated, skipped")
    if not todo:
        return stats
    requests = _requests(plan, todo)
    expected = {k: plan.shard_rows(k).num_rows * plan.n for k in todo}
    n_prompts = sum(plan.shard_rows(k).num_rows for k in todo)
    # Blocks of 32 requests, so results stream back shard by shard. Made here, not by a
    # repartition: that is a task needing a whole CPU, which the engine's stages may hold (hang).
    ds = ray.data.from_arrow([requests.slice(i, 32) for i in range(0, requests.num_rows, 32)])
    buffers: dict[int, list[pa.Table]] = defaultdict(list)
    counts: dict[int, int] = defaultdict(int)
    t0 = time.perf_counter()
    done_prompts = 0
    with _Deadline(timeout_s):
        for batch in generate(ds).iter_batches(batch_format="pyarrow", batch_size=None):
            for k in set(batch.column("shard").to_pylist()):
                part = batch.filter(pc.equal(batch.column("shard"), k))
                buffers[k].append(part)
                counts[k] += part.num_rows
                if counts[k] < expected[k]:
                    continue
                table = pa.concat_tables(buffers.pop(k)).select(["prompt_id", "candidate", "response", "n_tokens"])
                table = table.sort_by([("prompt_id", "ascending"), ("candidate", "ascending")])
                write_table(table, shard_path(out, plan.model, k))
                tokens = int(pc.sum(table.column("n_tokens")).as_py() or 0)
                if not stats["shards_written"]:  # engine start-up + the first shard
                    stats["first_shard_s"] = round(time.perf_counter() - t0, 3)
                    first_tokens = tokens
                stats["shards_written"] += 1
                stats["candidates"] += table.num_rows
                stats["tokens"] += tokens
                done_prompts += plan.shard_rows(k).num_rows
                elapsed = time.perf_counter() - t0
                rate = stats["tokens"] / elapsed if elapsed > 0 else 0.0
                eta = elapsed / done_prompts * (n_prompts - done_prompts)
                progress = {"model": plan.model, "shards_done": stats["shards_skipped"] + stats["shards_written"],
                            "shards_total": plan.n_shards, "prompts_done_this_run": done_prompts,
                            "prompts_this_run": n_prompts, "tokens": stats["tokens"],
                            "tokens_per_s": round(rate, 2), "eta_s": round(eta, 1)}
                write_json(progress, out / "progress.json")
                log(f"build_survey: {plan.model}: shard {k} written ({progress['shards_done']}/{plan.n_shards} shards,"
                    f" {done_prompts}/{n_prompts} prompts this run, {rate:.1f} tok/s, eta {eta:.0f} s)")
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    stats["tokens_per_s"] = round(stats["tokens"] / stats["seconds"], 2) if stats["seconds"] else None
    steady = stats["seconds"] - stats.get("first_shard_s", 0.0)
    if stats["shards_written"] > 1 and steady > 0:  # after start-up: the rate a long run sees
        stats["tokens_per_s_after_first_shard"] = round((stats["tokens"] - first_tokens) / steady, 2)
    if stats["shards_written"] != len(todo):
        missing = sorted(set(todo) - {k for k in todo if shard_path(out, plan.model, k).is_file()})
        raise RuntimeError(f"build_survey: {plan.model}: shards {missing} came back incomplete"
                           f" ({dict((k, counts[k]) for k in missing)} of {dict((k, expected[k]) for k in missing)} rows)")
    return stats


def read_generations(out: Path, plan: GenerationPlan) -> pa.Table:
    """All candidates of ``plan`` from its shard files, with a ``model`` column."""
    tables = [pq.read_table(shard_path(out, plan.model, k)) for k in range(plan.n_shards)]
    table = pa.concat_tables(tables)
    return table.append_column("model", pa.array([plan.model] * table.num_rows, pa.string()))
