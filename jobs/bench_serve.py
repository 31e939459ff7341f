"""Benchmark the Serve app on loopback; prints figures and ratios, never asserts.

    scripts/loopback.sh .venv/bin/python jobs/bench_serve.py gnn_dir=G reward_dir=R [dataset=D] output_dir=O

First the reward model alone, in this process before Serve starts, at batch 1, 8 and
``max_batch_size``: ms per request, and so the most any batching can save on this device (on a CPU
a forward's cost grows with its tokens; on a GPU it barely does). Then it starts the app of
CONTRACT section 4 twice in one local Ray: batched (``@serve.batch``,
``max_batch_size``) and unbatched (``max_batch_size=1``), on 127.0.0.1 only. Closed-loop aiohttp
clients (keep-alive) each POST ``/v1/score`` (one seen user, one prompt, ``responses_per_request``
responses) for ``seconds_per_level`` at each concurrency of ``concurrency``: requests/s and
p50/p99 latency. Then onboarding latency (``onboard_requests`` sequential ``POST /v1/users`` of
``annotations_per_user`` pairs, then the same number from 8 clients), the same closed loop at the
Scorer's handle (no HTTP: batching's effect on the model replica alone), and a sustained mixed run
(score, compare, get_reward, survey) of ``sustained_seconds`` that counts every non-2xx and
transport error. Bounded: each phase has a deadline; the app is deleted at the end.
Writes ``metrics.json`` and ``config.yaml`` into ``output_dir``.
"""

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from pydantic import Field  # noqa: E402

from copl_ray.config import JobConfig, parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.runtime import init_ray  # noqa: E402


class BenchServeConfig(JobConfig):
    """jobs/bench_serve.py: throughput and latency of the Serve app, batched vs unbatched."""

    gnn_dir: str
    reward_dir: str
    dataset: str | None = None
    output_dir: str = "runs/bench_serve"
    concurrency: list[int] = Field(default_factory=lambda: [1, 8, 32])
    seconds_per_level: float = Field(10.0, gt=0)
    model_seconds_per_size: float = Field(5.0, gt=0, description=(
        "the model alone (no Serve) at batch 1, 8 and max_batch_size: the device's ceiling on batching's gain"))
    responses_per_request: int = Field(1, ge=1)
    max_batch_size: int = Field(32, ge=2)
    onboard_requests: int = Field(40, ge=1)
    annotations_per_user: int = Field(4, ge=1)
    sustained_seconds: float = Field(60.0, gt=0)
    sustained_clients: int = Field(8, ge=1)
    port: int = Field(8000, ge=1)
    metrics_port: int = Field(9109, ge=1, description="Ray's Prometheus export (scraped once at the end)")
    num_cpus: int = Field(2, ge=1, description="local Ray CPUs (replicas take 0 CPUs each)")
    torch_threads: int | None = Field(1, ge=1, description=(
        "scorer intra-op threads; 1 on a shared 2-core machine, where 2 OpenMP threads spin-wait "
        "(a MiniLM forward of 1 sequence took 4.1 s with 2 threads, 0.2 s with 1, at load ~40)"))
    seed: int = 0


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q)) if xs else float("nan")


