"""Benchmark unseen-user adaptation; prints figures and ratios (never asserts on time).

    nice python jobs/bench_adapt.py part=latency                      # 1,000,000-user graph
    python jobs/bench_adapt.py part=accuracy dataset=D gnn_dir=G      # D from make_synthetic

(a) ``latency``: a generated graph of ``n_users`` seen users (4 preference groups, a survey of
    ``n_survey_pairs`` pairs, ``per_user`` annotations each, labelled by the group's attribute;
    random group-structured embeddings, no trained GNN needed). Single-user `adapt_one` latency
    p50/p99 over ``n_requests`` new users with ``per_user`` annotations (response-id lookup
    included), the same for single-user User Opt (50 Adam steps), and batch throughput (users/s)
    of `adapt_batch` (CoPL and Naive Avg) and User Opt over ``n_batch_users`` new users.
(b) ``accuracy``: on a synthetic dataset and its trained gnn_dir. Users are answered by the
    generator's true weights (`copl_ray.adapt.oracle`), so every unseen user (repeated
    ``repeat`` times with fresh pairs) gives n in ``given_counts`` survey pairs and is scored on
    ``eval_pairs`` other survey pairs (in the graph, never given). CoPL, Naive Avg and User Opt are
    scored side by side for every n; the reference is the GNN accuracy of ``n_seen_ref`` seen users
    on ``eval_pairs`` survey pairs they did not annotate (the same kind of pair).
"""

import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import torch  # noqa: E402
from pydantic import Field  # noqa: E402

from copl_ray.adapt import AdaptParams, GNNArtifacts, adapt_batch, adapt_one, load_gnn_artifacts  # noqa: E402
from copl_ray.adapt.baselines import naive_avg, user_opt  # noqa: E402
from copl_ray.adapt.evaluation import pair_correct, plot_curves  # noqa: E402
from copl_ray.adapt.oracle import SyntheticOracle  # noqa: E402
from copl_ray.config import JobConfig, parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.dataset import read_annotations, read_table  # noqa: E402
from copl_ray.graph.signed_graph import SignedGraph  # noqa: E402


class BenchAdaptConfig(JobConfig):
    """jobs/bench_adapt.py: adaptation latency/throughput at 1M users, and accuracy vs baselines."""

    output_dir: str = "runs/bench_adapt"
    part: Literal["all", "latency", "accuracy"] = "all"
    adapt: AdaptParams = Field(default_factory=AdaptParams)
    seed: int = 0
    threads: int = Field(1, ge=1, description=(
        "torch intra-op threads; 1 because on a loaded 2-core machine more threads than free cores "
        "made the batch paths 4-40x slower (measured; OpenMP workers wait on each other)"))
    # (a)
    n_users: int = Field(1_000_000, ge=10)
    n_survey_pairs: int = Field(26_000, ge=10)
    per_user: int = Field(16, ge=1)
    dim: int = Field(64, ge=1)
    n_requests: int = Field(1000, ge=10)
    n_user_opt_requests: int = Field(200, ge=10)
    n_batch_users: int = Field(5000, ge=1)
    # (b)
    dataset: str | None = None
    gnn_dir: str | None = None
    given_counts: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    eval_pairs: int = Field(50, ge=1)
    repeat: int = Field(10, ge=1, description="virtual copies of each unseen user (fresh pairs)")
    n_seen_ref: int = Field(2000, ge=1)
    user_opt_lr: float = Field(0.05, gt=0)


# ----------------------------------------------------------------------------- (a) latency


