"""Importers of the public preference datasets into contract datasets (CONTRACT section 1).

Each source module reads its real on-disk format (see /work/shared/FORMATS.md) and returns the
dataset tables; `write_imported` writes and validates them. Sources: ``tldr``
(`openai/summarize_from_feedback` comparisons), ``ultrafeedback`` (`openbmb/UltraFeedback`, as
UF-P-2 / UF-P-4) and ``personalllm`` (`namkoong-lab/PersonalLLM`).
"""

from __future__ import annotations

import os
from pathlib import Path

from copl_ray.data.dataset import (
    ANNOTATION_SPLITS, DatasetSummary, annotation_files, validate_dataset, write_dataset,
)
from copl_ray.data.importers.common import FormatError, SimulationPlan
from copl_ray.data.importers.personalllm import PersonalLLMOptions, import_personalllm
from copl_ray.data.importers.tldr import TldrOptions, import_tldr
from copl_ray.data.importers.ultrafeedback import UltraFeedbackOptions, import_ultrafeedback

IMPORTERS = {"tldr": import_tldr, "ultrafeedback": import_ultrafeedback, "personalllm": import_personalllm}


def write_imported(root: str | os.PathLike, tables, rows_per_shard: int) -> DatasetSummary:
    """Write ``(prompts, responses, users, annotations)`` to ``root`` and validate the result."""
    prompts, responses, users, annotations = tables
    # Shards of a split this import does not write (e.g. fewshot from an earlier run with unseen
    # users) would survive write_dataset and name users that no longer exist.
    stale = [s for s in ANNOTATION_SPLITS if s not in annotations and annotation_files(root, s)]
    if stale:
        raise FormatError(f"{root}: holds annotations/{stale[0]} from an earlier dataset that this import"
                          " would not overwrite; remove it or choose another output_dir")
    write_dataset(Path(root), prompts, responses, users, annotations, rows_per_shard=rows_per_shard)
    return validate_dataset(root)


__all__ = [
    "FormatError", "IMPORTERS", "PersonalLLMOptions", "SimulationPlan", "TldrOptions",
    "UltraFeedbackOptions", "import_personalllm", "import_tldr", "import_ultrafeedback",
    "write_imported",
]
