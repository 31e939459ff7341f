"""Load a ``jobs/<name>.py`` entry point as a module (jobs/ is not a package), for tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def load_job(name: str) -> ModuleType:
    """The module of ``jobs/<name>.py``, freshly executed."""
    spec = importlib.util.spec_from_file_location(f"_job_{name}", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
