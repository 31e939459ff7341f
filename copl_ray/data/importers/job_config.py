"""Config of jobs/import_dataset.py (kept in the library so tests and the YAML check import it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from copl_ray.config import JobConfig
from copl_ray.data.importers.common import SimulationPlan
from copl_ray.data.importers.personalllm import PersonalLLMOptions
from copl_ray.data.importers.tldr import TldrOptions
from copl_ray.data.importers.ultrafeedback import UltraFeedbackOptions


# Paper Sec. 5.1: annotations per user (ALL) = 8 for TL;DR and UF-P-2, 16 for UF-P-4 and PersonalLLM.
DEFAULT_N_CONTEXT = {"tldr": 8, "ufp2": 8, "ufp4": 16, "personalllm": 16}


class ImportDatasetConfig(JobConfig):
    """import_dataset: a public dataset in its own format -> CONTRACT section 1 directory."""

    source: Literal["tldr", "ultrafeedback", "personalllm"]
    input: str = Field(description="a source file or a folder of them")
    output_dir: str
    n_users: int | None = Field(None, ge=1, description="simulated seen users; default 10,000 (paper)")
    n_unseen_users: int | None = Field(None, ge=0, description="default 100 simulated, 0 with real workers")
    annotations: Literal["all", "avg"] = "all"
    n_context: int | None = Field(None, ge=1, description="survey size per user; default per preset")
    n_test: int = Field(10, ge=1, description="test pairs per seen user")
    n_unseen_test: int = Field(50, ge=1, description="test pairs per unseen user")
    n_fewshot: int | None = Field(None, ge=1, description="few-shot annotations per unseen user; default n_context")
    seed: int = 0
    rows_per_shard: int = Field(1_000_000, ge=1)
    tldr: TldrOptions = Field(default_factory=TldrOptions)
    ultrafeedback: UltraFeedbackOptions = Field(default_factory=UltraFeedbackOptions)
    personalllm: PersonalLLMOptions = Field(default_factory=PersonalLLMOptions)

    @model_validator(mode="after")
    def _real_workers(self):
        if self.source == "tldr" and self.tldr.users == "real_workers" and self.n_users is not None:
            raise ValueError("n_users does not apply with tldr.users=real_workers (the users are the"
                             " tldr.top_workers most active workers); remove n_users")
        return self

    def preset(self) -> str:
        return self.ultrafeedback.variant if self.source == "ultrafeedback" else self.source

    def plan(self) -> SimulationPlan:
        real = self.source == "tldr" and self.tldr.users == "real_workers"
        return SimulationPlan(
            n_users=self.n_users if self.n_users is not None else 10_000,
            n_unseen_users=self.n_unseen_users if self.n_unseen_users is not None else (0 if real else 100),
            n_context=self.n_context or DEFAULT_N_CONTEXT[self.preset()],
            annotations=self.annotations, n_test=self.n_test, n_unseen_test=self.n_unseen_test,
            n_fewshot=self.n_fewshot,
        )

    def options(self):
        return {"tldr": self.tldr, "ultrafeedback": self.ultrafeedback, "personalllm": self.personalllm}[self.source]
