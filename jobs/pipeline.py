"""The whole CoPL pipeline as one job: data -> GNN -> adaptation -> reward models -> evaluation -> report.

    python jobs/pipeline.py output_dir=O                                     # synthetic tldr, defaults
    python jobs/pipeline.py output_dir=O dataset=D                           # a contract dataset
    python jobs/pipeline.py --config configs/pipeline/demo.yaml output_dir=O
    ray job submit --working-dir . -- python jobs/pipeline.py output_dir=O dataset=D

Stages (each is the job of that name, run in this process exactly as ``python jobs/<job>.py`` runs
it, into ``O/<stage>/``):

1. ``data``: ``make_synthetic`` with the keys under ``synthetic`` (skipped when ``dataset`` is given);
2. ``gnn``: ``train_gnn`` (keys under ``train_gnn``), then the GNN-level references on its
   validation split (one shared preference; free embeddings without a graph, tuned; groups from
   agreement clustering; the true groups where the dataset names them);
3. ``adapt``: ``adapt_users`` on the unseen users (CoPL Eq. 11 beside Naive Avg and User Opt);
4. ``reward_<method>`` for each of ``methods`` (``copl``, ``uniform``, ``no_gnn``, ...): ``train_reward``;
5. ``eval_<method>``: ``evaluate`` of that reward model on seen and unseen users;
6. the report: ``O/metrics.json`` (every stage's figures and seconds), ``O/report.md`` (the tables)
   and the plots copied next to it.

A stage's keys are a mapping of that job's ``key: value``; the key ``config`` names a YAML file for
its ``--config``. A stage is skipped when its ``metrics.json`` exists and its fingerprint (its
arguments, the content of its config file and the fingerprints of what it reads; for a given
``dataset``, the paths, sizes and times of its files) matches the one recorded when it finished, so a failed or interrupted run resumes at the stage that failed and a
changed key reruns that stage and everything downstream of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import Field, field_validator  # noqa: E402

from copl_ray.config import JobConfig, parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.config import ConfigError, load_config  # noqa: E402
from copl_ray.runtime import init_ray, job_config_model, load_job  # noqa: E402

STAGE_FILE = "pipeline_stage.json"
REWARD_METHODS = ("copl", "uniform", "no_gnn", "no_mole", "g_oracle")


class PipelineConfig(JobConfig):
    """jobs/pipeline.py: every stage of CoPL, resumable, with one report."""

    output_dir: str = "runs/pipeline"
    dataset: str | None = Field(None, description="a contract dataset; none: make_synthetic with `synthetic`")
    synthetic: dict = Field(default_factory=lambda: {"preset": "tldr", "n_users": 1000},
                            description="make_synthetic keys (when dataset is not given)")
    train_gnn: dict = Field(default_factory=dict, description="train_gnn keys (none: its defaults)")
    references: bool | list[str] = Field(True, description=(
        "GNN-level references on train_gnn's validation split (copl_ray.eval.references.REFERENCES):"
        " true = all, a list = those, false = none"))
    adapt_users: dict = Field(default_factory=dict, description="adapt_users keys")
    train_reward: dict = Field(default_factory=dict, description="train_reward keys, for every method")
    evaluate: dict = Field(default_factory=dict, description="evaluate keys, for every method")
    methods: list[str] = Field(default_factory=lambda: ["copl", "uniform"],
                               description="reward models to train and evaluate (copl first is the method)")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        unknown = [m for m in methods if m not in REWARD_METHODS]
        if unknown or not methods:
            raise ValueError(f"methods must be a non-empty list of {REWARD_METHODS}, got {methods}")
        return methods

    @field_validator("references")
    @classmethod
    def _known_references(cls, refs: bool | list[str]) -> bool | list[str]:
        from copl_ray.eval.references import REFERENCES

        if isinstance(refs, list) and (not refs or set(refs) - set(REFERENCES)):
            raise ValueError(f"references must be true, false or a non-empty list of {REFERENCES}, got {refs}")
        return refs

    def reference_names(self) -> tuple[str, ...]:
        from copl_ray.eval.references import REFERENCES

        return REFERENCES if self.references is True else tuple(self.references or ())


def stage_argv(keys: dict, **paths: str) -> list[str]:
    """``{"config": F, "a": 1, "b": {"c": 2}}`` + paths -> ``["--config", F, "a=1", "b.c=2", "dataset=D", ...]``."""
    keys = dict(keys)
    argv = ["--config", str(keys.pop("config"))] if "config" in keys else []

    def flat(prefix: str, value) -> list[str]:
        if isinstance(value, dict):
            return [item for k, v in value.items() for item in flat(f"{prefix}.{k}", v)]
        return [f"{prefix}={value if isinstance(value, str) else json.dumps(value)}"]

    clash = sorted(set(keys) & set(paths))
    if clash:
        raise SystemExit(f"error: pipeline sets {clash} of this stage itself; remove them from its keys")
    for k, v in {**keys, **paths}.items():
        argv += flat(k, v)
    return argv


def fingerprint(job: str, argv: list[str], upstream: list[str]) -> str:
    """A stage's identity: job, arguments, its config file's content, and its inputs' fingerprints."""
    h = hashlib.sha256(json.dumps([job, argv, upstream]).encode())
    if "--config" in argv:
        h.update(Path(argv[argv.index("--config") + 1]).read_bytes())
    return h.hexdigest()[:16]


