"""jobs/make_synthetic.py: the issue's acceptance command, determinism, resolved config, CLI errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from copl_ray.config import load_config
from copl_ray.data.dataset import validate_dataset
from tests.job_loader import load_job

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "make_synthetic.py"


def _job():
    return load_job("make_synthetic")


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.parquet"))}


def test_acceptance_command_is_valid_and_deterministic(tmp_path):
    job = _job()
    args = ["preset=ufp4", "n_users=2000", "annotations=avg", "seed=1"]
    m1 = job.main(args + [f"output_dir={tmp_path / 'a'}"])
    job.main(args + [f"output_dir={tmp_path / 'b'}"])
    summary = validate_dataset(tmp_path / "a")
    assert summary.n_seen_users == 2000 and summary.n_unseen_users == 100
    assert m1["validated"] is True and summary.n_annotations == m1["annotations"]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b"), "same seed gave different files"
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["survey_size"] == 25_993 and metrics["group_sizes"] == {
        "helpfulness": 500, "honesty": 500, "instruction_following": 500, "truthfulness": 500}
    # The resolved config repeats the run: preset defaults are written out, not left null.
    resolved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert resolved["survey_size"] == 25_993 and resolved["annotations_per_user"] == 16
    again = load_config(job.MakeSyntheticConfig, tmp_path / "a" / "config.yaml")
    assert again.model_dump() == job.MakeSyntheticConfig.model_validate(resolved).model_dump()


@pytest.mark.parametrize("preset", ["tldr", "ufp2", "ufp4", "personalllm"])
def test_cli_with_preset_config(tmp_path, preset):
    out = tmp_path / preset
    proc = subprocess.run(
        [sys.executable, str(JOB), "--config", str(ROOT / "configs" / "make_synthetic" / f"{preset}.yaml"),
         "n_users=60", "n_unseen_users=8", f"output_dir={out}"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert validate_dataset(out).n_seen_users == 60
    assert yaml.safe_load((out / "config.yaml").read_text())["preset"] == preset


def test_cli_bad_override_names_the_field(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(JOB), "preset=ufp2", "group_ratios=[1, 2, 3]", f"output_dir={tmp_path}"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "group_ratios" in proc.stderr and "helpfulness" in proc.stderr
    assert not (tmp_path / "annotations").exists()
