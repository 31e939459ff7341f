"""RowSparseAdamW and row-sparse gradients (copl_ray.gnn.optim; the trainer's row exchange).

Exact mode equals torch's AdamW for any gradient; lazy mode equals it when every row is touched at
every step, leaves untouched rows as they are, and decays the touched ones.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from copl_ray.gnn.optim import RowSparseAdamW, build_optimizer, clip_grad_norm_, use_sparse_embedding_grads
from tests.job_loader import load_job

# Tiny tensors: one OpenMP thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, D = 40, 8
HP = dict(lr=1e-2, weight_decay=0.1)


def _sparse(rows: torch.Tensor, vals: torch.Tensor, n: int = N) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse invariant checks are implicitly disabled"
        return torch.sparse_coo_tensor(rows.unsqueeze(0), vals, (n, vals.shape[1]))


def _dense(sp: torch.Tensor) -> torch.Tensor:
    return sp.coalesce().to_dense()


def _pair(w0, **kw):
    """(reference param + torch AdamW(fused), param + RowSparseAdamW(**kw)), same start."""
    ref, mine = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    return (ref, torch.optim.AdamW([ref], fused=True, **HP)), (mine, RowSparseAdamW([mine], **HP, **kw))


def test_lazy_equals_adamw_exactly_when_every_row_is_touched():
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(N, D, generator=gen)
    (ref, opt_ref), (mine, opt) = _pair(w0, lazy=True)
    foreach = torch.nn.Parameter(w0.clone())
    opt_foreach = torch.optim.AdamW([foreach], **HP)
    for _ in range(12):
        g = torch.randn(N, D, generator=gen)
        # every row, in shuffled order, with one row split into two duplicate entries
        perm = torch.randperm(N, generator=gen)
        rows = torch.cat([perm, perm[:1]])
        vals = torch.cat([g[perm], torch.zeros(1, D)])
        vals[0], vals[-1] = 0.25 * g[perm[0]], 0.75 * g[perm[0]]
        ref.grad, foreach.grad, mine.grad = g.clone(), g.clone(), _sparse(rows, vals)
        opt_ref.step(), opt_foreach.step(), opt.step()
    torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-7)  # duplicate rows: (0.25 + 0.75) g
    torch.testing.assert_close(mine, foreach)  # torch's default (foreach) AdamW, float tolerance


def test_lazy_bitwise_equal_to_fused_adamw_on_distinct_rows():
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(N, D, generator=gen)
    (ref, opt_ref), (mine, opt) = _pair(w0, lazy=True)
    for _ in range(10):
        g = torch.randn(N, D, generator=gen)
        perm = torch.randperm(N, generator=gen)
        ref.grad, mine.grad = g.clone(), _sparse(perm, g[perm])
        opt_ref.step(), opt.step()
    assert torch.equal(mine, ref)
    assert torch.equal(opt.state[mine]["exp_avg_sq"], opt_ref.state[ref]["exp_avg_sq"])


def test_lazy_leaves_untouched_rows_and_decays_touched_ones():
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(N, D, generator=gen)
    p = torch.nn.Parameter(w0.clone())
    opt = RowSparseAdamW([p], **HP, lazy=True)
    touched = torch.tensor([3, 17, 5])
    # Row 5 is touched with a zero gradient: no Adam move, but its decoupled decay applies.
    vals = torch.randn(3, D, generator=gen)
    vals[2] = 0.0
    p.grad = _sparse(touched, vals)
    opt.step()
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(p[untouched], w0[untouched])
    assert torch.equal(opt.state[p]["exp_avg"][untouched], torch.zeros(int(untouched.sum()), D))
    assert torch.equal(p[5], w0[5] * (1 - HP["lr"] * HP["weight_decay"]))
    assert not torch.allclose(p[3], w0[3] * (1 - HP["lr"] * HP["weight_decay"]))  # moved by its gradient
    # A later step that touches other rows leaves rows 3 and 17 (and their moments) where they are.
    before, m_before = p.detach().clone(), opt.state[p]["exp_avg"].clone()
    p.grad = _sparse(torch.tensor([0, 1]), torch.randn(2, D, generator=gen))
    opt.step()
    assert torch.equal(p[[3, 17, 5]], before[[3, 17, 5]])
    assert torch.equal(opt.state[p]["exp_avg"][[3, 17]], m_before[[3, 17]])


def test_exact_mode_is_adamw_on_the_densified_gradient():
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(N, D, generator=gen)
    (ref, opt_ref), (mine, opt) = _pair(w0, lazy=False)
    for step in range(10):
        rows = torch.randint(0, N, (7,), generator=gen)  # a few rows, with repeats
        sp = _sparse(rows, torch.randn(7, D, generator=gen))
        ref.grad, mine.grad = _dense(sp), sp
        opt_ref.step(), opt.step()
        # untouched rows move too (decay, momentum), as in AdamW
        torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-7)
    assert torch.equal(opt._grad_buffers[id(mine)], torch.zeros(N, D))  # re-zeroed after each step


def test_dense_parameters_beside_sparse_ones_take_adamw_steps():
    gen = torch.Generator().manual_seed(4)
    w_dense, w_table = torch.randn(5, 3, generator=gen), torch.randn(N, D, generator=gen)
    ref = [torch.nn.Parameter(w_dense.clone()), torch.nn.Parameter(w_table.clone())]
    mine = [torch.nn.Parameter(w_dense.clone()), torch.nn.Parameter(w_table.clone())]
    opt_ref = torch.optim.AdamW(ref, fused=True, **HP)
    opt = RowSparseAdamW(mine, **HP, lazy=True)
    for _ in range(5):
        gd, gt = torch.randn(5, 3, generator=gen), torch.randn(N, D, generator=gen)
        ref[0].grad, ref[1].grad = gd.clone(), gt.clone()
        mine[0].grad, mine[1].grad = gd.clone(), _sparse(torch.arange(N), gt.clone())
        opt_ref.step(), opt.step()
    assert torch.equal(mine[0], ref[0]) and torch.equal(mine[1], ref[1])


@pytest.mark.parametrize("lazy", [True, False])
def test_state_dict_resumes_the_same_trajectory(lazy):
    gen = torch.Generator().manual_seed(5)
    w0 = torch.randn(N, D, generator=gen)
    grads = [_sparse(torch.randint(0, N, (9,), generator=gen), torch.randn(9, D, generator=gen)) for _ in range(6)]
    a = torch.nn.Parameter(w0.clone())
    opt_a = RowSparseAdamW([a], **HP, lazy=lazy)
    for g in grads:
        a.grad = g
        opt_a.step()
    b = torch.nn.Parameter(w0.clone())
    opt_b = RowSparseAdamW([b], **HP, lazy=lazy)
    for g in grads[:3]:
        b.grad = g
        opt_b.step()
    saved = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt_b.state_dict().items()}
    c = torch.nn.Parameter(b.detach().clone())
    opt_c = RowSparseAdamW([c], **HP, lazy=lazy)
    opt_c.load_state_dict(saved)
    for g in grads[3:]:
        c.grad = g
        opt_c.step()
    assert torch.equal(c, a)


def test_clip_grad_norm_counts_sparse_rows_like_their_dense_gradient():
    gen = torch.Generator().manual_seed(6)
    sp = _sparse(torch.tensor([1, 4, 1]), torch.randn(3, D, generator=gen))
    dense_w = torch.randn(3, 3, generator=gen)
    p1, q1 = torch.nn.Parameter(torch.zeros(N, D)), torch.nn.Parameter(torch.zeros(3, 3))
    p2, q2 = torch.nn.Parameter(torch.zeros(N, D)), torch.nn.Parameter(torch.zeros(3, 3))
    p1.grad, q1.grad = _dense(sp), dense_w.clone()
    p2.grad, q2.grad = sp, dense_w.clone()
    n1 = torch.nn.utils.clip_grad_norm_([p1, q1], 0.5)
    n2 = clip_grad_norm_([p2, q2], 0.5)
    torch.testing.assert_close(n2, n1)
    torch.testing.assert_close(_dense(p2.grad), p1.grad)
    torch.testing.assert_close(q2.grad, q1.grad)


@pytest.mark.parametrize("name", ["sparse_grad_adamw", "row_sparse_adamw"])
def test_sampled_gnn_step_with_row_gradients_matches_dense_adamw(name):
    """One sampled CoPLGNN step: the lookups' row-sparse gradients give AdamW's step (exact mode),
    or AdamW's step on the subgraph's rows and none elsewhere (lazy mode)."""
    from copl_ray.gnn.model import CoPLGNN, GNNConfig
    from copl_ray.gnn.sampler import NeighborSampler
    from copl_ray.graph.signed_graph import SignedGraph

    rng = np.random.default_rng(0)
    n_u, n_r, n = 300, 40, 900
    u, a = rng.integers(0, n_u, n), rng.integers(0, n_r, n)
    graph = SignedGraph.from_triples(u, a, (a + rng.integers(1, n_r, n)) % n_r, n_u, n_r)
    sub = NeighborSampler(graph, [2, 2], seed=0).sample(torch.tensor([1, 7, 9]), torch.tensor([0, 3]))

    def step(sparse: bool, opt_name: str):
        torch.manual_seed(0)
        model = CoPLGNN(GNNConfig(n_users=n_u, n_responses=n_r, dim=8, num_layers=2))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        assert use_sparse_embedding_grads(model, sparse) == 2
        opt = build_optimizer(model.parameters(), opt_name, **HP)
        e_u, e_r = model(sub.edges, sub.user_nodes, sub.resp_nodes)
        (e_u[:3] @ e_r[:2].T).sum().backward()
        assert model.user_emb.weight.grad.is_sparse == sparse
        opt.step()
        return before, model.state_dict()

    _, ref = step(False, "adamw")
    before, mine = step(True, name)
    touched = {"user_emb.weight": torch.zeros(n_u, dtype=torch.bool), "resp_emb.weight": torch.zeros(n_r, dtype=torch.bool)}
    touched["user_emb.weight"][sub.user_nodes] = True
    touched["resp_emb.weight"][sub.resp_nodes] = True
    assert not touched["user_emb.weight"].all()
    for key, w_ref in ref.items():
        if name == "row_sparse_adamw" and key in touched:
            rows = touched[key]
            torch.testing.assert_close(mine[key][rows], w_ref[rows], msg=key)
            assert torch.equal(mine[key][~rows], before[key][~rows]), key
        else:
            torch.testing.assert_close(mine[key], w_ref, msg=key)


# ----------------------------------------------------------------------------- row exchange


def _sync_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from copl_ray.gnn.train import sync_gradients_sparse_rows

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    for sparse in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Embedding(N, D), torch.nn.Linear(D, 1))
        use_sparse_embedding_grads(model, sparse)
        ids = torch.tensor([[1, 2, 2, 30], [2, 39, 5, 1]][rank])  # overlapping rows and a repeat
        model(ids).pow(2).sum().backward()
        sync_gradients_sparse_rows(model, world)
        g = model[0].weight.grad
        results[sparse] = (_dense(g) if g.is_sparse else g.clone(), model[1].weight.grad.clone())
    dist.destroy_process_group()
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.mark.integration
def test_row_exchange_of_sparse_gradients_equals_the_dense_mean(tmp_path):
    """Two gloo processes: sparse row gradients, exchanged, equal the dense rows' exchange (no Ray)."""
    import torch.multiprocessing as mp

    # Results come back as files, not through a multiprocessing.Manager: Manager() starts its server
    # by fork()ing this process, which is a live Ray driver once the session's Ray is up (ray_session,
    # e.g. after tests/test_train_gnn.py). The copy shares the driver's gRPC connection to the GCS; when
    # its garbage collector frees a Ray ActorHandle it reports that to the GCS over that connection,
    # after which the driver gets no GCS replies or actor updates and the next TorchTrainer.fit() waits
    # forever for its controller (Ray: never fork a driver). mp.spawn's children are fresh interpreters.
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    out = {rank: torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)}
    for rank in (0, 1):
        (g_sparse, w_sparse), (g_dense, w_dense) = out[rank][True], out[rank][False]
        torch.testing.assert_close(g_sparse, g_dense)
        torch.testing.assert_close(w_sparse, w_dense)
    torch.testing.assert_close(out[0][True][0], out[1][True][0])  # every rank holds the mean