def dataset_signature(root: Path) -> str:
    """A given dataset's identity: every file's path, size and modification time (no reading)."""
    if not root.is_dir():
        raise SystemExit(f"error: dataset: {root} is not a directory")
    files = sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in root.rglob("*") if p.is_file())
    return "dataset:" + hashlib.sha256(json.dumps([str(root), files]).encode()).hexdigest()[:16]


class Runner:
    """Runs stages in order, skipping the unchanged finished ones; keeps figures and timings."""

    def __init__(self, out: Path, n_stages: int):
        self.out, self.n, self.i = out, n_stages, 0
        self.record: dict = {}

    def run(self, name: str, job: str, argv: list[str], upstream: list[str], fn=None) -> tuple[dict, str]:
        """(the stage's metrics, its fingerprint); the job writes ``O/<name>/metrics.json``.

        ``fn``: a callable run instead of ``jobs/<job>.py`` (its dict is written as the metrics)."""
        self.i += 1
        stage_dir = self.out / name
        fp = fingerprint(job, argv, upstream)
        marker = stage_dir / STAGE_FILE
        done = marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fp
        label = f"[pipeline] {self.i}/{self.n} {name:16s} ({job})"
        if done and (stage_dir / "metrics.json").is_file():
            print(f"{label}: unchanged, skipped", flush=True)
            self.record[name] = {"job": job, "skipped": True, "seconds": 0.0, "fingerprint": fp}
            return json.loads((stage_dir / "metrics.json").read_text()), fp
        marker.unlink(missing_ok=True)  # a rerun that fails must not leave the old marker valid
        print(f"{label}: running", flush=True)
        t0 = time.perf_counter()
        metrics = load_job(job).main(argv) if fn is None else fn()
        seconds = time.perf_counter() - t0
        stage_dir.mkdir(parents=True, exist_ok=True)
        if fn is not None:
            write_metrics(metrics, stage_dir)
        marker.write_text(json.dumps({"fingerprint": fp, "job": job, "argv": argv, "seconds": seconds}))
        print(f"{label}: done in {seconds:.0f} s", flush=True)
        self.record[name] = {"job": job, "skipped": False, "seconds": seconds, "fingerprint": fp}
        return metrics, fp


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def write_report(out: Path, stages: dict, figures: dict) -> Path:
    """``O/report.md``: the tables of ``figures`` (what main collected) and the plots beside it."""
    lines = ["# CoPL pipeline report", "",
             f"Dataset: `{figures['dataset']}`. Every figure is a pairwise accuracy (%) on held-out pairs: "
             "seen users on their test pairs, unseen users (adapted without retraining) on theirs.", ""]
    rows = figures["reward"]
    if rows:
        lines += ["## Reward models", "", "| method | seen | unseen |", "|---|---|---|"]
        lines += [f"| {m} | {_pct(r['seen'])} | {_pct(r['unseen'])} |" for m, r in rows.items()]
        for key, title in (("seen_by_group", "Seen accuracy by group:"), ("seen_by_kind", "Seen accuracy by pair kind:")):
            columns = sorted({c for r in rows.values() for c in r[key]})
            if columns:
                lines += ["", title, "", "| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
                lines += [f"| {m} | " + " | ".join(_pct(r[key].get(c)) for c in columns) + " |" for m, r in rows.items()]
    emb = figures["embeddings"]
    lines += ["", "## User embeddings (dot-product scores, no LLM)", "",
              "| learner | seen | unseen |", "|---|---|---|"]
    lines += [f"| {name} | {_pct(r.get('seen'))} | {_pct(r.get('unseen'))} |" for name, r in emb.items()]
    lines += ["", f"GNN chosen on validation: `{figures['gnn_chosen']}`.", ""]
    lines += ["## Stages", "", "| stage | job | seconds | |", "|---|---|---|---|"]
    lines += [f"| {n} | {s['job']} | {s['seconds']:.0f} | {'skipped (unchanged)' if s['skipped'] else ''} |"
              for n, s in stages.items()]
    if figures["plots"]:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in figures["plots"]]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def check_stage_keys(cfg: PipelineConfig) -> None:
    """Validate every stage's keys with its job's own config model before anything runs, so a typo
    in the last stage fails in a second, not after hours of the first ones."""
    paths = {"dataset": "/d", "gnn_dir": "/g", "adapt_dir": "/a", "reward_dir": "/r", "output_dir": "/o"}
    stages = [("train_gnn", cfg.train_gnn, ("dataset", "output_dir")),
              ("adapt_users", cfg.adapt_users, ("dataset", "gnn_dir", "output_dir")),
              ("train_reward", cfg.train_reward, ("dataset", "gnn_dir", "output_dir")),
              ("evaluate", cfg.evaluate, ("dataset", "gnn_dir", "reward_dir", "adapt_dir", "output_dir"))]
    if cfg.dataset is None:
        stages.insert(0, ("make_synthetic", cfg.synthetic, ("output_dir",)))
    for job, keys, given in stages:
        argv = stage_argv(keys, **{k: paths[k] for k in given})
        config_file = argv[1] if argv[:1] == ["--config"] else None
        try:
            load_config(job_config_model(load_job(job)), config_file, argv[2 if config_file else 0:])
        except (ConfigError, FileNotFoundError) as exc:
            raise SystemExit(f"error: pipeline stage {job}: {exc}") from None


