"""Importers of the public preference datasets into contract datasets (CONTRACT section 1).

Each source module reads its real on-disk format (see /work/shared/FORMATS.md) and returns the
dataset tables; `write_imported` writes and validates them. Sources: ``tldr``
(`openai/summarize_from_feedback` comparisons), ``ultrafeedback`` (`openbmb/UltraFeedback`, as
UF-P-2 / UF-P-4) and ``personalllm`` (`namkoong-lab/PersonalLLM`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from copl_ray.data.dataset import (
    ANNOTATION_SPLITS, DatasetSummary, annotation_files, validate_dataset, write_dataset,
)
from copl_ray.data.importers.common import FormatError, SimulationPlan
from copl_ray.data.importers.personalllm import PersonalLLMOptions, import_personalllm
from copl_ray.data.importers.tldr import TldrOptions, import_tldr
from copl_ray.data.importers.ultrafeedback import UltraFeedbackOptions, import_ultrafeedback

IMPORTERS = {"tldr": import_tldr, "ultrafeedback": import_ultrafeedback, "personalllm": import_personalllm}


def _survey_counts(users: pa.Table, annotations) -> np.ndarray:
    """Annotations each user gives to build or adapt from: train for seen, fewshot for unseen. [U]"""
    ids = users.column("user_id").combine_chunks()
    counts = np.zeros(len(ids), np.int64)
    for split in ("train", "fewshot"):
        if split in annotations:
            idx = pc.index_in(annotations[split].column("user_id"), value_set=ids).to_numpy(zero_copy_only=False)
            counts += np.bincount(idx.astype(np.int64), minlength=len(ids))
    return counts


def write_imported(root: str | os.PathLike, tables, rows_per_shard: int) -> DatasetSummary:
    """Write ``(prompts, responses, users, annotations)`` to ``root`` and validate the result."""
    prompts, responses, users, annotations = tables
    # Shards of a split this import does not write (e.g. fewshot from an earlier run with unseen
    # users) would survive write_dataset and name users that no longer exist.
    stale = [s for s in ANNOTATION_SPLITS if s not in annotations and annotation_files(root, s)]
    if stale:
        raise FormatError(f"{root}: holds annotations/{stale[0]} from an earlier dataset that this import"
                          " would not overwrite; remove it or choose another output_dir")
    if "n_train" not in users.column_names:  # N_u, as the synthetic generator writes it
        users = users.append_column("n_train", pa.array(_survey_counts(users, annotations), pa.int64()))
    write_dataset(Path(root), prompts, responses, users, annotations, rows_per_shard=rows_per_shard)
    return validate_dataset(root)


__all__ = [
    "FormatError", "IMPORTERS", "PersonalLLMOptions", "SimulationPlan", "TldrOptions",
    "UltraFeedbackOptions", "import_personalllm", "import_tldr", "import_ultrafeedback",
    "write_imported",
]
