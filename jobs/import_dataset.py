"""Convert a public preference dataset held locally into a contract dataset directory.

    python jobs/import_dataset.py source=tldr input=PATH output_dir=D [n_users=10000 annotations=all|avg seed=0]
    python jobs/import_dataset.py --config configs/import_dataset/ufp4.yaml input=PATH output_dir=D

Sources and their formats are documented in `copl_ray.data.importers` (and /work/shared/FORMATS.md):
``tldr`` (summarize_from_feedback comparison JSON lines; ``tldr.users=real_workers`` keeps the real
workers and their choices), ``ultrafeedback`` (UltraFeedback JSON lines, ``ultrafeedback.variant=
ufp2|ufp4``), ``personalllm`` (PersonalLLM Parquet). Steps: read and check the source; derive the
pair pools; simulate users as in the paper (or keep real workers); write; validate the result.
Writes the dataset to ``output_dir`` with ``metrics.json`` (counts, what was dropped and why) and
``config.yaml`` next to it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copl_ray.config import parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.dataset import exit_on_dataset_error  # noqa: E402
from copl_ray.data.importers import IMPORTERS, write_imported  # noqa: E402
from copl_ray.data.importers.job_config import ImportDatasetConfig  # noqa: E402


def main(argv=None) -> dict:
    cfg = parse_job_args(ImportDatasetConfig, argv)
    t0 = time.perf_counter()
    with exit_on_dataset_error():  # malformed source (FormatError), too little data, stale output
        prompts, responses, users, annotations, stats = IMPORTERS[cfg.source](
            cfg.input, cfg.plan(), cfg.options(), cfg.seed)
        t_read = time.perf_counter() - t0
        summary = write_imported(cfg.output_dir, (prompts, responses, users, annotations), cfg.rows_per_shard)
    metrics = {
        "source": cfg.source, "preset": cfg.preset(),
        "n_prompts": summary.n_prompts, "n_responses": summary.n_responses,
        "n_seen_users": summary.n_seen_users, "n_unseen_users": summary.n_unseen_users,
        "n_annotations": summary.n_annotations, "import": stats,
        "seconds_read": round(t_read, 3), "seconds_total": round(time.perf_counter() - t0, 3),
    }
    write_resolved_config(cfg, cfg.output_dir)
    write_metrics(metrics, cfg.output_dir)
    print(f"imported {cfg.source} ({cfg.preset()}) into {cfg.output_dir}: {summary.n_seen_users} seen +"
          f" {summary.n_unseen_users} unseen users, annotations {summary.n_annotations}")
    return metrics


if __name__ == "__main__":
    main()
