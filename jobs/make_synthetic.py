"""Generate a paper-faithful synthetic dataset (CoPL Sec. 5.1 / App. D.1) in the contract layout.

    python jobs/make_synthetic.py preset=ufp4 n_users=2000 annotations=avg seed=1 output_dir=D
    python jobs/make_synthetic.py --config configs/make_synthetic/ufp4.yaml output_dir=D

Presets ``tldr``, ``ufp2``, ``ufp4``, ``personalllm`` (see `copl_ray.data.synthetic`). Writes the
dataset into ``output_dir``, validates it against the contract (``validate=false`` skips that), and
writes ``metrics.json`` (counts, group sizes, test-pool common share, seconds) and ``config.yaml``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copl_ray.config import parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.dataset import validate_dataset  # noqa: E402
from copl_ray.data.synthetic import SyntheticSpec, generate_dataset  # noqa: E402


class MakeSyntheticConfig(SyntheticSpec):
    """jobs/make_synthetic.py: a synthetic TL;DR / UF-P-2 / UF-P-4 / PersonalLLM analogue."""

    output_dir: str = "runs/synthetic"
    validate_output: bool = True


def main(argv=None) -> dict:
    cfg = parse_job_args(MakeSyntheticConfig, argv)
    spec = SyntheticSpec.model_validate(cfg.model_dump(exclude={"output_dir", "validate_output"}))
    t0 = time.perf_counter()
    metrics = generate_dataset(spec, cfg.output_dir)
    metrics["generate_seconds"] = time.perf_counter() - t0
    if cfg.validate_output:
        t0 = time.perf_counter()
        summary = validate_dataset(cfg.output_dir)
        metrics["validate_seconds"] = time.perf_counter() - t0
        metrics["validated"] = summary.n_annotations == metrics["annotations"]
    write_resolved_config(cfg, cfg.output_dir)
    write_metrics(metrics, cfg.output_dir)
    print(f"make_synthetic: {spec.preset} -> {cfg.output_dir}: {metrics['annotations']}")
    return metrics


if __name__ == "__main__":
    main()
