"""Shared fixtures: one local Ray instance per test session (loopback only), tiny datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A 2-CPU local Ray shared by all integration tests (ENVIRONMENT.md: auth off, own HOME)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture()
def tiny_dataset(tmp_path) -> Path:
    """A hand-made valid dataset: 4 seen users, 2 unseen, 6 responses over 3 prompts."""
    from tests.tiny_data import write_tiny_dataset

    return write_tiny_dataset(tmp_path / "tiny")
