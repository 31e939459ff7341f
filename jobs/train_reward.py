"""Train CoPL's personalized reward model (or a baseline) with FSDP2 on Ray Train.

    python jobs/train_reward.py dataset=D gnn_dir=G output_dir=O [method=copl|uniform|g_oracle|no_gnn|no_mole]
    python jobs/train_reward.py --config configs/train_reward/minilm_cpu.yaml dataset=D gnn_dir=G output_dir=O

Steps: validate the dataset; run ``TorchTrainer(train_loop_per_worker)`` with ``num_workers``
workers (restarting from the latest checkpoint up to ``max_failures`` times); for G-Oracle, one
such run per true group. Each run first chooses its lr on held-out train pairs (``lr=auto``, the
default; `copl_ray.reward.selection`). A run whose loss did not fall, or that scores the held-out
pairs near chance, is reported as a WARNING on stderr and ``learned: false`` in metrics.json.
Writes ``O/model/`` (the exported reward model), ``O/train_summary.json``,
``O/metrics.json``, ``O/config.yaml`` and ``O/reward_dir.json`` (method, gnn_dir, text encoding:
what `copl_ray.reward.artifacts.load_reward_dir` reads); G-Oracle writes one such folder per group under
``O/groups/<group>/`` and an index ``O/g_oracle.json``.

On a multi-node cluster ``output_dir`` must be storage that rank 0's node can write and the
driver can read (rank 0 exports the model there).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copl_ray.config import parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.dataset import exit_on_dataset_error, read_annotations, read_table, validate_dataset  # noqa: E402
from copl_ray.gnn.gnn_dir import read_user_embeddings, users_path  # noqa: E402
from copl_ray.reward.artifacts import write_manifest  # noqa: E402
from copl_ray.reward.train import TrainRewardConfig, text_encoding, train_loop_per_worker  # noqa: E402


def run_trainer(cfg: TrainRewardConfig, name: str) -> dict:
    """One Ray Train run; returns rank 0's ``train_summary.json``."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    out = Path(cfg.output_dir).resolve()
    cfg = cfg.model_copy(update={"output_dir": str(out), "dataset": str(Path(cfg.dataset).resolve()),
                                 "gnn_dir": str(Path(cfg.gnn_dir).resolve()) if cfg.gnn_dir else None})
    out.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": cfg.model_dump(mode="json")},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            # A fresh name per run: Ray Train V2 resumes a finished run of the same name and
            # storage, so a second job into this output_dir would export the old model untrained.
            name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=cfg.storage_path or str(out / "ray"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    trainer.fit()
    return json.loads((out / "train_summary.json").read_text())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def check_gnn_dir(cfg: TrainRewardConfig) -> None:
    """copl / no_mole read every train user's embedding from gnn_dir: check on the driver that
    they are all there, rather than fail inside each Ray Train worker attempt."""
    if cfg.method not in ("copl", "no_mole"):
        return
    path = users_path(cfg.gnn_dir)
    try:
        ids, _ = read_user_embeddings(cfg.gnn_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: gnn_dir: {exc}") from None
    users = pc.unique(read_annotations(cfg.dataset, "train").column("user_id").combine_chunks())
    missing = users.filter(pc.invert(pc.is_in(users, value_set=ids)))
    if len(missing):
        raise SystemExit(f"error: no embedding for seen user {missing[0].as_py()!r} ({len(missing)} train"
                         f" users lack one) in {path}: gnn_dir must be a train_gnn output of this dataset")


def group_folders(groups: list[str]) -> dict[str, str]:
    """A distinct file-safe folder (and Ray run) name per group: the group itself when it is one,
    else its safe spelling plus a hash of the group, so 'a b' and 'a_b', two non-ASCII names, ''
    or '..' never share (or escape) a folder."""
    out = {}
    for g in groups:
        name = _safe(g)
        if name != g or not name.strip("."):
            name = f"{name}-{hashlib.sha256(g.encode()).hexdigest()[:10]}"
        out[g] = name
    return out


def main(argv=None) -> dict:
    cfg = parse_job_args(TrainRewardConfig, argv)
    with exit_on_dataset_error():  # one error line naming file, row and field, before any worker starts
        summary = validate_dataset(cfg.dataset)
    check_gnn_dir(cfg)
    t0 = time.perf_counter()
    metrics: dict = {"method": cfg.method, "n_seen_users": summary.n_seen_users,
                     "n_train_annotations": summary.n_annotations["train"]}
    warnings: list[str] = []
    if cfg.method == "g_oracle":
        users = read_table(cfg.dataset, "users")
        groups = sorted({g for g, s in zip(users.column("group").to_pylist(), users.column("split").to_pylist())
                         if s == "seen" and g is not None})
        if not groups:
            raise SystemExit(f"error: method=g_oracle needs true groups, but {cfg.dataset}/users.parquet has none")
        index = {}
        for g, folder in group_folders(groups).items():
            sub = cfg.model_copy(update={"group": g, "output_dir": str(Path(cfg.output_dir) / "groups" / folder)})
            metrics[f"group/{g}"] = _brief(run_trainer(sub, name=f"train_reward_g_oracle_{folder}"))
            warnings += learning_warnings(metrics[f"group/{g}"], f"group {g}")
            index[g] = f"groups/{folder}"
        Path(cfg.output_dir, "g_oracle.json").write_text(json.dumps({"groups": index}))
    else:
        index = None
        metrics.update(_brief(run_trainer(cfg, name=f"train_reward_{cfg.method}")))
        warnings += learning_warnings(metrics)
    # What the folder holds, for evaluate and serving (copl_ray.reward.artifacts.load_reward_dir).
    write_manifest(cfg.output_dir, cfg.method, cfg.gnn_dir if cfg.method in ("copl", "no_mole") else None,
                   text_encoding(cfg), index)
    metrics["learned"] = not warnings
    metrics["warnings"] = warnings
    for w in warnings:
        print(f"\n*** WARNING: train_reward: {w} ***\n", file=sys.stderr)
    metrics["wall_seconds"] = time.perf_counter() - t0
    write_resolved_config(cfg, cfg.output_dir)
    write_metrics(metrics, cfg.output_dir)
    return metrics


def _brief(summary: dict) -> dict:
    keys = ("lr", "lr_selection", "steps", "epochs", "steps_reason", "n_train_pairs", "n_val_pairs",
            "world_size", "loss_first", "loss_last", "loss_fell", "val_accuracy", "resumed",
            "resume_probe_max_abs_diff", "train_seconds_this_attempt")
    return {k: summary.get(k) for k in keys}


def learning_warnings(brief: dict, where: str = "") -> list[str]:
    """Why a run may have learned nothing: the loss did not fall, or the held-out train pairs
    score at chance. Each is printed to stderr and listed in metrics.json."""
    out = []
    tag = f" ({where})" if where else ""
    if brief.get("loss_fell") is False:
        out.append(f"training loss did not fall{tag}: {brief['loss_first']:.4f} -> {brief['loss_last']:.4f} "
                   f"over {brief['steps']} steps at lr {brief['lr']:g}; the model has likely learned nothing "
                   "(try lr=auto or other lr_candidates, more steps, or check the data)")
    selection = brief.get("lr_selection") or {}
    if selection.get("mode") == "fallback":
        out.append(f"lr not selected{tag}: {selection['why']}")
    acc = brief.get("val_accuracy")
    if acc is not None and acc < 0.55:
        out.append(f"validation accuracy on held-out train pairs is {acc:.3f}{tag}, near chance")
    return out


if __name__ == "__main__":
    main()
