"""Every YAML under configs/ validates against its job's config model.

Convention: ``configs/<job>.yaml`` and ``configs/<job>/**/*.yaml`` belong to ``jobs/<job>.py``;
the job's config model is the `JobConfig` subclass in that module with an ``output_dir`` field.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from copl_ray.config import JobConfig, load_config
from copl_ray.runtime import job_config_model
from tests.job_loader import load_job

ROOT = Path(__file__).resolve().parents[1]
# configs/serve/ holds Serve deploy files, validated by tests/test_serve_config.py.
YAMLS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.relative_to(ROOT / "configs").parts[0] != "serve")


def _job_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "configs")
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _config_model(job: str) -> type[JobConfig]:
    return job_config_model(load_job(job))


def test_there_are_configs():
    assert YAMLS, "configs/ holds no YAML"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_validates(path):
    job = _job_name(path)
    assert (ROOT / "jobs" / f"{job}.py").is_file(), f"{path}: no job jobs/{job}.py"
    load_config(_config_model(job), path)
