"""The Serve application builder: a typed args model, the three deployments wired together.

    serve run serve.app:build_app gnn_dir=G reward_dir=R store_path=S [adapt_dir=A] [dataset=D]
    serve deploy configs/serve/default.yaml

`build_app` takes one pydantic-annotated parameter, so Serve validates ``key=value`` args (and a
YAML's ``args:``) into `AppArgs` before anything starts; a typo is an error naming the key.
`run_app` starts the same app from Python (tests, ``jobs/bench_serve.py``) on ``host:port``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from copl_ray.serving.protocol import Limits

__all__ = ["AppArgs", "ScorerOptions", "OnboardingOptions", "build_app", "run_app"]


class ScorerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=1, description="requests per forward (@serve.batch)")
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    max_ongoing_requests: int = Field(64, ge=1, description="must be >= max_batch_size (ENVIRONMENT.md)")
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="set 1 on a GPU node; device=auto then uses it")
    device: str = Field("auto", description="auto = cuda when present, else cpu")
    torch_threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _batches_can_fill(self):
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"scorer.max_ongoing_requests ({self.max_ongoing_requests}) must be >= "
                             f"scorer.max_batch_size ({self.max_batch_size}): a replica never holds more "
                             "requests than max_ongoing_requests, so batches would never fill")
        return self


class OnboardingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    max_ongoing_requests: int = Field(8, ge=1)
    upscale_delay_s: float = Field(3.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    num_cpus: float = Field(0.5, ge=0)
    survey_candidates: int = Field(4000, ge=1, description="same-prompt pairs the survey selector scores")
    adapt: dict | None = Field(None, description="AdaptParams fields (hops, kappa, ...)")
    seed: int = 0

    @model_validator(mode="after")
    def _range(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"onboarding.max_replicas ({self.max_replicas}) < onboarding.min_replicas "
                             f"({self.min_replicas})")
        return self

    def autoscaling_config(self) -> dict:
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s}


class AppArgs(BaseModel):
    """Arguments of the serving application (CONTRACT section 4)."""

    model_config = ConfigDict(extra="forbid")

    gnn_dir: str = Field(description="a train_gnn output")
    reward_dir: str = Field(description="a train_reward output")
    store_path: str = Field(description="the SQLite user store (created if absent; survives restarts)")
    adapt_dir: str | None = Field(None, description="an adapt_users output: its users are served too")
    dataset: str | None = Field(None, description="texts of survey pairs; default: gnn_dir's config.yaml dataset")
    bearer_token: str | None = Field(None, description="if set, every endpoint but health needs it")
    host: str = Field("127.0.0.1", description="run_app binds here (serve run: --host; YAML: http_options)")
    port: int = Field(8000, ge=0, le=65535)
    limits: Limits = Field(default_factory=Limits)
    scorer: ScorerOptions = Field(default_factory=ScorerOptions)
    onboarding: OnboardingOptions = Field(default_factory=OnboardingOptions)
    api_num_cpus: float = Field(0.0, ge=0)

    def check_paths(self) -> None:
        """The folders exist (checked when the app is built, not when a YAML is validated)."""
        for name in ("gnn_dir", "reward_dir", "adapt_dir", "dataset"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_dir():
                raise ValueError(f"{name}: {value} is not a directory")


def build_app(args: AppArgs):
    """The application: ``Api`` (ingress) -> ``Scorer`` (batched) and ``Onboarding`` (autoscaled)."""
    from copl_ray.serving.core import dataset_of
    from copl_ray.serving.deployments import Api, Onboarding, Scorer

    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    args.check_paths()
    absolute = lambda p: str(Path(p).resolve()) if p else None  # noqa: E731
    gnn_dir, reward_dir, adapt_dir = absolute(args.gnn_dir), absolute(args.reward_dir), absolute(args.adapt_dir)
    store_path = absolute(args.store_path)
    dataset = absolute(args.dataset or dataset_of(gnn_dir))
    s, o = args.scorer, args.onboarding
    scorer = Scorer.options(
        num_replicas=s.num_replicas, max_ongoing_requests=s.max_ongoing_requests,
        ray_actor_options={"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
    ).bind(reward_dir, s.max_batch_size, s.batch_wait_timeout_s, s.device, s.torch_threads)
    onboarding = Onboarding.options(
        autoscaling_config=o.autoscaling_config(), max_ongoing_requests=o.max_ongoing_requests,
        ray_actor_options={"num_cpus": o.num_cpus},
    ).bind(gnn_dir, dataset, store_path, args.limits.model_dump(), o.adapt, o.survey_candidates, o.seed, adapt_dir)
    return Api.options(ray_actor_options={"num_cpus": args.api_num_cpus}).bind(
        scorer, onboarding, gnn_dir, reward_dir, store_path, args.limits.model_dump(), adapt_dir, args.bearer_token)


def run_app(args: AppArgs, name: str = "copl", route_prefix: str = "/", blocking: bool = False):
    """Start Serve on ``args.host:args.port`` (once per Ray session) and run the app; returns its handle."""
    from ray import serve

    serve.start(http_options={"host": args.host, "port": args.port})
    return serve.run(build_app(args), name=name, route_prefix=route_prefix, blocking=blocking)