def main(argv=None) -> dict:
    cfg = parse_job_args(PipelineConfig, argv)
    check_stage_keys(cfg)
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(cfg, out)
    init_ray()
    t0 = time.perf_counter()
    refs = cfg.reference_names()
    runner = Runner(out, n_stages=(cfg.dataset is None) + 2 + bool(refs) + 2 * len(cfg.methods))

    if cfg.dataset is None:
        _, data_fp = runner.run("data", "make_synthetic", stage_argv(cfg.synthetic, output_dir=str(out / "data")), [])
        dataset = str(out / "data")
    else:
        dataset = str(Path(cfg.dataset).resolve())
        data_fp = dataset_signature(Path(dataset))
    gnn_dir, adapt_dir = str(out / "gnn"), str(out / "adapt")
    gnn, gnn_fp = runner.run("gnn", "train_gnn", stage_argv(cfg.train_gnn, dataset=dataset, output_dir=gnn_dir),
                             [data_fp])
    adapt, adapt_fp = runner.run("adapt", "adapt_users", stage_argv(
        cfg.adapt_users, dataset=dataset, gnn_dir=gnn_dir, output_dir=adapt_dir), [gnn_fp])

    embeddings = {"CoPL GNN (Eq. 11 for unseen)": {"seen": gnn.get("gnn_test_accuracy"),
                                                    "unseen": _method(adapt, "copl")},
                  "CoPL GNN + Naive Avg": {"unseen": _method(adapt, "naive_avg")},
                  "CoPL GNN + User Opt": {"unseen": _method(adapt, "user_opt")}}
    if refs:
        fits, _ = runner.run("references", "references", list(refs), [gnn_fp],
                             fn=lambda: _references(dataset, Path(gnn_dir), refs))
        embeddings.update(fits)

    reward_rows, plots = {}, []
    for method in cfg.methods:
        r_dir = str(out / f"reward_{method}")
        _, r_fp = runner.run(f"reward_{method}", "train_reward", stage_argv(
            cfg.train_reward, dataset=dataset, gnn_dir=gnn_dir, output_dir=r_dir, method=method), [gnn_fp])
        ev, _ = runner.run(f"eval_{method}", "evaluate", stage_argv(
            cfg.evaluate, dataset=dataset, gnn_dir=gnn_dir, reward_dir=r_dir, adapt_dir=adapt_dir,
            output_dir=str(out / f"eval_{method}")), [r_fp, adapt_fp])
        reward_rows[method] = {"seen": ev.get("seen_accuracy"), "unseen": ev.get("unseen_accuracy"),
                               "seen_by_group": {g: v["accuracy"] for g, v in ev["seen"].get("by_group", {}).items()},
                               "seen_by_kind": {k: v["accuracy"] for k, v in ev["seen"].get("by_kind", {}).items()},
                               "unseen_reason": ev.get("unseen", {}).get("reason")}
        for name in (ev.get("plots") or {}).values():
            src = out / f"eval_{method}" / str(name)
            if src.suffix == ".png" and src.is_file():
                shutil.copyfile(src, out / f"{method}_{src.name}")
                plots.append(f"{method}_{src.name}")
    figures = {"dataset": dataset, "reward": reward_rows, "embeddings": embeddings, "plots": plots,
               "gnn_chosen": (gnn.get("selection") or {}).get("chosen")}
    metrics = {**figures, "stages": runner.record, "wall_seconds": time.perf_counter() - t0}
    write_metrics(metrics, out)
    report = write_report(out, runner.record, figures)
    print(report.read_text(), flush=True)
    return metrics


def _method(adapt: dict, name: str):
    """An adaptation method's unseen accuracy on pairs inside the graph (None when not run)."""
    return (adapt.get("methods") or {}).get(name, {}).get("unseen_accuracy_in_graph")


def _references(dataset: str, gnn_dir: Path, which: tuple[str, ...]) -> dict:
    """GNN-level references on the validation split train_gnn carved (its resolved fraction, seed)."""
    from copl_ray.eval.references import fit_references_for

    names = {"shared": "one shared preference", "free": "free embeddings, no graph (dim, L2 tuned)",
             "clusters": "groups from agreement clustering, no GNN", "true_groups": "true groups (oracle)"}
    fits = fit_references_for(dataset, gnn_dir, which)
    return {names[k]: {"seen": f.test_accuracy} for k, f in fits.items()}


if __name__ == "__main__":
    main()