@pytest.mark.integration
def test_sampled_training_row_gradients_equal_dense_ones(ray_session, small_ufp4, tmp_path):
    """2 workers, sampled mode (each rank its own sampler stream, the same in every run): dense
    gradients + DDP, row-sparse gradients + DDP and row-sparse gradients + the row exchange (the
    default) train the same model with the exact optimizer."""
    from copl_ray.embeddings import read_embeddings

    job = load_job("train_gnn")
    runs = {"dense_ddp": ["optimizer=adamw", "grad_sync=ddp"],
            "rows_ddp": ["optimizer=sparse_grad_adamw", "grad_sync=ddp"],
            "rows_exchange": ["optimizer=sparse_grad_adamw", "grad_sync=sparse_rows"]}
    emb = {}
    for name, extra in runs.items():
        job.main([f"dataset={small_ufp4}", f"output_dir={tmp_path / name}", "batch_size=128", "lr=0.01",
                  "dim=16", "epochs=1", "num_workers=2", "fanouts=[3,3]", "grid=false", *extra])
        emb[name] = read_embeddings(tmp_path / name / "users.parquet")[1]
    scale = max(1.0, np.abs(emb["dense_ddp"]).max())
    for name in ("rows_ddp", "rows_exchange"):
        assert np.abs(emb[name] - emb["dense_ddp"]).max() <= 1e-4 * scale, name
