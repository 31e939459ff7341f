"""Micro-benchmark of `NeighborSampler` (and one sampled GNN step) on a random large graph.

    python -m copl_ray.gnn.sampler_bench --users 1000000 --fanouts 10,10,5,5
    (jobs/bench_gnn.py can call `benchmark_sampler` and put the dict in its metrics.)

The graph: ``per_user`` annotations per user, each a (chosen, rejected) pair of two of the
``responses_per_prompt`` responses of a uniformly drawn prompt, so 1M users x 16 gives ~32M signed
edges (the issue's scale). Figures: medians of wall-clock and of process CPU seconds (all
threads) on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time

import numpy as np
import torch

from copl_ray.gnn.sampler import NeighborSampler, SignedEdges
from copl_ray.graph.signed_graph import SignedGraph

__all__ = ["random_graph", "benchmark_sampler", "messages_per_layer"]


def random_graph(n_users: int, n_prompts: int, responses_per_prompt: int = 4, per_user: int = 16,
                 seed: int = 0) -> tuple[SignedGraph, np.ndarray]:
    """(graph, triples [N, 3] of (user, chosen, rejected)) with N = n_users * per_user."""
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    user = np.repeat(np.arange(n_users, dtype=np.int64), per_user)
    prompt = rng.integers(0, n_prompts, n)
    i = rng.integers(0, responses_per_prompt, n)
    j = (i + rng.integers(1, responses_per_prompt, n)) % responses_per_prompt
    chosen, rejected = prompt * responses_per_prompt + i, prompt * responses_per_prompt + j
    graph = SignedGraph.from_triples(user, chosen, rejected, n_users, n_prompts * responses_per_prompt)
    return graph, np.stack([user, chosen, rejected], 1)


def messages_per_layer(edges: SignedEdges) -> list[int]:
    """Messages (edge, direction) each layer of a trimmed forward over a sampled subgraph computes,
    first layer first: layer l updates the users / responses within L-1-l hops of the seeds
    (``edges.user_hops`` / ``resp_hops``, L = hops - 1), each from its sampled edges. A full-graph
    layer computes 2 * graph.num_edges (both directions of every edge)."""
    hu, hr = edges.user_hops.tolist(), edges.resp_hops.tolist()
    n_layers = len(hu) - 1
    out = []
    for layer in range(n_layers):
        n_u, n_r = hu[n_layers - 1 - layer], hr[n_layers - 1 - layer]
        count = 0
        for user, resp, to_user, to_resp in (
                (edges.pos_user, edges.pos_resp, edges.pos_norm, edges.pos_norm_to_resp),
                (edges.neg_user, edges.neg_resp, edges.neg_norm, edges.neg_norm_to_resp)):
            count += int(((to_user != 0) & (user < n_u)).sum()) + int(((to_resp != 0) & (resp < n_r)).sum())
        out.append(count)
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark_sampler(n_users: int = 1_000_000, n_prompts: int = 10_000, per_user: int = 16,
                      fanouts: tuple[int, ...] = (10, 10, 5, 5), batch_pairs: int = 1024, repeats: int = 5,
                      dim: int = 0, seed: int = 0, graph: SignedGraph | None = None,
                      triples: np.ndarray | None = None, trim: bool = True) -> dict:
    """Time `NeighborSampler.sample` for batches of ``batch_pairs`` random training triples.

    ``dim > 0`` also times one forward+backward of a ``CoPLGNN`` (d=dim, L=len(fanouts)) on each
    sampled subgraph; ``trim=False`` drops the hop sizes, so every layer updates every sampled
    node (for the ratio to layer-wise trimming). Returns a flat dict of figures (seconds, counts, MiB).
    """
    out: dict = {"n_users": n_users, "fanouts": list(fanouts), "batch_pairs": batch_pairs}
    t = time.perf_counter()
    if graph is None:
        graph, triples = random_graph(n_users, n_prompts, per_user=per_user, seed=seed)
    out.update(graph_build_s=time.perf_counter() - t, n_responses=graph.n_responses,
               n_edges=graph.num_edges)
    t = time.perf_counter()
    sampler = NeighborSampler(graph, list(fanouts), seed=seed)
    out["sampler_init_s"] = time.perf_counter() - t
    model = None
    if dim:
        from copl_ray.gnn.model import CoPLGNN, GNNConfig, btl_loss

        torch.manual_seed(seed)
        model = CoPLGNN(GNNConfig(graph.n_users, graph.n_responses, dim=dim, num_layers=len(fanouts)))
    rng = np.random.default_rng(seed + 1)
    times, cpu, steps, steps_cpu, nodes, edges, messages = [], [], [], [], [], [], []
    for _ in range(repeats):
        idx = rng.integers(0, len(triples), batch_pairs)
        u, a, b = (torch.from_numpy(triples[idx, c]) for c in range(3))
        t, c = time.perf_counter(), time.process_time()
        su, inv_u = torch.unique(u, return_inverse=True)
        sr, inv_r = torch.unique(torch.cat([a, b]), return_inverse=True)
        sub = sampler.sample(su, sr)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        nodes.append(len(sub.user_nodes) + len(sub.resp_nodes))
        edges.append(sub.edges.num_edges)
        messages.append(sum(messages_per_layer(sub.edges)))
        if model is not None:
            if not trim:
                sub.edges = dataclasses.replace(sub.edges, user_hops=None, resp_hops=None, _cache={})
            t, c = time.perf_counter(), time.process_time()
            e_u, e_r = model(sub.edges, sub.user_nodes, sub.resp_nodes)
            loss = btl_loss(e_u[inv_u], e_r[inv_r[:batch_pairs]], e_r[inv_r[batch_pairs:]])
            model.zero_grad(set_to_none=True)
            loss.backward()
            steps.append(time.perf_counter() - t)
            steps_cpu.append(time.process_time() - c)
    # CPU seconds next to wall seconds: on a shared machine the wall clock mostly measures the queue.
    out.update(sample_s_median=float(np.median(times)), sample_s_min=float(np.min(times)),
               sample_cpu_s_median=float(np.median(cpu)),
               sampled_nodes_median=int(np.median(nodes)), sampled_edges_median=int(np.median(edges)),
               # work of one trimmed forward vs one full-graph forward (same L), in messages
               sampled_messages_median=int(np.median(messages)),
               full_graph_messages=2 * len(fanouts) * graph.num_edges,
               full_over_sampled_messages=2 * len(fanouts) * graph.num_edges / max(1.0, float(np.median(messages))),
               peak_rss_mb=_rss_mb())
    if steps:
        out.update(dim=dim, trim=trim, fwd_bwd_s_median=float(np.median(steps)),
                   fwd_bwd_cpu_s_median=float(np.median(steps_cpu)))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--prompts", type=int, default=10_000)
    p.add_argument("--per-user", type=int, default=16)
    p.add_argument("--fanouts", default="10,10,5,5", help="comma-separated; several sets with ';'")
    p.add_argument("--batch-pairs", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dim", type=int, default=0, help="> 0: also time a GNN forward+backward")
    p.add_argument("--no-trim", action="store_true", help="also time without layer-wise trimming")
    args = p.parse_args(argv)
    graph, triples = random_graph(args.users, args.prompts, per_user=args.per_user)
    results = []
    for spec in args.fanouts.split(";"):
        fanouts = tuple(int(f) for f in spec.split(","))
        for trim in (True, False) if args.no_trim else (True,):
            r = benchmark_sampler(args.users, args.prompts, args.per_user, fanouts, args.batch_pairs,
                                  args.repeats, args.dim, graph=graph, triples=triples, trim=trim)
            print(json.dumps(r), flush=True)
            results.append(r)
    return {"results": results}


if __name__ == "__main__":
    main()
