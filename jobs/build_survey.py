"""Build a survey set (paper Sec. 3: S = {(q_i, a_i, b_i)}) from a prompt collection.

    python jobs/build_survey.py prompts=P.jsonl output_dir=D                      # tiny random model
    python jobs/build_survey.py --config configs/build_survey/cpu_tiny.yaml prompts=P.parquet output_dir=D
    python jobs/build_survey.py ... backend=vllm 'models=[{name: m1, path: /ckpt/m1}, {name: m2, path: /ckpt/m2}]'

Steps: read the prompts (Parquet or JSON lines: ``prompt_id``, ``text``); for each model, sample
``sampling.n`` candidates per prompt through Ray Data, with vLLM (Ray Data LLM, in the vLLM env:
``make vllm-env``) or transformers ``generate`` (``backend=auto`` picks vLLM where found), written in
per-shard files so a restarted run skips what is done; drop over-long, duplicate and near-duplicate
candidates (MiniLM); build pairs per prompt (all, or the most informative / random
``pairs.max_pairs_per_prompt``). Writes ``prompts.parquet``, ``responses.parquet``, ``pairs.parquet``
(docs/ARCHITECTURE.md, "Optional dataset files") into ``output_dir``; with ``label.n_users`` > 0 also
simulated users and annotations (`copl_ray.survey_build.label`), validated, so ``train_gnn`` can
run on it. ``metrics.json``: counts, what was dropped and why, tokens/s per model; ``config.yaml``.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import Field, model_validator  # noqa: E402

from copl_ray.config import JobConfig, parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.dataset import exit_on_dataset_error, validate_dataset  # noqa: E402
from copl_ray.data.importers.common import SimulationPlan  # noqa: E402
from copl_ray.runtime import init_ray  # noqa: E402
from copl_ray.survey_build.backends import choose_backend, generate_candidates  # noqa: E402
from copl_ray.survey_build.generate import (  # noqa: E402
    GenerationPlan, ResumeError, check_manifest, read_generations, run_generation,
)
from copl_ray.survey_build.prompts import prompts_fingerprint, read_prompts  # noqa: E402
from copl_ray.survey_build.spec import (  # noqa: E402
    TINY_RANDOM, ModelSpec, PairSpec, SamplingSpec, TransformersSpec, VLLMSpec,
)


class LabelSpec(JobConfig):
    """Simulated annotations (short / long groups, `copl_ray.survey_build.label`); 0 users: none."""

    n_users: int = Field(0, ge=0, description="seen users; 0 writes no users or annotations")
    n_unseen_users: int = Field(4, ge=0)
    n_context: int = Field(8, ge=1, description="survey annotations per seen user (and few-shot per unseen)")
    annotations: str = Field("all", pattern="^(all|avg)$")
    n_test: int = Field(4, ge=1)
    n_unseen_test: int = Field(4, ge=1)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of prompts held out as the test pool")
    seed: int = Field(0, ge=0)


class BuildSurveyConfig(JobConfig):
    """jobs/build_survey.py: candidate responses through Ray Data (vLLM or transformers) into survey pairs."""

    prompts: str = Field(description="Parquet / JSON-lines file (or folder) with prompt_id, text")
    output_dir: str = "runs/survey"
    backend: str = Field("auto", pattern="^(auto|vllm|transformers)$")
    models: list[ModelSpec] = Field(default_factory=lambda: [ModelSpec(name="tiny-random", path=TINY_RANDOM)])
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    chat_template: bool = Field(True, description="wrap prompts in the tokenizer's chat template")
    shard_size: int = Field(16, ge=1, description="prompts per resumable shard")
    resume: bool = Field(True, description="false: delete earlier shards and start over")
    max_prompts: int | None = Field(None, ge=1)
    vllm: VLLMSpec = Field(default_factory=VLLMSpec)
    transformers: TransformersSpec = Field(default_factory=TransformersSpec)
    pairs: PairSpec = Field(default_factory=PairSpec)
    label: LabelSpec = Field(default_factory=LabelSpec)
    embed_cpus: float = Field(1.0, gt=0, description="CPUs of the MiniLM embedding actor")

    @model_validator(mode="after")
    def _check(self):
        names = [m.name for m in self.models]
        if not names:
            raise ValueError("models: give at least one model")
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must differ, got {names}")
        return self


def _model_path(cfg: BuildSurveyConfig, model: ModelSpec) -> str:
    """The checkpoint folder of ``model`` (``random:tiny`` is built under output_dir/models)."""
    if model.path == TINY_RANDOM:
        from copl_ray.survey_build.tiny_model import write_random_causal_lm

        return str(write_random_causal_lm(Path(cfg.output_dir) / "models" / model.name, "tiny", cfg.sampling.seed))
    if not Path(model.path).is_dir():
        raise SystemExit(f"error: models.path {model.path!r} (model {model.name!r}): no such checkpoint folder"
                         f" (local folders only; {TINY_RANDOM!r} builds a tiny random model)")
    return str(Path(model.path).resolve())


def main(argv=None) -> dict:
    cfg = parse_job_args(BuildSurveyConfig, argv)
    out = Path(cfg.output_dir)
    t_start = time.perf_counter()
    with exit_on_dataset_error():
        prompts = read_prompts(cfg.prompts, cfg.max_prompts)
    try:
        backend = choose_backend(cfg.backend, cfg.vllm)
    except RuntimeError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"build_survey: {prompts.num_rows} prompts, backend {backend.name} ({backend.reason})")
    paths = {m.name: _model_path(cfg, m) for m in cfg.models}
    manifest = {"prompts": prompts_fingerprint(prompts), "shard_size": cfg.shard_size,
                "sampling": cfg.sampling.model_dump(), "chat_template": cfg.chat_template,
                "models": {m.name: {"path": m.path, "n": m.n or cfg.sampling.n} for m in cfg.models}}
    try:
        check_manifest(out, manifest, cfg.resume)
    except ResumeError as exc:
        raise SystemExit(f"error: {exc}") from None
    init_ray()
    generation, tables = {}, []
    for m in cfg.models:
        plan = GenerationPlan(m.name, paths[m.name], m.n or cfg.sampling.n, cfg.shard_size, cfg.sampling.seed, prompts)

        def generate(ds, path=paths[m.name]):
            return generate_candidates(ds, backend, path, cfg.sampling, cfg.vllm, cfg.transformers, cfg.chat_template)

        generation[m.name] = run_generation(out, plan, generate, cfg.vllm.timeout_s)
        tables.append(read_generations(out, plan))
    import pyarrow as pa

    from copl_ray.survey_build.assemble import assemble_survey

    t0 = time.perf_counter()
    survey = assemble_survey(out, prompts, pa.concat_tables(tables), cfg.pairs, cfg.embed_cpus)
    survey["seconds"] = round(time.perf_counter() - t0, 3)
    metrics = {"backend": backend.name, "backend_reason": backend.reason, "prompts": prompts.num_rows,
               "generation": generation, "survey": survey}
    if cfg.label.n_users:
        from copl_ray.survey_build.label import label_survey

        lab = cfg.label
        plan = SimulationPlan(n_users=lab.n_users, n_unseen_users=lab.n_unseen_users, n_context=lab.n_context,
                              annotations=lab.annotations, n_test=lab.n_test, n_unseen_test=lab.n_unseen_test)
        with exit_on_dataset_error():
            metrics["label"] = label_survey(out, plan, lab.test_fraction, lab.seed)
            metrics["label"]["validated_annotations"] = validate_dataset(out).n_annotations
    elif (out / "users.parquet").exists() or (out / "annotations").exists():
        print(f"build_survey: warning: {out} still holds users.parquet / annotations/ of an earlier run;"
              " they may name responses this run dropped (label.n_users > 0 rewrites them)")
    metrics["seconds_total"] = round(time.perf_counter() - t_start, 3)
    write_resolved_config(cfg, out)
    write_metrics(metrics, out)
    print(f"build_survey: {survey['responses']} responses, {survey['pairs']} pairs -> {out}"
          f" (dropped {survey['dropped']})")
    return metrics


if __name__ == "__main__":
    main()