async def _closed_loop(url: str, make_body, clients: int, seconds: float) -> dict:
    """``clients`` loops POSTing back to back for ``seconds``: req/s, p50/p99 ms, errors."""
    import aiohttp

    lat, errors = [], []
    stop = time.perf_counter() + seconds

    async def one(session, k):
        rng = random.Random(k)
        while time.perf_counter() < stop:
            path, body = make_body(rng)
            t = time.perf_counter()
            try:
                async with session.post(url + path, json=body) as r:
                    await r.read()
                    if r.status >= 300:
                        errors.append(f"{path} {r.status}")
                        continue
            except Exception as exc:  # noqa: BLE001  (a transport error is a counted error)
                errors.append(f"{path} {type(exc).__name__}")
                continue
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=clients)) as session:
        await asyncio.gather(*(one(session, k) for k in range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "error_kinds": sorted(set(errors))[:5],
            "req_per_s": len(lat) / wall, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}


async def _handle_loop(handle, make_item, clients: int, seconds: float) -> dict:
    """The same closed loop straight to the Scorer's handle (no HTTP proxy, no ingress): what
    batching does for the model replica itself."""
    lat, errors = [], 0
    stop = time.perf_counter() + seconds

    async def one(k):
        nonlocal errors
        rng = random.Random(k)
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                await handle.score.remote(make_item(rng))
            except Exception:  # noqa: BLE001
                errors += 1
                continue
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat), "errors": errors, "req_per_s": len(lat) / wall,
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}


def _model_ceiling(reward_dir: str, make_item, sizes: list[int], torch_threads: int | None,
                   seconds: float) -> dict:
    """The reward model alone, in this process (no Serve): ms per forward and per request at each
    batch size. Its best per-request gain over batch 1 bounds what any batching can give here."""
    import torch

    from copl_ray.serving.core import ScoringCore

    if torch_threads:
        torch.set_num_threads(torch_threads)
    core = ScoringCore(reward_dir)
    rng = random.Random(0)
    items = [make_item(rng) for _ in range(max(sizes))]
    core.score(items[:2])  # first forward: allocations, lazy init
    out = {}
    for b in sizes:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            core.score(items[:b])
            n += 1
        per_forward = (time.perf_counter() - t0) / n
        out[f"batch{b}"] = {"ms_per_forward": 1000 * per_forward, "ms_per_request": 1000 * per_forward / b}
        print(f"model alone, batch {b:3d}: {1000 * per_forward:7.1f} ms per forward,"
              f" {1000 * per_forward / b:6.1f} ms per request", flush=True)
    best = min(v["ms_per_request"] for v in out.values())
    out["ceiling_ratio"] = out[f"batch{sizes[0]}"]["ms_per_request"] / best
    print(f"model alone: batching can save at most {out['ceiling_ratio']:.2f}x per request on this device", flush=True)
    return out


def _samples(dataset: str, gnn_dir: str, seed: int):
    from copl_ray.data.dataset import read_table
    from copl_ray.embeddings import read_embeddings

    users = read_embeddings(Path(gnn_dir) / "users.parquet", "user_id")[0].to_pylist()
    prompts = read_table(dataset, "prompts")
    ptext = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("text").to_pylist()))
    resp = read_table(dataset, "responses")
    rows = list(zip(resp.column("response_id").to_pylist(), resp.column("prompt_id").to_pylist(),
                    resp.column("text").to_pylist()))
    rng = random.Random(seed)
    rng.shuffle(rows)
    return users, ptext, rows[:2000]


