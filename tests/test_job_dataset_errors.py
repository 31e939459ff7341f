"""Jobs that read a dataset report a bad row as one error line naming its file, row and field,
before any model is loaded or trained (no Ray needed: the dataset is checked first)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from copl_ray.data import append_annotations
from tests.job_loader import load_job


@pytest.mark.parametrize("job, keys", [
    ("evaluate", ["reward_dir={o}/missing-reward", "gnn_dir={o}/missing-gnn"]),
    ("train_reward", ["gnn_dir={o}/missing-gnn"]),
    ("train_gnn", []),
])
def test_bad_test_row_names_file_row_and_field(tiny_dataset, tmp_path, job, keys):
    path = append_annotations(tiny_dataset, "test", pa.table({
        "user_id": ["bob"], "prompt_id": ["p1"], "chosen_id": ["r1a"], "rejected_id": ["nope"]}))
    argv = [f"dataset={tiny_dataset}", f"output_dir={tmp_path / 'out'}", *(k.format(o=tmp_path) for k in keys)]
    with pytest.raises(SystemExit) as err:
        load_job(job).main(argv)
    msg = str(err.value)
    assert msg.startswith("error: ") and str(path) in msg
    assert "row 0: field 'rejected_id' names unknown response 'nope'" in msg


def test_evaluate_plots_skip_tsne_with_too_few_users(tiny_dataset, tmp_path):
    """4 seen users are a valid dataset; t-SNE needs 5 points. The plot is skipped with a reason
    instead of failing the job after every metric was computed."""
    from types import SimpleNamespace

    import torch

    from copl_ray.graph.id_map import IdMap

    ev = load_job("evaluate")
    cfg = ev.EvaluateConfig(dataset=str(tiny_dataset), reward_dir="r", output_dir=str(tmp_path))
    model = SimpleNamespace(user_buffer=torch.randn(4, 3), user_ids=IdMap(["alice", "bob", "carol", "dave"]))
    written = ev._plots(cfg, {None: model}, None, None, tmp_path)
    assert "tsne_users" not in written and "5" in written["tsne_users_skipped"]
    model.user_buffer = torch.randn(6, 3)
    model.user_ids = IdMap(["alice", "bob", "carol", "dave", "erin", "frank"])
    assert ev._plots(cfg, {None: model}, None, None, tmp_path)["tsne_users"] == "tsne_users.png"


def test_g_oracle_group_folders_are_distinct():
    """G-Oracle trains one model per group into groups/<folder> under a Ray run named after it:
    groups whose file-safe spellings coincide ('a b' and 'a_b', non-ASCII names, '' or '..')
    must not share a folder (the second run would overwrite, or resume, the first)."""
    groups = ["a b", "a_b", "日本", "中国", "", ".", "..", "long", "x/y"]
    folders = load_job("train_reward").group_folders(groups)
    assert set(folders) == set(groups) and len(set(folders.values())) == len(groups)
    assert folders["long"] == "long" and folders["a_b"] == "a_b"
    for name in folders.values():
        assert name and name.strip(".") and "/" not in name


def test_train_reward_checks_gnn_dir_before_starting_workers(tiny_dataset, tmp_path):
    """A missing gnn_dir, or one trained on another dataset (a train user without an embedding),
    is one error line from the driver, not a failure inside every Ray Train worker attempt."""
    import numpy as np

    from copl_ray.embeddings import write_embeddings

    job = load_job("train_reward")
    argv = [f"dataset={tiny_dataset}", f"output_dir={tmp_path / 'out'}"]
    with pytest.raises(SystemExit, match=r"missing-gnn/users.parquet: embedding file not found"):
        job.main([*argv, f"gnn_dir={tmp_path / 'missing-gnn'}"])
    gnn = tmp_path / "gnn"
    write_embeddings(gnn / "users.parquet", "user_id", ["alice", "bob", "carol"], np.zeros((3, 4)))
    with pytest.raises(SystemExit, match=r"no embedding for seen user 'dave' .*gnn/users.parquet"):
        job.main([*argv, f"gnn_dir={gnn}"])


@pytest.mark.integration
def test_cold_start_unseen_users_run_end_to_end(ray_session, tiny_dataset, tmp_path):
    """No fewshot folder: adapt_users gives every unseen user the population mean, and evaluate
    scores them on test_unseen (no 'no annotations to use' error from the empty fewshot)."""
    import shutil

    from tests.test_adapt_job import _gnn_dir_for

    shutil.rmtree(tiny_dataset / "annotations" / "fewshot")
    gnn = _gnn_dir_for(tiny_dataset, tmp_path / "gnn")
    m = load_job("adapt_users").main([f"dataset={tiny_dataset}", f"gnn_dir={gnn}",
                                      f"output_dir={tmp_path / 'adapt'}", "given_counts=[1]", "user_opt_steps=2"])
    assert m["resolution_counts"] == {"population_mean": 2}
    load_job("train_reward").main([f"dataset={tiny_dataset}", f"gnn_dir={gnn}", f"output_dir={tmp_path / 'rm'}",
                                   "model.backbone=tiny-llama", "max_length=32", "batch_size=4", "max_steps=1"])
    ev = load_job("evaluate").main([f"dataset={tiny_dataset}", f"gnn_dir={gnn}", f"reward_dir={tmp_path / 'rm'}",
                                    f"adapt_dir={tmp_path / 'adapt'}", f"output_dir={tmp_path / 'ev'}", "plots=false"])
    assert ev["unseen"]["available"] is True and ev["unseen"]["n_pairs"] == 2


@pytest.mark.integration
def test_train_reward_rerun_into_same_output_dir_trains_afresh(ray_session, tiny_dataset, tmp_path):
    """Ray Train V2 resumes a finished run of the same name and storage: a second train_reward into
    the same output_dir (another seed, or changed data) silently exported the first run's model
    with zero new steps ("resumed": true)."""
    from tests.test_adapt_job import _gnn_dir_for

    gnn = _gnn_dir_for(tiny_dataset, tmp_path / "gnn")
    args = [f"dataset={tiny_dataset}", f"gnn_dir={gnn}", f"output_dir={tmp_path / 'rm'}",
            "model.backbone=tiny-llama", "max_length=32", "batch_size=2", "max_steps=2"]
    first = load_job("train_reward").main([*args, "seed=1"])
    second = load_job("train_reward").main([*args, "seed=2"])
    assert first["resumed"] is False and second["resumed"] is False and second["steps"] == 2


def test_train_gnn_rejects_an_unknown_prompt_before_training(tiny_dataset, tmp_path):
    """The graph build reads only ids of users and responses; the full check also catches a test
    row whose prompt_id names no prompt, before Ray starts."""
    path = append_annotations(tiny_dataset, "test", pa.table({
        "user_id": ["bob"], "prompt_id": ["nope"], "chosen_id": ["r1a"], "rejected_id": ["r1b"]}))
    with pytest.raises(SystemExit) as err:
        load_job("train_gnn").main([f"dataset={tiny_dataset}", f"output_dir={tmp_path / 'out'}"])
    msg = str(err.value)
    assert msg.startswith("error: ") and str(path) in msg and "prompt_id" in msg
