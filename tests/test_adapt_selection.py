"""Choosing adaptation's hops and kappa on the few-shot pairs (copl_ray.adapt.selection, adapt_users)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from copl_ray.adapt.core import AdaptParams
from copl_ray.adapt.selection import _folds, candidate_params, cross_validate
from tests.adapt_helpers import random_artifacts, random_new_users
from tests.job_loader import load_job


def test_folds_split_each_users_rows_and_skip_single_rows():
    t = pa.table({"user_id": ["a", "b", "a", "a", "c", "c"]})
    assert _folds(t).tolist() == [0, -1, 1, 0, 0, 1]


def test_explicit_params_are_not_varied():
    assert len(candidate_params(AdaptParams(), [2, 4], [0.07, 1.0])) == 4
    pinned = candidate_params(AdaptParams(kappa=0.5), [2, 4], [0.07, 1.0])
    assert [(p.hops, p.kappa) for p in pinned] == [(2, 0.5), (4, 0.5)]


def test_cross_validation_scores_every_held_out_row_once_per_candidate():
    art = random_artifacts(n_users=80, n_responses=50, n_pairs=400, seed=3)
    fewshot = random_new_users(art, n_users=30, max_pairs=6, seed=4)
    users = pa.array(sorted(set(fewshot.column("user_id").to_pylist())))
    rows = cross_validate(art, fewshot, users, candidate_params(AdaptParams(), [2], [0.07, 10.0]))
    multi = (_folds(fewshot) >= 0).sum()
    assert [r["n_pairs"] for r in rows] == [multi, multi]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows) and [r["kappa"] for r in rows] == [0.07, 10.0]
    few = cross_validate(art, fewshot, users, candidate_params(AdaptParams(), [2], [0.07]), max_users=5)
    assert 0 < few[0]["n_pairs"] < multi


def test_job_picks_the_best_candidate_and_never_reads_test_unseen(tmp_path):
    """Two datasets that differ only in test_unseen's labels get the same choice and embeddings."""
    import shutil

    import pyarrow.parquet as pq

    from copl_ray.data.latent_suite import LatentCase, generate_latent_dataset
    from copl_ray.embeddings import read_embeddings
    from tests.test_adapt_job import _gnn_dir_for

    data, flipped = tmp_path / "data", tmp_path / "flipped"
    generate_latent_dataset(LatentCase(n_users=120, n_unseen_users=20, n_pairs=150, seed=1), data)
    shutil.copytree(data, flipped)
    for path in (flipped / "annotations" / "test_unseen").glob("*.parquet"):
        t = pq.read_table(path)
        c, r = t.column("chosen_id"), t.column("rejected_id")
        pq.write_table(t.set_column(t.schema.get_field_index("chosen_id"), "chosen_id", r)
                        .set_column(t.schema.get_field_index("rejected_id"), "rejected_id", c), path)
    gnn = _gnn_dir_for(data, tmp_path / "gnn")
    job = load_job("adapt_users")
    args = ["compare=false", "hops_candidates=[2,4]", "kappa_candidates=[0.07,0.01,1.0]"]
    a = job.main([f"dataset={data}", f"gnn_dir={gnn}", f"output_dir={tmp_path / 'a'}", *args])
    b = job.main([f"dataset={flipped}", f"gnn_dir={gnn}", f"output_dir={tmp_path / 'b'}", *args])
    sel = a["selection"]
    assert len(sel["candidates"]) == 6
    best = max(r["accuracy"] for r in sel["candidates"])
    first_best = next(r for r in sel["candidates"] if r["accuracy"] == best)
    assert sel["chosen"] == {"hops": first_best["hops"], "kappa": first_best["kappa"]}
    assert (a["hops"], a["kappa"]) == (first_best["hops"], first_best["kappa"])
    assert {k: v for k, v in b["selection"].items() if k != "seconds"} == {k: v for k, v in sel.items() if k != "seconds"}
    np.testing.assert_array_equal(read_embeddings(tmp_path / "a" / "users.parquet")[1],
                                  read_embeddings(tmp_path / "b" / "users.parquet")[1])
    assert abs(a["unseen_accuracy"] + b["unseen_accuracy"] - 1.0) < 1e-6
    assert "kappa: " + str(first_best["kappa"]) in (tmp_path / "a" / "config.yaml").read_text()
    pinned = job.main([f"dataset={data}", f"gnn_dir={gnn}", f"output_dir={tmp_path / 'c'}", *args,
                       "adapt.kappa=0.5", "adapt.hops=2"])
    assert pinned["kappa"] == 0.5 and pinned["hops"] == 2 and len(pinned["selection"]["candidates"]) == 1
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["selection"]["chosen"]["kappa"] == 0.5