def synthetic_artifacts(cfg: BenchAdaptConfig) -> tuple[GNNArtifacts, np.ndarray, np.ndarray, np.ndarray]:
    """A ``n_users`` graph with 4 groups; returns (artifacts, survey a [S], survey b [S], attr [R, 4])."""
    rng = np.random.default_rng(cfg.seed)
    S, R = cfg.n_survey_pairs, 2 * cfg.n_survey_pairs
    a, b = np.arange(0, R, 2), np.arange(1, R, 2)
    attr = rng.integers(1, 6, (R, 4))
    attr[b, rng.integers(0, 4, S)] += 10  # no exact ties on the decisive attribute of a pair's b side
    group = rng.integers(0, 4, cfg.n_users)
    user = np.repeat(np.arange(cfg.n_users), cfg.per_user)
    item = rng.integers(0, S, user.size)
    g = group[user]
    a_wins = attr[a[item], g] > attr[b[item], g]
    chosen, rejected = np.where(a_wins, a[item], b[item]), np.where(a_wins, b[item], a[item])
    graph = SignedGraph.from_triples(user, chosen, rejected, cfg.n_users, R)
    del user, item, g, chosen, rejected
    gen = torch.Generator().manual_seed(cfg.seed)
    centers = torch.randn(4, cfg.dim, generator=gen)
    e_user = centers[torch.from_numpy(group)] + 0.5 * torch.randn(cfg.n_users, cfg.dim, generator=gen)
    e_resp = 0.3 * torch.randn(R, cfg.dim, generator=gen)
    ids_u = pa.array(np.char.add("u", np.arange(cfg.n_users).astype(str)).astype(object), pa.string())
    ids_r = pa.array(np.char.add("r", np.arange(R).astype(str)).astype(object), pa.string())
    return GNNArtifacts(ids_u, ids_r, e_user, e_resp, graph, seed=cfg.seed), a, b, attr


def new_users_table(rng, n: int, per_user: int, a, b, attr, prefix: str = "new") -> pa.Table:
    group = rng.integers(0, 4, n)
    item = rng.integers(0, len(a), (n, per_user)).ravel()
    g = np.repeat(group, per_user)
    a_wins = attr[a[item], g] > attr[b[item], g]
    ch, rj = np.where(a_wins, a[item], b[item]), np.where(a_wins, b[item], a[item])
    return pa.table({"user_id": np.repeat(np.char.add(prefix, np.arange(n).astype(str)), per_user).astype(object),
                     "chosen_id": np.char.add("r", ch.astype(str)).astype(object),
                     "rejected_id": np.char.add("r", rj.astype(str)).astype(object)})


def _pcts(ms: list[float]) -> dict:
    x = np.asarray(ms)
    return {"p50_ms": float(np.percentile(x, 50)), "p99_ms": float(np.percentile(x, 99)),
            "mean_ms": float(x.mean()), "n": int(x.size)}


def bench_latency(cfg: BenchAdaptConfig) -> dict:

    t0 = time.perf_counter()
    art, a, b, attr = synthetic_artifacts(cfg)
    build_s = time.perf_counter() - t0
    print(f"[latency] graph: {art} built in {build_s:.1f}s")
    rng = np.random.default_rng(cfg.seed + 1)
    req = new_users_table(rng, cfg.n_requests, cfg.per_user, a, b, attr)
    requests = [{"chosen_id": req.column("chosen_id")[i * cfg.per_user:(i + 1) * cfg.per_user].to_pylist(),
                 "rejected_id": req.column("rejected_id")[i * cfg.per_user:(i + 1) * cfg.per_user].to_pylist()}
                for i in range(cfg.n_requests)]
    for r in requests[:20]:  # warm-up
        adapt_one(art, r, cfg.adapt)
    times, cpu, nbrs = [], [], []
    for r in requests:
        t, c = time.perf_counter(), time.thread_time()
        res = adapt_one(art, r, cfg.adapt)
        times.append(1e3 * (time.perf_counter() - t))
        cpu.append(1e3 * (time.thread_time() - c))  # CPU time: what the request costs without other load
        nbrs.append(res.n_neighbors)
    copl = {**_pcts(times), "cpu": _pcts(cpu), "neighbors_mean": float(np.mean(nbrs)),
            "neighbors_max": int(np.max(nbrs))}
    print(f"[latency] adapt_one: p50 {copl['p50_ms']:.2f} ms, p99 {copl['p99_ms']:.2f} ms (CPU time p50 "
          f"{copl['cpu']['p50_ms']:.2f}, p99 {copl['cpu']['p99_ms']:.2f} ms), "
          f"{copl['neighbors_mean']:.0f} neighbours on average (max {copl['neighbors_max']})")
    uo_times, uo_cpu = [], []
    for i in range(cfg.n_user_opt_requests):
        one = req.slice(i * cfg.per_user, cfg.per_user)
        t, c = time.perf_counter(), time.thread_time()
        user_opt(art, one, lr=cfg.user_opt_lr)
        uo_times.append(1e3 * (time.perf_counter() - t))
        uo_cpu.append(1e3 * (time.thread_time() - c))
    uo = {**_pcts(uo_times), "cpu": _pcts(uo_cpu)}
    print(f"[latency] user_opt single: p50 {uo['p50_ms']:.2f} ms, p99 {uo['p99_ms']:.2f} ms (CPU time p50 "
          f"{uo['cpu']['p50_ms']:.2f}, p99 {uo['cpu']['p99_ms']:.2f} ms)")


    batch = new_users_table(np.random.default_rng(cfg.seed + 2), cfg.n_batch_users, cfg.per_user, a, b, attr)
    thr = {}
    t = time.perf_counter()
    adapt_batch(art, batch.slice(0, 16 * cfg.per_user), cfg.adapt)  # warm-up: first-call allocations
    thr["warmup_16_users_seconds"] = time.perf_counter() - t
    for name, fn in (("copl", lambda: adapt_batch(art, batch, cfg.adapt)),
                     ("naive_avg", lambda: naive_avg(art, batch, cfg.adapt)),
                     ("user_opt", lambda: user_opt(art, batch, lr=cfg.user_opt_lr))):
        t = time.perf_counter()
        fn()
        secs = time.perf_counter() - t
        thr[name] = {"seconds": secs, "users_per_second": cfg.n_batch_users / secs}
        print(f"[latency] batch {name}: {cfg.n_batch_users} users in {secs:.2f}s = "
              f"{thr[name]['users_per_second']:.0f} users/s")
    return {"graph": {"n_users": art.n_users, "n_responses": art.graph.n_responses,
                      "positive_edges": int(len(art.resp_users)), "build_seconds": build_s},
            "single_copl": copl, "single_user_opt": uo, "batch": thr,
            "ratio_user_opt_over_copl_single_p50": uo["p50_ms"] / copl["p50_ms"],
            "ratio_user_opt_over_copl_single_cpu_p50": uo["cpu"]["p50_ms"] / copl["cpu"]["p50_ms"],
            "ratio_copl_over_user_opt_batch_throughput": thr["copl"]["users_per_second"]
            / thr["user_opt"]["users_per_second"]}