def main(argv=None) -> dict:
    cfg = parse_job_args(BenchServeConfig, argv)
    from ray import serve

    from copl_ray.serving.app import AppArgs, build_app
    from copl_ray.serving.core import dataset_of

    dataset = cfg.dataset or dataset_of(cfg.gnn_dir)
    users, ptext, rows = _samples(dataset, cfg.gnn_dir, cfg.seed)
    by_prompt: dict = {}
    for rid, pid, text in rows:
        by_prompt.setdefault(pid, []).append((rid, text))
    k = cfg.responses_per_request

    def score_body(rng):
        rid, pid, text = rows[rng.randrange(len(rows))]
        resp = [text] + [rows[rng.randrange(len(rows))][2] for _ in range(k - 1)]
        return "/v1/score", {"user_id": users[rng.randrange(len(users))], "prompt": ptext[pid], "responses": resp}

    from copl_ray.embeddings import read_embeddings
    from copl_ray.serving.core import ScoreItem

    _, emb = read_embeddings(Path(cfg.gnn_dir) / "users.parquet", "user_id")

    def score_item(rng):
        _, body = score_body(rng)
        return ScoreItem(emb[rng.randrange(len(emb))], body["prompt"], body["responses"])

    metrics: dict = {"responses_per_request": k, "max_batch_size": cfg.max_batch_size, "n_users": len(users)}
    # Before the apps start, so nothing else runs: the device's own limit on batching's gain.
    metrics["model_alone"] = _model_ceiling(cfg.reward_dir, score_item, [1, 8, cfg.max_batch_size],
                                            cfg.torch_threads, cfg.model_seconds_per_size)

    init_ray(num_cpus=cfg.num_cpus, include_dashboard=False, _metrics_export_port=cfg.metrics_port)
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    base = {"gnn_dir": cfg.gnn_dir, "reward_dir": cfg.reward_dir, "dataset": dataset,
            "scorer": {"num_cpus": 0, "max_ongoing_requests": max(64, 2 * cfg.max_batch_size),
                       "max_batch_size": cfg.max_batch_size, "batch_wait_timeout_s": 0.005,
                       "torch_threads": cfg.torch_threads},
            "onboarding": {"num_cpus": 0, "min_replicas": 1, "max_replicas": 2}}
    serve.start(http_options={"host": "127.0.0.1", "port": cfg.port})
    url = f"http://127.0.0.1:{cfg.port}"
    t_start = time.perf_counter()
    serve.run(build_app(AppArgs.model_validate({**base, "store_path": str(tmp / "batched.db")})),
              name="batched", route_prefix="/b")
    unbatched = {**base, "scorer": {**base["scorer"], "max_batch_size": 1}}
    serve.run(build_app(AppArgs.model_validate({**unbatched, "store_path": str(tmp / "unbatched.db")})),
              name="unbatched", route_prefix="/u")
    metrics["startup_seconds"] = time.perf_counter() - t_start
    print(f"bench_serve: both apps up in {metrics['startup_seconds']:.1f} s", flush=True)

    async def run_all():
        out = {}
        await _closed_loop(url + "/b", score_body, 4, 2.0)  # warm-up (first forwards, connections)
        await _closed_loop(url + "/u", score_body, 4, 2.0)
        for name, prefix in (("batched", "/b"), ("unbatched", "/u")):
            levels = cfg.concurrency if name == "batched" else [max(cfg.concurrency)]
            for c in levels:
                res = await _closed_loop(url + prefix, score_body, c, cfg.seconds_per_level)
                out[f"score/{name}/c{c}"] = res
                print(f"score {name:9s} {c:3d} clients: {res['req_per_s']:7.1f} req/s  p50 {res['p50_ms']:7.1f} ms"
                      f"  p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}", flush=True)
        c = max(cfg.concurrency)
        for name in ("batched", "unbatched"):
            handle = serve.get_deployment_handle("Scorer", app_name=name)
            res = await _handle_loop(handle, score_item, c, cfg.seconds_per_level)
            out[f"scorer_handle/{name}/c{c}"] = res
            print(f"scorer handle {name:9s} {c:3d} callers: {res['req_per_s']:7.1f} req/s  p50 {res['p50_ms']:7.1f} ms"
                  f"  p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}", flush=True)
        return out

    metrics.update(asyncio.run(run_all()))
    c = max(cfg.concurrency)
    ratio = metrics[f"score/batched/c{c}"]["req_per_s"] / max(metrics[f"score/unbatched/c{c}"]["req_per_s"], 1e-9)
    metrics[f"batched_over_unbatched_c{c}"] = ratio
    print(f"batched / unbatched throughput at {c} clients: {ratio:.2f}x", flush=True)
    h = metrics[f"scorer_handle/batched/c{c}"]["req_per_s"] / max(
        metrics[f"scorer_handle/unbatched/c{c}"]["req_per_s"], 1e-9)
    metrics[f"scorer_handle_batched_over_unbatched_c{c}"] = h
    print(f"batched / unbatched at the Scorer's handle, {c} callers: {h:.2f}x", flush=True)
    serve.delete("unbatched")

    # Onboarding latency: sequential, then 8 clients.
    survey_pairs = [(a[0], b[0]) for items in by_prompt.values() for a, b in zip(items, items[1:])]
    import requests

    def onboard(i):
        rng = random.Random(i)
        ann = [dict(zip(("chosen_id", "rejected_id"), rng.sample(p, 2)))
               for p in rng.sample(survey_pairs, min(cfg.annotations_per_user, len(survey_pairs)))]
        t = time.perf_counter()
        r = requests.post(f"{url}/b/v1/users", json={"user_id": f"bench{i}", "annotations": ann}, timeout=60)
        return time.perf_counter() - t, r.status_code

    seq = [onboard(i) for i in range(cfg.onboard_requests)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        par = list(pool.map(onboard, range(cfg.onboard_requests, 2 * cfg.onboard_requests)))
    for name, res in (("sequential", seq), ("8_clients", par)):
        lat = [t for t, s in res if s == 201]
        metrics[f"onboard/{name}"] = {"requests": len(res), "ok": len(lat), "p50_ms": _pct(lat, 50),
                                      "p99_ms": _pct(lat, 99)}
        print(f"onboard {name:10s}: p50 {_pct(lat, 50):6.1f} ms  p99 {_pct(lat, 99):6.1f} ms  "
              f"ok {len(lat)}/{len(res)}", flush=True)

    # Sustained mixed traffic.
    onboarded = [f"bench{i}" for i in range(2 * cfg.onboard_requests)]

    def mixed(rng):
        x = rng.random()
        path, body = score_body(rng)
        if x < 0.15:
            body["user_id"] = onboarded[rng.randrange(len(onboarded))]
        elif x < 0.3:
            return "/v1/compare", {"user_id": body["user_id"], "prompt": body["prompt"],
                                   "response_a": body["responses"][0], "response_b": rows[rng.randrange(len(rows))][2]}
        elif x < 0.45:
            return f"/v1/users/{body['user_id']}/get_reward", {
                "query": [f"Human: {body['prompt']} Assistant: {body['responses'][0]}</s>"]}
        elif x < 0.5:
            return "/v1/survey", {"answers": [], "n": 4}
        return path, body

    sus = asyncio.run(_closed_loop(url + "/b", mixed, cfg.sustained_clients, cfg.sustained_seconds))
    metrics["sustained"] = {**sus, "seconds": cfg.sustained_seconds}
    print(f"sustained {cfg.sustained_seconds:.0f} s, {cfg.sustained_clients} clients (score/compare/get_reward/"
          f"survey): {sus['requests']} ok, {sus['errors']} errors, {sus['req_per_s']:.1f} req/s, "
          f"p99 {sus['p99_ms']:.1f} ms", flush=True)
    health = requests.get(f"{url}/b/v1/health", timeout=30).json()
    metrics["scorer_stats"] = health["scorer"]
    print(f"scorer: {health['scorer']}", flush=True)
    try:  # Serve's own ray_serve_* and ours (ray.serve.metrics) on the Prometheus endpoint
        text = requests.get(f"http://127.0.0.1:{cfg.metrics_port}/metrics", timeout=10).text
        names = sorted({line.split("{")[0] for line in text.splitlines()
                        if line.startswith(("ray_copl_", "ray_serve_num_http_requests"))})
    except requests.RequestException as exc:
        names = [f"scrape failed: {exc}"]
    metrics["prometheus"] = names
    print(f"prometheus: {names}", flush=True)
    serve.delete("batched")
    serve.shutdown()
    write_resolved_config(cfg, cfg.output_dir)
    write_metrics(metrics, cfg.output_dir)
    return metrics


if __name__ == "__main__":
    main()
