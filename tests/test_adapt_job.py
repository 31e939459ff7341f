"""jobs/adapt_users.py end to end on the tiny dataset with a gnn_dir built from its train split."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from copl_ray.adapt.artifacts import GNNArtifacts
from copl_ray.config import load_config
from copl_ray.data import read_annotations, read_table
from copl_ray.embeddings import read_embeddings, read_embeddings_meta
from copl_ray.graph.id_map import IdMap
from copl_ray.graph.signed_graph import SignedGraph
from tests.adapt_helpers import write_gnn_dir


def _gnn_dir_for(dataset, out):
    users = read_table(dataset, "users")
    seen = pc.filter(users.column("user_id"), pc.equal(users.column("split"), "seen")).combine_chunks()
    umap, rmap = IdMap(seen), IdMap(read_table(dataset, "responses").column("response_id").combine_chunks())
    tr = read_annotations(dataset, "train")
    g = SignedGraph.from_triples(umap.lookup(tr.column("user_id")), rmap.lookup(tr.column("chosen_id")),
                                 rmap.lookup(tr.column("rejected_id")), len(umap), len(rmap))
    gen = torch.Generator().manual_seed(0)
    art = GNNArtifacts(umap.ids, rmap.ids, torch.randn(len(umap), 4, generator=gen),
                       torch.randn(len(rmap), 4, generator=gen), g)
    return write_gnn_dir(art, out)


def test_adapt_users_job_writes_contract_embeddings_and_metrics(tiny_dataset, tmp_path):
    from jobs.adapt_users import main

    gnn = _gnn_dir_for(tiny_dataset, tmp_path / "gnn")
    out = tmp_path / "adapt"
    metrics = main([f"dataset={tiny_dataset}", f"gnn_dir={gnn}", f"output_dir={out}", "given_counts=[1,2]",
                    "user_opt_steps=5"])
    ids, emb = read_embeddings(out / "users.parquet")
    assert ids.to_pylist() == ["erin", "frank"] and emb.shape == (2, 4) and np.isfinite(emb).all()
    assert read_embeddings_meta(out / "users.parquet")["method"] == "copl"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["n_unseen_users"] == 2 and 0 <= on_disk["unseen_accuracy"] <= 1
    assert set(on_disk["methods"]) == {"copl", "naive_avg", "user_opt"}
    assert set(on_disk["curve"]["copl"]) == {"1", "2"}
    assert set(on_disk["unseen_accuracy_by_group"]) == {"short", "long"}
    assert (out / "curve.png").stat().st_size > 1000 and (out / "config.yaml").is_file()
    assert sum(metrics["resolution_counts"].values()) == 2


def test_fewshot_holdout_scores_the_held_rows(tiny_dataset, tmp_path):
    from jobs.adapt_users import main

    gnn = _gnn_dir_for(tiny_dataset, tmp_path / "gnn")
    m = main([f"dataset={tiny_dataset}", f"gnn_dir={gnn}", f"output_dir={tmp_path / 'o'}", "compare=false",
              "fewshot_holdout=1"])
    # tiny: each unseen user has 1 fewshot row; holding it out leaves none -> population mean
    assert m["unseen_fewshot_holdout_pairs"] == 2 and m["resolution_counts"] == {"population_mean": 2}


def test_odd_hops_rejected_by_job_config(tmp_path):
    from jobs.adapt_users import AdaptUsersConfig

    with pytest.raises(Exception, match="even"):
        load_config(AdaptUsersConfig, None, ["dataset=d", "gnn_dir=g", f"output_dir={tmp_path}", "adapt.hops=3"])


def test_first_n_per_user_keeps_file_order():
    import pyarrow as pa

    from copl_ray.adapt.evaluation import first_n_per_user

    t = pa.table({"user_id": ["a", "b", "a", "a", "b"], "x": [0, 1, 2, 3, 4]})
    assert first_n_per_user(t, 2).column("x").to_pylist() == [0, 1, 2, 4]
    assert first_n_per_user(t, 1).column("x").to_pylist() == [0, 1]


def test_accuracy_report_counts_ties_half_and_in_graph_share():
    import pyarrow as pa

    from copl_ray.adapt.evaluation import accuracy_report
    from tests.adapt_helpers import hand_artifacts

    art = hand_artifacts(dim=2)
    art.e_resp[:] = 0
    art.e_resp[0] = torch.tensor([1.0, 0.0])
    emb = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    test = pa.table({"user_id": ["x", "y", "x"], "chosen_id": ["r0", "r0", "r2"], "rejected_id": ["r1", "r1", "r7"]})
    rep = accuracy_report(art, pa.array(["x", "y"]), emb, test, {"x": "g1", "y": "g2"})
    assert rep["accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert rep["by_group"] == {"g1": 0.75, "g2": 0.0}
    assert rep["in_graph"]["n_pairs"] == 3  # r7 has a negative edge, so it is in the graph


@pytest.mark.parametrize("split, rows, message", [
    ("fewshot", {"user_id": ["erin"], "chosen_id": ["r9"], "rejected_id": ["r1b"]},
     "row 0: field 'chosen_id' names unknown response 'r9'"),
    ("fewshot", {"user_id": ["alice"], "chosen_id": ["r1a"], "rejected_id": ["r1b"]},
     "row 0: field 'user_id' 'alice' is a seen user"),
    ("test_unseen", {"user_id": ["erin"], "chosen_id": ["r1a"], "rejected_id": ["nope"]},
     "row 0: field 'rejected_id' names unknown response 'nope'"),
    ("test_unseen", {"user_id": ["zed"], "chosen_id": ["r1a"], "rejected_id": ["r1b"]},
     "row 0: field 'user_id' 'zed' names an unknown user"),
])
def test_bad_unseen_rows_name_their_file(tiny_dataset, tmp_path, split, rows, message):
    """A bad row in a second shard: the error names that shard and the row within it (not the row
    of all shards concatenated), and is a one-line error, not a KeyError traceback."""
    import pyarrow as pa

    from copl_ray.data import append_annotations
    from jobs.adapt_users import main

    gnn = _gnn_dir_for(tiny_dataset, tmp_path / "gnn")
    path = append_annotations(tiny_dataset, split, pa.table({"prompt_id": ["p1"], **rows}))
    with pytest.raises(SystemExit) as err:
        main([f"dataset={tiny_dataset}", f"gnn_dir={gnn}", f"output_dir={tmp_path / 'o'}", "compare=false"])
    assert str(path) in str(err.value) and message in str(err.value)


def test_no_unseen_users_says_why_accuracy_is_missing(tmp_path):
    """A dataset without unseen users is valid (fewshot/test_unseen are then optional): the job
    writes an empty users.parquet and says why there is no accuracy instead of a bare null."""
    import pyarrow.compute as pc

    from copl_ray.data import write_dataset
    from jobs.adapt_users import main
    from tests.tiny_data import tiny_tables

    t = tiny_tables()
    users = t["users"].filter(pc.equal(t["users"].column("split"), "seen"))
    root = write_dataset(tmp_path / "d", t["prompts"], t["responses"], users,
                         {k: t["annotations"][k] for k in ("train", "test")})
    gnn = _gnn_dir_for(root, tmp_path / "gnn")
    m = main([f"dataset={root}", f"gnn_dir={gnn}", f"output_dir={tmp_path / 'o'}", "given_counts=[1]"])
    assert m["n_unseen_users"] == 0 and m["unseen_accuracy"] is None
    assert "no unseen users" in m["unseen_accuracy_reason"]
    on_disk = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert on_disk["unseen_accuracy"] is None and on_disk["unseen_accuracy_reason"]
    ids, emb = read_embeddings(tmp_path / "o" / "users.parquet")
    assert len(ids) == 0 and emb.shape == (0, 4)


def test_no_in_graph_test_pairs_says_why(tmp_path):
    """make_synthetic's default test_unseen pairs lie on held-out prompts, whose responses have no
    edge: the in-graph accuracy is then null with a reason, not a bare null."""
    import pyarrow as pa

    from copl_ray.data import write_dataset
    from jobs.adapt_users import main
    from tests.tiny_data import tiny_tables

    t = tiny_tables()
    responses = pa.concat_tables([t["responses"], pa.table({
        "response_id": ["r3a", "r3b"], "prompt_id": ["p2", "p2"], "text": ["new", "newer"]})])
    ann = dict(t["annotations"])
    ann["test_unseen"] = pa.table({"user_id": ["erin", "frank"], "prompt_id": ["p2", "p2"],
                                   "chosen_id": ["r3a", "r3b"], "rejected_id": ["r3b", "r3a"]})
    root = write_dataset(tmp_path / "d", t["prompts"], responses, t["users"], ann)
    gnn = _gnn_dir_for(root, tmp_path / "gnn")
    m = main([f"dataset={root}", f"gnn_dir={gnn}", f"output_dir={tmp_path / 'o'}", "given_counts=[1]",
              "user_opt_steps=2"])
    assert m["unseen_test_pairs"]["in_graph"] == 0 and m["unseen_accuracy_in_graph"] is None
    assert "no edge" in m["unseen_accuracy_in_graph_reason"]
    assert 0 <= m["unseen_accuracy"] <= 1


def test_gnn_dir_of_another_dataset_is_named(tiny_dataset, tmp_path):
    """A gnn_dir trained on another dataset: one error line naming the gnn_dir and the shard and
    row whose response it lacks (was: a row number into the concatenated shards, or a KeyError)."""
    from copl_ray.data import annotation_files
    from jobs.adapt_users import main
    from tests.adapt_helpers import hand_artifacts

    gnn = write_gnn_dir(hand_artifacts(), tmp_path / "other-gnn")
    with pytest.raises(SystemExit) as err:
        main([f"dataset={tiny_dataset}", f"gnn_dir={gnn}", f"output_dir={tmp_path / 'o'}", "compare=false"])
    msg = str(err.value)
    assert str(gnn) in msg and str(annotation_files(tiny_dataset, "fewshot")[0]) in msg
    assert "row 0: field 'chosen_id'" in msg and "'r0a'" in msg