# ----------------------------------------------------------------------------- (b) accuracy


def virtual_users(cfg: BenchAdaptConfig, art: GNNArtifacts, oracle: SyntheticOracle, ids: list[str],
                  n_given: int, n_eval: int, prefix: str):
    """Each user of ``ids`` ``repeat`` times with fresh survey pairs: given [V, n_given] answered
    pairs (chosen, rejected) and eval [V, n_eval] pairs, disjoint."""
    rng = np.random.default_rng(cfg.seed + 7)
    S = len(oracle.survey_a)
    vid, groups, gc, gr, ec, er = [], [], [], [], [], []
    for rep in range(cfg.repeat):
        for u in ids:
            pick = rng.choice(S, n_given + n_eval, replace=False)
            c, r = oracle.answer(oracle.weights[u], oracle.survey_a[pick], oracle.survey_b[pick])
            vid.append(f"{prefix}{rep}:{u}")
            groups.append(oracle.groups[u])
            gc.append(c[:n_given]), gr.append(r[:n_given]), ec.append(c[n_given:]), er.append(r[n_given:])
    return vid, np.array(groups, dtype=object), np.stack(gc), np.stack(gr), np.stack(ec), np.stack(er)


def given_table(art: GNNArtifacts, vid: list[str], gc: np.ndarray, gr: np.ndarray, n: int) -> pa.Table:
    rid = art.response_ids
    return pa.table({"user_id": pa.array(np.repeat(np.array(vid, dtype=object), n), pa.string()),
                     "chosen_id": rid.take(pa.array(gc[:, :n].ravel())),
                     "rejected_id": rid.take(pa.array(gr[:, :n].ravel()))})


