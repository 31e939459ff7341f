"""How long one full-graph propagation takes at a million users: the raw sparse products (issue 18).

    python jobs/bench_spmm.py                                  # 1M users x 16 annotations, d=64
    python jobs/bench_spmm.py n_users=100000 threads=1

A propagation-only layer (e + A+ e - A- e, mean-normalised) over a signed bipartite graph is, per
sign, one product users <- responses ([n_users x n_responses] @ [n_responses x d]) and one
responses <- users ([n_responses x n_users] @ [n_users x d]), in torch CSR. The graph is random
(``per_user`` responses per user and sign, uniform over ``n_responses``), which is what the cost
depends on (nnz, d, threads), not on preferences. Prints seconds per product and the CSR build
time; a forward pass of L layers costs about 2 signs x L x (both products), a backward about twice
that. Never asserts.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pydantic import Field  # noqa: E402

from copl_ray.config import JobConfig, parse_job_args  # noqa: E402


class BenchSpmmConfig(JobConfig):
    """jobs/bench_spmm.py: seconds per full-graph sparse product at scale."""

    n_users: int = Field(1_000_000, ge=1)
    n_responses: int = Field(20_000, ge=1)
    per_user: int = Field(16, ge=1, description="edges per user and sign")
    dim: int = Field(64, ge=1)
    threads: int = Field(2, ge=1)
    repeats: int = Field(3, ge=1)
    seed: int = 0


def mean_csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """CSR [shape] with 1/row-degree at each (row, col): the mean over a node's neighbours."""
    deg = np.bincount(rows, minlength=shape[0]).astype(np.float32)
    vals = torch.from_numpy(1.0 / deg[rows])
    coo = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, cols])), vals, shape, check_invariants=False)
    return coo.coalesce().to_sparse_csr()


def main(argv=None) -> dict:
    cfg = parse_job_args(BenchSpmmConfig, argv)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    users = np.repeat(np.arange(cfg.n_users), cfg.per_user)
    resp = rng.integers(0, cfg.n_responses, len(users))
    t0 = time.perf_counter()
    to_users = mean_csr(users, resp, (cfg.n_users, cfg.n_responses))
    to_resps = mean_csr(resp, users, (cfg.n_responses, cfg.n_users))
    build = time.perf_counter() - t0
    e_user, e_resp = torch.randn(cfg.n_users, cfg.dim), torch.randn(cfg.n_responses, cfg.dim)
    out = {"nnz_per_sign": len(users), "csr_build_seconds_one_sign": build}
    for name, product in (("users_from_responses", lambda: to_users @ e_resp),
                          ("responses_from_users", lambda: to_resps @ e_user)):
        product()  # warm-up
        t0 = time.perf_counter()
        for _ in range(cfg.repeats):
            product()
        out[f"{name}_seconds"] = (time.perf_counter() - t0) / cfg.repeats
    per_layer = 2 * (out["users_from_responses_seconds"] + out["responses_from_users_seconds"])
    out["forward_seconds_per_layer_both_signs"] = per_layer
    print(f"bench_spmm: {cfg.n_users:,} users x {cfg.per_user} edges per sign ({len(users):,} nnz per sign),"
          f" {cfg.n_responses:,} responses, d={cfg.dim}, {cfg.threads} threads")
    print(f"  users <- responses: {out['users_from_responses_seconds']:.3f} s per product")
    print(f"  responses <- users: {out['responses_from_users_seconds']:.3f} s per product")
    print(f"  one propagation-only layer, both signs, forward: {per_layer:.2f} s;"
          f" CSR build of one sign, both directions: {build:.1f} s")
    return out


if __name__ == "__main__":
    main()
