"""Write the users onboarded through the Serve app into a dataset, as seen users.

    python jobs/export_users.py store_path=S dataset=D output_dir=O

The next ``python jobs/train_gnn.py dataset=D ...`` then trains on them: each onboarded user becomes
a seen user of ``D/users.parquet`` and their annotations one new shard of ``D/annotations/train``
(`copl_ray.store.export`). Users already in the dataset are skipped, so it can run repeatedly.
Writes ``metrics.json`` (exported and skipped users, annotations, shard) and ``config.yaml``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copl_ray.config import JobConfig, parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.dataset import exit_on_dataset_error, validate_dataset  # noqa: E402
from copl_ray.store import UserStore  # noqa: E402
from copl_ray.store.export import export_users  # noqa: E402


class ExportUsersConfig(JobConfig):
    """jobs/export_users.py: onboarded users (a serving user store) into a dataset's train split."""

    store_path: str
    dataset: str
    output_dir: str


def main(argv=None) -> dict:
    cfg = parse_job_args(ExportUsersConfig, argv)
    if not Path(cfg.store_path).is_file():
        raise SystemExit(f"error: store_path {cfg.store_path}: no such file")
    with exit_on_dataset_error():
        validate_dataset(cfg.dataset)
        res = export_users(UserStore(cfg.store_path), cfg.dataset)
    metrics = {"exported_users": len(res.exported_users), "n_annotations": res.n_annotations,
               "skipped_users": len(res.skipped_users), "shard": str(res.shard) if res.shard else None}
    write_resolved_config(cfg, cfg.output_dir)
    write_metrics(metrics, cfg.output_dir)
    print(f"export_users: {metrics}")
    return metrics


if __name__ == "__main__":
    main()