def bench_accuracy(cfg: BenchAdaptConfig) -> dict:
    if not (cfg.dataset and cfg.gnn_dir):
        raise SystemExit("part=accuracy needs dataset=... and gnn_dir=...")
    art = load_gnn_artifacts(cfg.gnn_dir, seed=cfg.seed)
    oracle = SyntheticOracle.load(cfg.dataset, art)
    users = read_table(cfg.dataset, "users")
    unseen = pc.filter(users.column("user_id"), pc.equal(users.column("split"), "unseen")).to_pylist()
    n_max = max(cfg.given_counts)
    vid, groups, gc, gr, ec, er = virtual_users(cfg, art, oracle, unseen, n_max, cfg.eval_pairs, "v")
    V = len(vid)
    pu = np.repeat(np.arange(V), cfg.eval_pairs)
    table, curves = {}, {"copl": {}, "naive_avg": {}, "user_opt": {}}
    for n in cfg.given_counts:
        t = given_table(art, vid, gc, gr, n)
        row = {}
        for name, fn in (("copl", lambda: adapt_batch(art, t, cfg.adapt, user_ids=vid)),
                         ("naive_avg", lambda: naive_avg(art, t, cfg.adapt, user_ids=vid)),
                         ("user_opt", lambda: user_opt(art, t, user_ids=vid, lr=cfg.user_opt_lr))):
            start = time.perf_counter()
            res = fn()
            secs = time.perf_counter() - start
            correct = pair_correct(res.embeddings, art.e_resp, pu, ec.ravel(), er.ravel())
            by_group = {g: float(correct.reshape(V, -1)[groups == g].mean()) for g in sorted(set(groups))}
            row[name] = {"accuracy": float(correct.mean()), "by_group": by_group, "seconds": secs}
            if name != "user_opt":
                row[name]["resolution_counts"] = res.resolution_counts()
            curves[name][n] = float(correct.mean())
        table[str(n)] = row
        print(f"[accuracy] n={n:>2}: " + "  ".join(f"{k} {v['accuracy']:.4f}" for k, v in row.items()))

    # Reference: seen users' GNN accuracy on survey pairs they did not annotate.
    rng = np.random.default_rng(cfg.seed + 11)
    ref_idx = np.sort(rng.choice(art.n_users, min(cfg.n_seen_ref, art.n_users), replace=False))
    ref_ids = art.user_ids.take(pa.array(ref_idx)).to_pylist()
    train = read_annotations(cfg.dataset, "train")
    train = train.filter(pc.is_in(train.column("user_id"), value_set=pa.array(ref_ids)))
    tu = pc.index_in(train.column("user_id"), value_set=pa.array(ref_ids)).to_numpy(zero_copy_only=False)
    tc = art.response_index(train.column("chosen_id").to_pylist())
    R = art.graph.n_responses
    own = set((tu.astype(np.int64) * R + tc).tolist()) | set((tu.astype(np.int64) * R
                                                             + art.response_index(train.column("rejected_id").to_pylist())).tolist())
    S = len(oracle.survey_a)
    rc, rr, rpu = [], [], []
    for i, u in enumerate(ref_ids):
        pick = rng.choice(S, cfg.eval_pairs * 3, replace=False)
        pick = [p for p in pick if i * R + oracle.survey_a[p] not in own][:cfg.eval_pairs]
        c, r = oracle.answer(oracle.weights[u], oracle.survey_a[pick], oracle.survey_b[pick])
        rc.append(c), rr.append(r), rpu.append(np.full(len(c), i))
    correct = pair_correct(art.e_user[torch.from_numpy(ref_idx)], art.e_resp, np.concatenate(rpu),
                           np.concatenate(rc), np.concatenate(rr))
    seen_acc = float(correct.mean())
    curves["seen users (GNN)"] = {n: seen_acc for n in cfg.given_counts}
    plot_curves(curves, Path(cfg.output_dir) / "accuracy_curve.png",
                title=f"unseen-user adaptation, {V} virtual users, {cfg.eval_pairs} survey pairs each")
    print(f"[accuracy] seen users' GNN accuracy on unannotated survey pairs: {seen_acc:.4f} "
          f"({correct.size} pairs)")
    return {"n_virtual_users": V, "eval_pairs_per_user": cfg.eval_pairs, "by_n_given": table,
            "seen_gnn_accuracy": seen_acc, "seen_ref_pairs": int(correct.size)}


def main(argv=None) -> dict:
    cfg = parse_job_args(BenchAdaptConfig, argv)
    write_resolved_config(cfg, cfg.output_dir)
    torch.set_num_threads(cfg.threads)
    metrics = {}
    if cfg.part in ("all", "accuracy") and cfg.dataset:
        metrics["accuracy"] = bench_accuracy(cfg)
    if cfg.part in ("all", "latency"):
        metrics["latency"] = bench_latency(cfg)
    write_metrics(metrics, cfg.output_dir)
    return metrics


if __name__ == "__main__":
    main()
