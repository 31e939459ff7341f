"""Unseen-user adaptation (paper Section 4.3): neighbour sets, gamma, weights and Eq. 11 against
direct computations on hand-made graphs; fallbacks; single vs batch path; baselines."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from copl_ray.adapt import AdaptInputError, AdaptParams, adapt_batch, adapt_one, load_gnn_artifacts
from copl_ray.adapt.baselines import naive_avg, user_opt
from copl_ray.adapt.neighbors import check_hops, khop_batch, khop_one
from tests.adapt_helpers import hand_artifacts, random_artifacts, random_new_users, write_gnn_dir


def _ann(pairs):
    return {"chosen_id": [f"r{a}" for a, _ in pairs], "rejected_id": [f"r{b}" for _, b in pairs]}


def _brute_khop(art, chosen, k):
    """Reference N+(k): breadth-first walk over positive edges with Python sets."""
    pos = list(zip(art.graph.pos_user.tolist(), art.graph.pos_response.tolist()))
    users_of = {}
    resps_of = {}
    for u, r in pos:
        users_of.setdefault(r, set()).add(u)
        resps_of.setdefault(u, set()).add(r)
    resp, reached = set(chosen), set()
    for hop in range(k // 2):
        users = set().union(*(users_of.get(r, set()) for r in resp)) if resp else set()
        reached |= users
        resp = set().union(*(resps_of.get(u, set()) for u in users)) if users else set()
    return sorted(reached)


def test_hand_graph_neighbour_sets():
    art = hand_artifacts()
    assert khop_one(art, np.array([0]), 2).tolist() == [0, 1]
    assert khop_one(art, np.array([2]), 2).tolist() == [3]
    assert khop_one(art, np.array([2]), 4).tolist() == [3, 4]   # r2 -> u3 -> r4 -> u4
    assert khop_one(art, np.array([0, 4]), 2).tolist() == [0, 1, 3, 4]
    assert khop_one(art, np.array([7]), 2).tolist() == []


@pytest.mark.parametrize("k", [2, 4, 6])
def test_khop_matches_bruteforce_single_and_batch(k):
    art = random_artifacts(n_users=50, n_responses=60, n_pairs=80, seed=3)
    rng = np.random.default_rng(0)
    chosen_sets = [rng.choice(60, size=rng.integers(1, 4), replace=False) for _ in range(20)]
    pu = np.concatenate([np.full(len(c), i) for i, c in enumerate(chosen_sets)])
    indptr, users = khop_batch(art, pu, np.concatenate(chosen_sets), len(chosen_sets), k)
    for i, c in enumerate(chosen_sets):
        ref = _brute_khop(art, c.tolist(), k)
        assert khop_one(art, c, k).tolist() == ref
        assert users[indptr[i]:indptr[i + 1]].tolist() == ref


def test_gamma_weights_embedding_match_direct_computation():
    art = hand_artifacts(dim=3)
    pairs = [(0, 1), (4, 5), (2, 3)]
    res = adapt_one(art, _ann(pairs), AdaptParams(hops=2, kappa=0.5))
    assert res.resolution == "khop" and res.neighbors.tolist() == [0, 1, 3, 4]
    eu, er = art.e_user.double().numpy(), art.e_resp.double().numpy()
    gamma = [sum(math.log(1 / (1 + math.exp(-(eu[u] @ er[a] - eu[u] @ er[b])))) for a, b in pairs)
             for u in res.neighbors]
    w = np.exp(np.array(gamma) / 0.5)
    w /= w.sum()
    np.testing.assert_allclose(res.weights.numpy(), w, rtol=1e-5)
    np.testing.assert_allclose(res.embedding.numpy(), w @ eu[res.neighbors], rtol=1e-5, atol=1e-6)


def test_odd_or_small_k_rejected():
    for bad in (1, 3, 0, -2):
        with pytest.raises(ValueError, match="even"):
            check_hops(bad)
        with pytest.raises(ValueError, match="even"):
            AdaptParams(hops=bad)
    art = hand_artifacts()
    with pytest.raises(ValueError, match="even"):
        khop_one(art, np.array([0]), 3)


def test_fallback_ladder_is_reported_never_zero():
    art = hand_artifacts()
    # nobody chose r7 but user 5 rejected r2: widened = {5} (+ positive hops from 5: only 5)
    r = adapt_one(art, _ann([(7, 2)]))
    assert r.resolution == "widened" and r.neighbors.tolist() == [5]
    # nobody chose r5 or rejected r6 -> global sample of all 6 seen users
    r = adapt_one(art, _ann([(5, 6)]), AdaptParams(global_sample_size=4))
    assert r.resolution == "global_sample" and r.n_neighbors == 4
    assert r.neighbors.tolist() == art.users_by_priority(4).tolist()
    # no annotation at all -> population mean
    r = adapt_one(art, _ann([]))
    assert r.resolution == "population_mean"
    torch.testing.assert_close(r.embedding, art.e_user.mean(0))
    for r in (adapt_one(art, _ann([(7, 2)])), adapt_one(art, _ann([(5, 6)]))):
        assert r.embedding.abs().sum() > 0


def test_batch_equals_single_with_fallbacks_and_caps():
    art = random_artifacts(n_users=80, n_responses=50, n_pairs=120, seed=5)
    table = random_new_users(art, 30, max_pairs=5, seed=2)
    p = AdaptParams(max_neighbors=7, global_sample_size=5, chunk_users=8, hops=4)
    users = [f"new{i}" for i in range(30)] + ["nobody"]
    batch = adapt_batch(art, table, p, user_ids=users)
    assert batch.resolution[-1] == "population_mean"
    assert set(batch.resolution) >= {"khop", "population_mean"}
    uid = table.column("user_id").to_numpy(zero_copy_only=False)
    for i, u in enumerate(users):
        one = adapt_one(art, table.filter(pa.array(uid == u)), p)
        assert one.resolution == batch.resolution[i]
        assert one.n_neighbors == batch.n_neighbors[i] <= 7
        torch.testing.assert_close(one.embedding, batch.embeddings[i], rtol=1e-4, atol=1e-5)


def test_batch_invariant_to_row_order():
    art = random_artifacts(seed=7)
    table = random_new_users(art, 12, max_pairs=6, seed=4)
    users = pa.array(sorted(set(table.column("user_id").to_pylist())))
    a = adapt_batch(art, table, user_ids=users)
    perm = np.random.default_rng(0).permutation(table.num_rows)
    b = adapt_batch(art, table.take(pa.array(perm)), user_ids=users)
    torch.testing.assert_close(a.embeddings, b.embeddings, rtol=1e-5, atol=1e-6)


def test_bad_input_names_row_and_field():
    art = hand_artifacts()
    with pytest.raises(AdaptInputError, match=r"row 1: field 'rejected_id' names unknown response 'zz'"):
        adapt_one(art, {"chosen_id": ["r0", "r1"], "rejected_id": ["r1", "zz"]})
    with pytest.raises(AdaptInputError, match=r"row 0: fields 'chosen_id' and 'rejected_id' are the same"):
        adapt_one(art, {"chosen_id": ["r0"], "rejected_id": ["r0"]})
    with pytest.raises(AdaptInputError, match="missing field 'rejected_id'"):
        adapt_one(art, {"chosen_id": ["r0"]})
    with pytest.raises(AdaptInputError, match="not among the users"):
        adapt_batch(art, pa.table({"user_id": ["a"], "chosen_id": ["r0"], "rejected_id": ["r1"]}),
                    user_ids=["b"])


def test_alignment_prefers_agreeing_neighbours():
    """Neighbours whose scores agree with u*'s answers get more weight than those that disagree."""
    art = hand_artifacts(dim=2)
    art.e_resp[:] = 0
    art.e_resp[0] = torch.tensor([1.0, 0.0])   # u* chose r0 over r1 and r4 over r5
    art.e_resp[4] = torch.tensor([1.0, 0.0])
    art.e_user[:] = torch.tensor([-1.0, 0.0])
    art.e_user[3] = torch.tensor([2.0, 0.0])   # the only neighbour predicting both answers
    res = adapt_one(art, _ann([(0, 1), (4, 5)]))
    assert res.neighbors[int(res.weights.argmax())] == 3 and res.weights.max() > 0.99


