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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny-tensor tests on one thread: with 2 OpenMP threads on a loaded 2-core
    machine a 150-step loop was measured at 16 s against 0.24 s on one thread (spin-waiting)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


@pytest.fixture(scope="session")
def small_ufp4(tmp_path_factory) -> Path:
    """200 users over 4 UF-P-4 groups, 16 annotations each on a 300-pair survey (dense overlap),
    for GNN training tests. Read-only: tests write their outputs elsewhere."""
    from copl_ray.data.synthetic import SyntheticSpec, generate_dataset

    root = tmp_path_factory.mktemp("gnn") / "ufp4"
    generate_dataset(SyntheticSpec(preset="ufp4", n_users=200, survey_size=300, n_unseen_users=4,
                                   test_pairs_per_unseen_user=5, seed=0), root)
    return root
