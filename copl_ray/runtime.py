"""What every entry point under ``jobs/`` shares: joining Ray, and loading another job.

``init_ray()`` is the one ``ray.init`` of the jobs. Under ``ray job submit`` (``RAY_ADDRESS`` set by
the job supervisor) it joins that cluster; run alone it starts a local instance. Ray's own logging
setup and the workers' stdout are left out of the job's console (the jobs print what they
measure); usage stats are off because nothing here may reach the network.

``load_job(name)`` executes ``jobs/<name>.py`` as a module (``jobs/`` is a folder of scripts, not a
package), so a pipeline or a benchmark runs a job exactly as ``python jobs/<name>.py`` would:
``load_job("train_gnn").main(["dataset=D", "output_dir=O"])``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

__all__ = ["JOBS_DIR", "init_ray", "largest_node_cpus", "load_job", "job_config_model"]

JOBS_DIR = Path(__file__).resolve().parents[1] / "jobs"


def init_ray(**kwargs):
    """``ray`` after joining (or starting) a cluster once per process; ``kwargs`` go to ray.init."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(**{"configure_logging": False, "log_to_driver": False, **kwargs})
    return ray


def largest_node_cpus() -> int:
    """CPUs of the alive cluster node with the most (Ray's resource view); 1 if none reports any."""
    import ray

    cpus = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(max(cpus, default=1)))


def load_job(name: str) -> ModuleType:
    """The module of ``jobs/<name>.py``, freshly executed (its ``main(argv)`` runs the job)."""
    path = JOBS_DIR / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no job {name!r}: {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_job_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def job_config_model(module: ModuleType) -> type:
    """The job's config model: the one `JobConfig` subclass of ``module`` with an ``output_dir``."""
    from copl_ray.config import JobConfig

    models = {obj for obj in vars(module).values()
              if isinstance(obj, type) and issubclass(obj, JobConfig) and obj is not JobConfig
              and "output_dir" in obj.model_fields}
    if len(models) != 1:
        raise TypeError(f"{module.__name__}: expected one job config model, found {models}")
    return models.pop()