def test_load_gnn_artifacts_roundtrip(tmp_path):
    art = random_artifacts(seed=1)
    loaded = load_gnn_artifacts(write_gnn_dir(art, tmp_path / "gnn"))
    torch.testing.assert_close(loaded.e_user, art.e_user)
    assert loaded.graph.num_edges == art.graph.num_edges
    table = random_new_users(art, 5, 4)
    torch.testing.assert_close(adapt_batch(loaded, table).embeddings, adapt_batch(art, table).embeddings)


def test_naive_avg_is_unweighted_mean():
    art = hand_artifacts()
    table = pa.table({"user_id": ["x", "x"], "chosen_id": ["r0", "r4"], "rejected_id": ["r1", "r5"]})
    out = naive_avg(art, table)
    torch.testing.assert_close(out.embeddings[0], art.e_user[[0, 1, 3, 4]].mean(0))


def test_user_opt_fits_the_given_pairs():
    art = random_artifacts(seed=2)
    table = random_new_users(art, 6, 5, seed=9)
    users = sorted(set(table.column("user_id").to_pylist())) + ["nobody"]
    out = user_opt(art, table, user_ids=users, steps=50)
    idx = {u: i for i, u in enumerate(users)}
    pu = np.array([idx[u] for u in table.column("user_id").to_pylist()])
    c = art.response_index(table.column("chosen_id").to_pylist())
    r = art.response_index(table.column("rejected_id").to_pylist())
    delta = art.e_resp[c] - art.e_resp[r]
    before = (art.population_mean * delta).sum(-1)
    after = (out.embeddings[pu] * delta).sum(-1)
    assert torch.nn.functional.logsigmoid(after).sum() > torch.nn.functional.logsigmoid(before).sum() + 1
    torch.testing.assert_close(out.embeddings[-1], art.population_mean)


