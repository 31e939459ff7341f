"""Tests load ``jobs/<name>.py`` the way the pipeline and the benchmarks do."""

from copl_ray.runtime import load_job

__all__ = ["load_job"]
