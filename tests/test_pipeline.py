"""jobs/pipeline.py: every stage runs once into one report; a rerun skips what is unchanged, a
changed key reruns that stage and what reads it, and a failed run resumes at the failed stage."""

from __future__ import annotations

import json

import pytest

from tests.job_loader import load_job

pytestmark = pytest.mark.integration

TINY = ["synthetic.preset=tldr", "synthetic.n_users=40", "synthetic.n_unseen_users=6", "synthetic.survey_size=80",
        "synthetic.test_pool=survey", "synthetic.test_pairs_per_unseen_user=10",
        "train_gnn.epochs=2", "train_gnn.grid=false", "train_gnn.num_workers=1",
        "train_reward.model.backbone=tiny-llama", "train_reward.lr=0.003", "train_reward.max_length=32",
        "train_reward.min_steps=0", "train_reward.max_steps=2", "train_reward.num_workers=1",
        "evaluate.plots=false", "evaluate.max_pairs=50"]


def _ran(metrics: dict) -> set[str]:
    return {name for name, s in metrics["stages"].items() if not s["skipped"]}


def test_pipeline_runs_every_stage_then_resumes(ray_session, tmp_path):
    out = tmp_path / "pipe"
    job = load_job("pipeline")
    first = job.main([*TINY, "methods=[copl, uniform]", f"output_dir={out}"])
    assert _ran(first) == {"data", "gnn", "adapt", "references", "reward_copl", "eval_copl",
                           "reward_uniform", "eval_uniform"}
    report = (out / "report.md").read_text()
    assert "| copl |" in report and "| uniform |" in report and "one shared preference" in report
    for method in ("copl", "uniform"):
        row = first["reward"][method]
        assert 0 <= row["seen"] <= 1 and 0 <= row["unseen"] <= 1
    assert 0 <= first["embeddings"]["CoPL GNN (Eq. 11 for unseen)"]["seen"] <= 1
    assert json.loads((out / "metrics.json").read_text())["reward"] == first["reward"]

    # Nothing changed: every stage is skipped and the figures are the same.
    again = job.main([*TINY, "methods=[copl, uniform]", f"output_dir={out}"])
    assert _ran(again) == set() and again["reward"] == first["reward"]
    assert again["embeddings"] == first["embeddings"]

    # A changed evaluate key reruns the evaluations only.
    changed = job.main([*TINY[:-1], "evaluate.max_pairs=40", "methods=[copl, uniform]", f"output_dir={out}"])
    assert _ran(changed) == {"eval_copl", "eval_uniform"}

    # Fewer references rerun the references only, and the report holds just those.
    fewer = job.main([*TINY[:-1], "evaluate.max_pairs=40", "references=[shared]", "methods=[copl, uniform]",
                      f"output_dir={out}"])
    assert _ran(fewer) == {"references"}
    assert "one shared preference" in fewer["embeddings"]
    assert not any("free embeddings" in name for name in fewer["embeddings"])

    # A stage failing at run time stops the run; once fixed, the run resumes there (upstream skipped).
    with pytest.raises(Exception):
        job.main([*TINY, "train_reward.fail_at_step=0", "train_reward.max_failures=0", "methods=[copl]",
                  f"output_dir={out}"])
    assert not (out / "reward_copl" / "pipeline_stage.json").exists()
    resumed = job.main([*TINY, "methods=[copl]", f"output_dir={out}"])
    assert _ran(resumed) == {"reward_copl", "eval_copl"}


def test_stage_argv_flattens_keys_and_refuses_to_override_paths(capsys):
    job = load_job("pipeline")
    argv = job.stage_argv({"config": "c.yaml", "a": 1, "b": {"c": [1, 2]}, "s": "x"}, output_dir="/o")
    assert argv == ["--config", "c.yaml", "a=1", "b.c=[1, 2]", "s=x", "output_dir=/o"]
    with pytest.raises(SystemExit, match="output_dir"):
        job.stage_argv({"output_dir": "elsewhere"}, output_dir="/o")
    with pytest.raises(SystemExit):
        job.main(["methods=[copl, best]", "output_dir=/tmp/never"])
    assert "methods" in capsys.readouterr().err


def test_dataset_signature_follows_the_files(tmp_path):
    job = load_job("pipeline")
    (tmp_path / "annotations").mkdir()
    shard = tmp_path / "annotations" / "a.parquet"
    shard.write_bytes(b"x")
    first = job.dataset_signature(tmp_path)
    assert job.dataset_signature(tmp_path) == first
    (tmp_path / "annotations" / "b.parquet").write_bytes(b"y")  # an appended shard (onboarding)
    assert job.dataset_signature(tmp_path) != first
    with pytest.raises(SystemExit, match="not a directory"):
        job.dataset_signature(tmp_path / "missing")


def test_a_typo_in_a_late_stage_fails_before_anything_runs(tmp_path, capsys):
    job = load_job("pipeline")
    with pytest.raises(SystemExit, match=r"(?s)stage evaluate.*max_pair"):
        job.main([*TINY, "evaluate.max_pair=3", f"output_dir={tmp_path / 'o'}"])
    assert not (tmp_path / "o" / "data").exists()  # the first stage never started
    capsys.readouterr()
    with pytest.raises(SystemExit):
        job.main([*TINY, "references=[shared, nope]", f"output_dir={tmp_path / 'o'}"])
    assert "references: Value error" in capsys.readouterr().err