def test_batch_fallbacks_match_single_on_hand_graph():
    art = hand_artifacts()
    cases = {"k": [(0, 1)], "w": [(7, 2)], "g": [(5, 6)], "mix": [(5, 6), (7, 2)]}
    rows = [(u, f"r{a}", f"r{b}") for u, pairs in cases.items() for a, b in pairs]
    table = pa.table({"user_id": [r[0] for r in rows], "chosen_id": [r[1] for r in rows],
                      "rejected_id": [r[2] for r in rows]})
    p = AdaptParams(global_sample_size=3)
    batch = adapt_batch(art, table, p, user_ids=list(cases) + ["none"])
    assert batch.resolution.tolist() == ["khop", "widened", "global_sample", "widened", "population_mean"]
    for i, (u, pairs) in enumerate(cases.items()):
        one = adapt_one(art, _ann(pairs), p)
        assert one.resolution == batch.resolution[i] and one.n_neighbors == batch.n_neighbors[i]
        torch.testing.assert_close(one.embedding, batch.embeddings[i], rtol=1e-5, atol=1e-6)


def test_user_opt_gradient_matches_autograd():
    from copl_ray.adapt.baselines import eq5_grad

    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(3, 5, generator=gen, requires_grad=True)
    pu = torch.tensor([0, 0, 2, 1, 2])
    delta = torch.randn(5, 5, generator=gen)
    loss = -torch.nn.functional.logsigmoid((emb[pu] * delta).sum(-1)).sum() + 0.3 * emb.pow(2).sum()
    loss.backward()
    torch.testing.assert_close(eq5_grad(emb.detach(), pu, delta, 0.3), emb.grad)


def test_batch_bad_input_names_row_and_field():
    art = hand_artifacts()
    t = pa.table({"user_id": ["a", "a"], "chosen_id": ["r0", "r2"], "rejected_id": ["r1", "nope"]})
    with pytest.raises(AdaptInputError, match=r"row 1: field 'rejected_id' names unknown response 'nope'"):
        adapt_batch(art, t)
    t = pa.table({"user_id": ["a", "b"], "chosen_id": ["r0", "r2"], "rejected_id": ["r1", "r2"]})
    with pytest.raises(AdaptInputError, match=r"row 1: fields 'chosen_id' and 'rejected_id' are the same"):
        user_opt(art, t)
