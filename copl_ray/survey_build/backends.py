"""The two generation backends behind one interface, and which one a run gets.

A backend turns a Ray Dataset of *requests*, one row per candidate to sample::

    prompt_id: str, prompt: str, shard: int, candidate: int, seed: int

into a Dataset of *candidates* with the same ``prompt_id``, ``shard``, ``candidate`` plus
``response: str`` and ``n_tokens: int``. One row is one candidate (not ``n`` per prompt): Ray 2.60's
vLLM stage keeps only ``outputs[0]`` of each request (``vLLMOutputData.from_vllm_engine_output``), so
``n`` candidates are ``n`` requests with their own seeds; vLLM's prefix cache shares the prompt.

``vllm``: Ray Data LLM (`copl_ray.survey_build.vllm_backend`), its stages run in the vLLM
environment. ``transformers``: ``generate`` in a Ray Data actor (`copl_ray.survey_build.hf_backend`),
importable from the core install. ``auto`` takes vllm where an environment with it is found.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from copl_ray.survey_build.spec import SamplingSpec, TransformersSpec, VLLMSpec

__all__ = ["REPO_ROOT", "BackendChoice", "choose_backend", "generate_candidates", "vllm_python", "has_vllm"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VLLM_VENV = REPO_ROOT / ".venv-vllm"


@dataclass(frozen=True)
class BackendChoice:
    """The backend a run uses: ``name`` (``vllm`` | ``transformers``), the python of the vLLM
    stages (None: this interpreter or the runtime env given) and why it was chosen."""

    name: str
    python: str | None
    reason: str


def has_vllm(python: str | None) -> bool:
    """Whether ``python`` (None: this interpreter) can import vllm (looked up, not imported: fast)."""
    if python is None:
        return importlib.util.find_spec("vllm") is not None
    if not Path(python).is_file():
        return False
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0


def vllm_python(spec: VLLMSpec) -> str | None:
    """The python of the vLLM stages: ``spec.python``, else ``.venv-vllm/bin/python`` if present,
    else None (this interpreter, or whatever ``spec.runtime_env`` provides)."""
    if spec.python:
        return spec.python
    default = DEFAULT_VLLM_VENV / "bin" / "python"
    return str(default) if default.is_file() else None


def choose_backend(requested: str, spec: VLLMSpec) -> BackendChoice:
    """Resolve ``requested`` (``auto`` | ``vllm`` | ``transformers``).

    Raises:
        RuntimeError: ``vllm`` was requested and no environment with vllm was found.
    """
    if requested == "transformers":
        return BackendChoice("transformers", None, "requested")
    python = vllm_python(spec)
    found = has_vllm(python)  # a subprocess probe: once
    if spec.runtime_env and not spec.python and not found:
        # A runtime env (container, pip) brings vllm with it: trust it rather than probe.
        return BackendChoice("vllm", None, "vllm.runtime_env given")
    if found:
        return BackendChoice("vllm", python, f"vllm found in {python or sys.executable}")
    where = python or sys.executable
    if requested == "vllm":
        raise RuntimeError(f"backend=vllm but {where} cannot import vllm: build the vLLM env with"
                           " `make vllm-env` (.venv-vllm), or set vllm.python / vllm.runtime_env")
    return BackendChoice("transformers", None, f"no vllm in {where} (make vllm-env builds one)")


def generate_candidates(requests, backend: BackendChoice, model_path: str, sampling: SamplingSpec,
                        vllm: VLLMSpec, hf: TransformersSpec, chat_template: bool):
    """The candidates Dataset of ``requests`` (rows as in the module docstring) from ``model_path``."""
    if backend.name == "vllm":
        from copl_ray.survey_build.vllm_backend import vllm_candidates

        return vllm_candidates(requests, model_path, sampling, vllm, backend.python, chat_template)
    from copl_ray.survey_build.hf_backend import hf_candidates

    return hf_candidates(requests, model_path, sampling, hf, chat_template)
