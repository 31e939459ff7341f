"""Benchmark: time and peak memory of generating + validating synthetic datasets, by user count.

    nice python jobs/bench_synthetic.py                       # ufp4 ALL at 10k, 100k and 1M users
    python jobs/bench_synthetic.py sizes=[10000] preset=tldr annotations=avg

Each size runs in a fresh child process so its peak RSS (``ru_maxrss``) is its own. Prints one line
per size (seconds to generate, to validate, annotations per second, peak RSS after each phase,
bytes on disk) and the ratios of seconds per annotation against the smallest size (1.0 = linear);
then, per preset in ``probe_presets``, the learnability probe (`copl_ray.data.synthetic_probe`).
Figures are written to ``output_dir/metrics.json``; the datasets are deleted unless ``keep=true``.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import Field  # noqa: E402

from copl_ray.config import JobConfig, parse_job_args, write_metrics, write_resolved_config  # noqa: E402


class BenchSyntheticConfig(JobConfig):
    """jobs/bench_synthetic.py: generation + validation cost of make_synthetic by user count."""

    preset: str = "ufp4"
    annotations: str = "all"
    sizes: list[int] = Field(default_factory=lambda: [10_000, 100_000, 1_000_000])
    seed: int = 0
    output_dir: str = "runs/bench_synthetic"
    data_dir: str | None = Field(None, description="where datasets are written (default: a temp folder)")
    keep: bool = False
    probe_presets: list[str] = Field(
        default_factory=lambda: ["tldr", "ufp2", "ufp2/dimensions_disagree", "ufp4", "personalllm"],
        description="presets (optionally preset/survey_rule) whose texts are probed for learnability")
    probe_users: int = Field(2000, ge=1)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _child(preset: str, n_users: int, annotations: str, seed: int, root: str) -> dict:
    """Generate then validate one dataset in this process; figures as a dict."""
    from copl_ray.data.dataset import validate_dataset
    from copl_ray.data.synthetic import SyntheticSpec, generate_dataset

    rss_start = _peak_rss_mb()
    spec = SyntheticSpec(preset=preset, n_users=n_users, annotations=annotations, seed=seed)
    t0 = time.perf_counter()
    metrics = generate_dataset(spec, root)
    t_gen = time.perf_counter() - t0
    rss_gen = _peak_rss_mb()
    t0 = time.perf_counter()
    summary = validate_dataset(root)
    t_val = time.perf_counter() - t0
    n_ann = sum(metrics["annotations"].values())
    assert summary.n_annotations == metrics["annotations"], "validation counted other rows"
    return {
        "n_users": n_users, "annotations_total": n_ann, "generate_s": t_gen, "validate_s": t_val,
        "annotations_per_s": n_ann / t_gen, "peak_rss_after_imports_mb": rss_start,
        "peak_rss_generate_mb": rss_gen, "peak_rss_validate_mb": _peak_rss_mb(),
        "disk_mb": sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file()) / 2**20,
    }


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _, preset, n, annotations, seed, root = argv
        print(json.dumps(_child(preset, int(n), annotations, int(seed), root)))
        return {}
    cfg = parse_job_args(BenchSyntheticConfig, argv)
    base = Path(cfg.data_dir) if cfg.data_dir else Path(tempfile.mkdtemp(prefix="bench_synthetic_"))
    rows = []
    for n in cfg.sizes:
        root = base / f"{cfg.preset}_{cfg.annotations}_{n}"
        proc = subprocess.run(
            [sys.executable, __file__, "--child", cfg.preset, str(n), cfg.annotations, str(cfg.seed), str(root)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"bench_synthetic: size {n} failed:\n{proc.stderr}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{cfg.preset} {cfg.annotations} n_users={n:>9,}: {row['annotations_total']:>11,} annotations;"
              f" generate {row['generate_s']:7.1f} s ({row['annotations_per_s'] / 1e6:.2f} M rows/s),"
              f" validate {row['validate_s']:6.1f} s; peak RSS generate {row['peak_rss_generate_mb']:,.0f} MB,"
              f" validate {row['peak_rss_validate_mb']:,.0f} MB; disk {row['disk_mb']:,.0f} MB", flush=True)
        if not cfg.keep:
            shutil.rmtree(root, ignore_errors=True)
    first = rows[0]
    for row in rows[1:]:
        ratio = (row["generate_s"] / row["annotations_total"]) / (first["generate_s"] / first["annotations_total"])
        row["generate_s_per_row_vs_smallest"] = ratio
        print(f"seconds per annotation at {row['n_users']:,} users / at {first['n_users']:,}: {ratio:.2f}")
    probe = {}
    for name in cfg.probe_presets:
        from copl_ray.data.synthetic import SyntheticSpec, generate_dataset
        from copl_ray.data.synthetic_probe import bow_group_accuracy

        preset, _, rule = name.partition("/")
        root = base / f"probe_{preset}_{rule}"
        generate_dataset(SyntheticSpec(preset=preset, n_users=cfg.probe_users, seed=cfg.seed,
                                       survey_rule=rule or "groups_disagree"), root)
        preset = name
        probe[preset] = bow_group_accuracy(root)
        print(f"probe {preset} ({cfg.probe_users:,} users, ALL): response-only bag-of-words BTL test accuracy"
              f" per group: " + ", ".join(f"{g} {a:.3f}" for g, a in probe[preset].items()), flush=True)
        shutil.rmtree(root, ignore_errors=True)
    if not cfg.keep and not cfg.data_dir:
        shutil.rmtree(base, ignore_errors=True)
    metrics = {"preset": cfg.preset, "annotations": cfg.annotations, "runs": rows, "probe_bow_accuracy": probe}
    write_resolved_config(cfg, cfg.output_dir)
    write_metrics(metrics, cfg.output_dir)
    return metrics


if __name__ == "__main__":
    main()
