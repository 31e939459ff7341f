"""SignedGraph, IdMap and embedding files: structure, norms, persistence."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from copl_ray.embeddings import read_embeddings, read_embeddings_meta, write_embeddings
from copl_ray.graph import IdMap, SignedGraph


def _graph():
    # user 0 chose r0 over r1 twice (duplicate edge) and r2 over r1; user 1 chose r1 over r0.
    return SignedGraph.from_triples(
        user=[0, 0, 0, 1], chosen=[0, 0, 2, 1], rejected=[1, 1, 1, 0], n_users=3, n_responses=4
    )


def test_edges_are_deduplicated_and_signed():
    g = _graph()
    assert list(zip(g.pos_user.tolist(), g.pos_response.tolist())) == [(0, 0), (0, 2), (1, 1)]
    assert list(zip(g.neg_user.tolist(), g.neg_response.tolist())) == [(0, 1), (1, 0)]
    du, dr = g.degrees(positive=True)
    assert du.tolist() == [2, 1, 0] and dr.tolist() == [1, 1, 1, 0]
    # alpha = 1/sqrt(|N+_u| |N+_r|)
    np.testing.assert_allclose(g.edge_norm(True).numpy(), [2 ** -0.5, 2 ** -0.5, 1.0])
    np.testing.assert_allclose(g.edge_norm(False).numpy(), [1.0, 1.0])


def test_positive_csr_both_ways():
    g = _graph()
    indptr, idx = g.positive_csr("user")
    assert indptr.tolist() == [0, 2, 3, 3] and idx.tolist() == [0, 2, 1]
    indptr, idx = g.positive_csr("response")
    assert indptr.tolist() == [0, 1, 2, 3, 3] and idx.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="by must be"):
        g.positive_csr("edge")


def test_out_of_range_indices_are_rejected():
    with pytest.raises(ValueError, match=r"chosen index out of range \[0, 2\)"):
        SignedGraph.from_triples([0], [5], [1], n_users=1, n_responses=2)


def test_edge_order_does_not_change_the_graph():
    rng = np.random.default_rng(0)
    u, a, b = rng.integers(0, 50, 300), rng.integers(0, 40, 300), rng.integers(0, 40, 300)
    keep = a != b
    u, a, b = u[keep], a[keep], b[keep]
    perm = rng.permutation(len(u))
    g1 = SignedGraph.from_triples(u, a, b, 50, 40)
    g2 = SignedGraph.from_triples(u[perm], a[perm], b[perm], 50, 40)
    for name in ("pos_user", "pos_response", "neg_user", "neg_response"):
        assert torch.equal(getattr(g1, name), getattr(g2, name))


def test_sorted_unique_matches_numpy():
    from copl_ray.graph.signed_graph import sorted_unique

    keys = np.random.default_rng(1).integers(0, 1000, 5000)
    assert np.array_equal(sorted_unique(keys), np.unique(keys))
    assert sorted_unique(np.array([], dtype=np.int64)).size == 0


def test_graph_save_load(tmp_path):
    g = _graph()
    g.save(tmp_path)
    h = SignedGraph.load(tmp_path)
    assert (h.n_users, h.n_responses) == (3, 4)
    assert torch.equal(h.pos_response, g.pos_response) and torch.equal(h.neg_user, g.neg_user)
    with pytest.raises(FileNotFoundError, match="no graph file"):
        SignedGraph.load(tmp_path / "nowhere")


def test_id_map_lookup_and_round_trip(tmp_path):
    m = IdMap(["u-b", "u-a", "u-c"])
    assert m.lookup(pa.array(["u-c", "u-b"])).tolist() == [2, 0]
    with pytest.raises(KeyError, match=r"unknown user 'zz' \(1 unknown\)"):
        m.lookup(["u-a", "zz"], what="user")
    with pytest.raises(ValueError, match="unique"):
        IdMap(["x", "x"])
    m.save(tmp_path / "ids.parquet")
    assert IdMap.load(tmp_path / "ids.parquet").ids.to_pylist() == ["u-b", "u-a", "u-c"]


def test_embedding_files_round_trip_with_contract_types(tmp_path):
    import pyarrow.parquet as pq

    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = write_embeddings(tmp_path / "users.parquet", "user_id", ["a", "b", "c"], emb,
                            extra_columns={"resolution": ["khop", "khop", "fallback"]},
                            meta={"k": 2})
    schema = pq.read_schema(path)
    assert schema.field("user_id").type == pa.string()
    assert schema.field("embedding").type == pa.list_(pa.float32(), 4)
    ids, back = read_embeddings(path)
    assert ids.to_pylist() == ["a", "b", "c"] and np.array_equal(back, emb)
    assert read_embeddings_meta(path) == {"k": 2}
    emb[1, 2] = np.nan
    with pytest.raises(ValueError, match="row 1 is not finite"):
        write_embeddings(tmp_path / "bad.parquet", "user_id", ["a", "b", "c"], emb)
