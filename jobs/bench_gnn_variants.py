"""Which GNN layer generalizes: a single-process, full-graph probe of the Table A4 switches.

    python jobs/bench_gnn_variants.py dataset=D variants=[paper,paper_masked,plain,plain_masked]

One annotation per seen user is withheld from the graph (paper Table 6: pairs "not reflected in
the graph"); every variant trains on the rest with full-graph propagation per batch (AdamW,
constant lr, one torch thread, same seed) and prints train/withheld accuracy after each epoch.
Variants (``_masked``: each batch's own edges carry no message, `copl_ray.gnn.target_edges`):

* ``paper``: Eq. 2-3 as written (W_self, W1..W4, LeakyReLU), Glorot matrices;
* ``official``: the authors' code (W1 = W3 = I, shared user/response weights, negative subtracted);
* ``plain``: Table A4's "w/o Act. & Trans." layer, e + a+ - a- (the train_gnn job's default);
* ``nontrans_act``: no matrices, LeakyReLU kept.

No Ray: this isolates the model and the masking from sampling and distribution, so that the
choice of `jobs/train_gnn.py`'s defaults rests on a controlled comparison (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import torch  # noqa: E402
from pydantic import Field  # noqa: E402

from copl_ray.config import JobConfig, parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.dataset import read_annotations, read_table  # noqa: E402
from copl_ray.gnn.model import CoPLGNN, GNNConfig, btl_loss  # noqa: E402
from copl_ray.gnn.sampler import SignedEdges  # noqa: E402
from copl_ray.gnn.target_edges import mask_target_edges  # noqa: E402
from copl_ray.graph.id_map import IdMap  # noqa: E402
from copl_ray.graph.signed_graph import SignedGraph  # noqa: E402

LAYERS = {
    "paper": dict(variant="paper"),
    "official": dict(variant="official"),
    "plain": dict(transform=False, activation=False),
    "nontrans_act": dict(transform=False, activation=True),
}


class BenchVariantsConfig(JobConfig):
    """jobs/bench_gnn_variants.py: withheld-pair accuracy of GNN layer variants, full graph."""

    dataset: str
    output_dir: str = "runs/bench_gnn_variants"
    variants: list[str] = Field(default_factory=lambda: ["paper", "paper_masked", "plain", "plain_masked"])
    dim: int = Field(64, ge=1)
    num_layers: int = Field(2, ge=1)
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0


def _load(dataset: str, seed: int):
    """(graph without the withheld pairs, (u, a, b) dense [N] arrays, train mask, withheld mask)."""
    users, resp = read_table(dataset, "users"), read_table(dataset, "responses")
    seen = pc.filter(users.column("user_id"), pc.equal(users.column("split"), "seen")).combine_chunks()
    um, rm = IdMap(seen), IdMap(resp.column("response_id").combine_chunks())
    t = read_annotations(dataset, "train")
    u, a, b = um.lookup(t.column("user_id")), rm.lookup(t.column("chosen_id")), rm.lookup(t.column("rejected_id"))
    order = np.random.default_rng(seed).permutation(len(u))
    first = np.zeros(len(u), bool)  # one withheld annotation per user: its first in a random order
    first[order[np.unique(u[order], return_index=True)[1]]] = True
    graph = SignedGraph.from_triples(u[~first], a[~first], b[~first], len(um), len(rm))
    return graph, (u, a, b), ~first, first


def run_variant(name: str, cfg: BenchVariantsConfig, graph: SignedGraph, triples, train, held) -> list[dict]:
    layer, masked = name.removesuffix("_masked"), name.endswith("_masked")
    if layer not in LAYERS:
        raise ValueError(f"variants: unknown {name!r}; use one of {sorted(LAYERS)}, optionally with _masked")
    torch.manual_seed(cfg.seed)
    model = CoPLGNN(GNNConfig(graph.n_users, graph.n_responses, dim=cfg.dim, num_layers=cfg.num_layers,
                              **LAYERS[layer]))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    edges = SignedEdges.from_graph(graph)
    U, A, B = (torch.from_numpy(x) for x in triples)
    train_idx, held_idx = torch.from_numpy(np.flatnonzero(train)), torch.from_numpy(np.flatnonzero(held))
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for i in range(0, len(perm), cfg.batch_size):
            bi = perm[i:i + cfg.batch_size]
            step_edges = mask_target_edges(edges, graph.n_responses, U[bi], A[bi], B[bi]) if masked else edges
            e_u, e_r = model(step_edges)
            loss = btl_loss(e_u[U[bi]], e_r[A[bi]], e_r[B[bi]])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            e_u, e_r = model(edges)  # evaluation always over the whole graph

            def acc(idx):
                return float(((e_u[U[idx]] * (e_r[A[idx]] - e_r[B[idx]])).sum(1) > 0).float().mean())

            row = {"epoch": epoch, "loss": float(loss), "train_accuracy": acc(train_idx),
                   "withheld_accuracy": acc(held_idx), "seconds": time.perf_counter() - t0}
        history.append(row)
        print(f"[variants] {name:18s} epoch {epoch}: loss {row['loss']:.4f}  train {100 * row['train_accuracy']:.1f}"
              f"  withheld {100 * row['withheld_accuracy']:.1f}  ({row['seconds']:.0f} s)", flush=True)
    return history


def main(argv=None) -> dict:
    cfg = parse_job_args(BenchVariantsConfig, argv)
    write_resolved_config(cfg, cfg.output_dir)
    torch.set_num_threads(1)
    graph, triples, train, held = _load(cfg.dataset, cfg.seed)
    print(f"[variants] {graph.n_users} users, {graph.n_responses} responses, {int(held.sum())} withheld pairs")
    out = {"dataset": cfg.dataset, "variants": {v: run_variant(v, cfg, graph, triples, train, held)
                                                 for v in cfg.variants}}
    summary = {v: max(h["withheld_accuracy"] for h in hist) for v, hist in out["variants"].items()}
    print("[variants] best withheld accuracy (%): " + ", ".join(f"{v} {100 * a:.1f}" for v, a in summary.items()))
    out["best_withheld_accuracy"] = summary
    write_metrics(out, cfg.output_dir)
    return out


if __name__ == "__main__":
    main()
