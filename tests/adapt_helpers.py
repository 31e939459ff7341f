"""Hand-made and random GNN artifacts for the adaptation tests (no trained GNN needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from copl_ray.adapt.artifacts import GNNArtifacts
from copl_ray.graph.signed_graph import SignedGraph

# Seen users 0..5, responses 0..7; triples (user, chosen, rejected).
HAND_TRIPLES = [
    (0, 0, 1), (1, 0, 1), (2, 1, 0),   # users 0, 1 chose r0; user 2 chose r1
    (3, 2, 3), (3, 4, 5), (4, 4, 5),   # user 3 chose r2 and r4; user 4 chose r4
    (5, 3, 2), (5, 6, 7),              # user 5 chose r3 and r6; nobody chose r5 or r7
]


def hand_artifacts(dim: int = 4, seed: int = 0) -> GNNArtifacts:
    t = np.array(HAND_TRIPLES)
    g = SignedGraph.from_triples(t[:, 0], t[:, 1], t[:, 2], n_users=6, n_responses=8)
    gen = torch.Generator().manual_seed(seed)
    return GNNArtifacts(pa.array([f"u{i}" for i in range(6)]), pa.array([f"r{i}" for i in range(8)]),
                        torch.randn(6, dim, generator=gen), torch.randn(8, dim, generator=gen), g)


def random_artifacts(n_users: int = 60, n_responses: int = 40, n_pairs: int = 150, dim: int = 8,
                     seed: int = 0) -> GNNArtifacts:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_users, n_pairs)
    a = rng.integers(0, n_responses, n_pairs)
    b = (a + rng.integers(1, n_responses, n_pairs)) % n_responses
    g = SignedGraph.from_triples(u, a, b, n_users, n_responses)
    gen = torch.Generator().manual_seed(seed)
    return GNNArtifacts(pa.array([f"u{i}" for i in range(n_users)]),
                        pa.array([f"r{i}" for i in range(n_responses)]),
                        torch.randn(n_users, dim, generator=gen), torch.randn(n_responses, dim, generator=gen), g)


def random_new_users(art: GNNArtifacts, n_users: int, max_pairs: int, seed: int = 1) -> pa.Table:
    """Annotations of ``n_users`` new users with 0..max_pairs pairs each (contract columns)."""
    rng = np.random.default_rng(seed)
    rows = {"user_id": [], "prompt_id": [], "chosen_id": [], "rejected_id": []}
    R = art.graph.n_responses
    for i in range(n_users):
        for _ in range(rng.integers(0, max_pairs + 1)):
            a = int(rng.integers(0, R))
            b = int((a + rng.integers(1, R)) % R)
            rows["user_id"].append(f"new{i}")
            rows["prompt_id"].append("p0")
            rows["chosen_id"].append(f"r{a}")
            rows["rejected_id"].append(f"r{b}")
    return pa.table({k: pa.array(v, pa.string()) for k, v in rows.items()})


def write_gnn_dir(art: GNNArtifacts, out: Path) -> Path:
    """The files of a gnn_dir that adaptation reads (docs/ARCHITECTURE.md), written with the
    contract writers. No model.safetensors: adaptation needs only the final embeddings, and the
    trainer's model format is not this package's to fake."""
    from copl_ray.embeddings import write_embeddings
    from copl_ray.graph.id_map import IdMap

    IdMap(art.user_ids).save(out / "user_index.parquet")
    IdMap(art.response_ids).save(out / "response_index.parquet")
    art.graph.save(out)
    write_embeddings(out / "responses.parquet", "response_id", art.response_ids, art.e_resp.numpy())
    write_embeddings(out / "users.parquet", "user_id", art.user_ids, art.e_user.numpy())
    return out
