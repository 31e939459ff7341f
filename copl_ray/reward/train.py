"""Ray Train worker loop for the personalized reward model: FSDP2, BTL loss, DCP checkpoints.

Paper optimiser (App. D.2): AdamW, cosine schedule with warm-up ratio 0.03, BTL loss over
(chosen, rejected) pairs (Eq. 7) plus the gate's load-balancing term where the model reports one.
The paper's lr (5e-5, for gemma-2b) leaves small CPU backbones at chance, so by default
(``lr=auto``) the lr is chosen: a held-out slice of the train pairs (``val_pairs``) scores each of
``lr_candidates`` after ``probe_steps`` steps from the same initial weights, and the best one
trains the real run (`copl_ray.reward.selection`). ``min_steps`` raises the epoch count on small
data. The chosen lr, the probe scores, the step plan, the final validation accuracy and whether
the loss fell go to ``train_summary.json``.

Sharding: every rank builds the same model from the same seed, then `fully_shard` wraps each
transformer block of the backbone (the classes HF lists in ``_no_split_modules``) and finally the
root; frozen backbone weights are sharded too (FSDP2 keeps ``requires_grad`` per parameter, so a
block mixing frozen base weights and trainable LoRA factors is one unit). The optimizer is built
after sharding and sees only trainable parameters. On GPU params are gathered in bf16 and
gradients reduced in fp32; on CPU (gloo) everything stays fp32. ``gradient_checkpointing=true``
turns on the backbone's non-reentrant activation checkpointing (through the model config).

Checkpoints: ``torch.distributed.checkpoint`` (DCP) of the trainable model state and the optimizer
state, written by every rank into its own folder and reported with ``ray.train.report`` (Ray merges
the folders); rank 0 adds ``train_state.json`` (step, scheduler state, probe scores). On restart
``ray.train.get_checkpoint()`` resumes at the saved step of the saved epoch, in the same data order.
At the end the trainable state is gathered to rank 0 and exported with ``save_reward_model`` so
scoring needs no process group.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field, model_validator

from copl_ray.config import JobConfig
from copl_ray.schedule import cosine_with_warmup

METHODS = ("copl", "uniform", "g_oracle", "no_gnn", "no_mole")


class TrainRewardConfig(JobConfig):
    """jobs/train_reward.py: train CoPL's reward model (or a baseline) on one dataset.

    ``method``: ``copl`` (GNN user embeddings + MoLE), ``uniform`` (one rank-64 LoRA, no user),
    ``g_oracle`` (one rank-64 LoRA per true group), ``no_gnn`` (MoLE with learnable user
    embeddings), ``no_mole`` (GNN embedding projected to one extra input token, rank-64 LoRA).
    """

    dataset: str
    gnn_dir: str | None = None
    output_dir: str
    method: Literal["copl", "uniform", "g_oracle", "no_gnn", "no_mole"] = "copl"
    model: dict = Field(default_factory=dict, description="RewardModelConfig fields (backbone, experts, rank...)")
    max_length: int = Field(128, ge=8)
    batch_size: int = Field(16, ge=1, description="pairs per worker per step")
    epochs: int = Field(1, ge=1)
    max_pairs: int | None = Field(None, ge=1, description="train on a seeded random subset of pairs")
    lr: float | Literal["auto"] = Field("auto", description="a number, or auto: the best of lr_candidates on "
                                        "the validation slice of train pairs after probe_steps steps")
    lr_candidates: list[float] = Field(default_factory=lambda: [3e-4, 1e-3, 3e-3])
    probe_steps: int = Field(30, ge=1, description="steps each lr candidate trains before it is scored")
    val_pairs: int = Field(256, ge=0, description="train pairs held out for lr selection and the final "
                           "check (at most 10% of them); 0 = none (then lr must be a number)")
    min_steps: int = Field(200, ge=0, description="raise epochs until there are this many steps")
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    aux_loss_weight: float = Field(0.01, ge=0, description="weight of the gate's load-balancing loss "
                                   "(only reported with model.load_balancing=true; the paper uses none)")
    user_dim: int = Field(64, ge=1, description="learnable user embedding size when there is no gnn_dir")
    gradient_checkpointing: bool = Field(False, description="activation checkpointing in the backbone")
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0 = end of each epoch")
    max_failures: int = Field(1, ge=0)
    storage_path: str | None = Field(None, description="Ray Train storage; default output_dir/ray")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (smoke runs); schedule unchanged")
    seed: int = 0
    group: str | None = Field(None, description="train only on this true group's users (G-Oracle)")
    fail_at_step: int | None = Field(None, description="testing: raise once at this step (no checkpoint restored yet)")

    @model_validator(mode="after")
    def _check(self):
        if self.lr == "auto" and self.val_pairs == 0:
            raise ValueError("lr=auto chooses the lr on held-out train pairs: val_pairs must be > 0 (or set lr)")
        if self.lr == "auto" and (not self.lr_candidates or min(self.lr_candidates) <= 0):
            raise ValueError(f"lr=auto needs positive lr_candidates, got {self.lr_candidates}")
        if self.method in ("copl", "no_mole") and self.gnn_dir is None:
            raise ValueError(f"method={self.method!r} needs gnn_dir (the GNN user embeddings)")
        if "mode" in self.model or "user_dim" in self.model:
            raise ValueError("model.mode and model.user_dim are set by method and the user table; drop them")
        from copl_ray.reward.model import RewardModelConfig

        try:  # typos in model.* fail here, at config load, not inside a Ray worker
            RewardModelConfig(**self.model, mode="mole", user_dim=1)
        except ValueError as exc:
            raise ValueError(f"model: {exc}") from None
        return self


PROGRESS_EVERY = 50  # steps between rank 0's progress lines (mean loss of those steps)

# ----------------------------------------------------------------------------- helpers


def text_encoding(cfg: TrainRewardConfig):
    """The template and truncation a run trains with (saved with its model)."""
    from copl_ray.reward.encoding import TextEncoding

    return TextEncoding(max_length=cfg.max_length)


def shard_model(model: torch.nn.Module, device_type: str, world: int, bf16: bool) -> torch.nn.Module:
    """FSDP2: shard each backbone block (HF ``_no_split_modules``), then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_type, (world,))
    kwargs = {"mesh": mesh}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    block_names: set[str] = set()
    for m in model.modules():
        block_names.update(getattr(m, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _all_mean(value: float, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


@torch.no_grad()
def probe_rewards(model, probe: dict, device) -> torch.Tensor:
    """Rewards [2P] of a fixed probe batch, eval mode (a collective under FSDP: all ranks call)."""
    was_training = model.training
    model.eval()
    out = model(**{k: v.to(device) for k, v in probe.items()})
    model.train(was_training)
    return out.rewards.float().cpu()


def train_step(model, items, tokens, device, optimizer, trainable, cfg: "TrainRewardConfig") -> torch.Tensor:
    """One optimizer step on pairs ``items``; returns the (detached) loss."""
    from copl_ray.reward.data import collate_pairs
    from copl_ray.reward.losses import btl_loss

    batch = {k: v.to(device) for k, v in collate_pairs(items, tokens).items()}
    out = model(**batch)
    half = len(items)
    loss = btl_loss(out.rewards[:half], out.rewards[half:])
    if out.aux_loss is not None and cfg.aux_loss_weight > 0:
        loss = loss + cfg.aux_loss_weight * out.aux_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def validate(model, val, tokens, device, batch_size: int) -> tuple[float, float]:
    """(accuracy, mean BTL loss) over the validation pairs, split over ranks (a collective: every
    rank runs the same number of forwards, a rank out of pairs scores a dummy one and drops it)."""
    import torch.nn.functional as F

    from copl_ray.reward.data import collate_pairs

    rank, world = dist.get_rank(), dist.get_world_size()
    rows = list(range(rank, len(val), world))
    n_batches = math.ceil(math.ceil(len(val) / world) / batch_size)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for b in range(n_batches):
        chunk = rows[b * batch_size:(b + 1) * batch_size]
        items = [val[i] for i in chunk] or [val[0]]
        out = model(**{k: v.to(device) for k, v in collate_pairs(items, tokens).items()})
        margin = (out.rewards[:len(items)] - out.rewards[len(items):]).float().cpu()[:len(chunk)]
        sums += torch.tensor([float((margin > 0).sum()), float(F.softplus(-margin).sum()), len(chunk)],
                             dtype=torch.float64)
    model.train(was_training)
    sums = sums.to(device)
    dist.all_reduce(sums)
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


def select_lr(model, trainable, data, sampler, device, cfg: "TrainRewardConfig") -> tuple[float, dict]:
    """Train each of ``cfg.lr_candidates`` for ``probe_steps`` steps from the current weights,
    score it on the validation slice, restore the weights; returns (best lr, selection record)."""
    from copl_ray.reward.selection import ProbeResult, describe_choice, pick_best

    init = [p.detach().clone() for p in trainable]
    rng = torch.get_rng_state()
    acc0, loss0 = validate(model, data.val, data.tokens, device, cfg.batch_size * 4)
    sampler.set_epoch(0)
    order = list(sampler)
    # A smoke run (max_steps) probes no longer than it trains.
    probe_steps = min(cfg.probe_steps, cfg.max_steps or cfg.probe_steps)
    warm = max(1, probe_steps // 10)
    results = []
    for lr in cfg.lr_candidates:
        with torch.no_grad():
            for p, v in zip(trainable, init):
                p.copy_(v)
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=cfg.weight_decay)
        losses = []
        for s in range(probe_steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (s + 1) / warm)
            rows = [order[(s * cfg.batch_size + j) % len(order)] for j in range(cfg.batch_size)]
            loss = train_step(model, [data.dataset[i] for i in rows], data.tokens, device, optimizer, trainable, cfg)
            losses.append(_all_mean(float(loss), device))
        acc, vloss = validate(model, data.val, data.tokens, device, cfg.batch_size * 4)
        k = max(1, len(losses) // 5)
        results.append(ProbeResult(lr=lr, val_accuracy=acc, val_loss=vloss, steps=probe_steps,
                                   loss_first=float(np.mean(losses[:k])), loss_last=float(np.mean(losses[-k:]))))
        del optimizer
    with torch.no_grad():
        for p, v in zip(trainable, init):
            p.copy_(v)
    torch.set_rng_state(rng)  # the real run starts exactly as a run with lr fixed to the winner
    best = pick_best(results)
    return best.lr, {"mode": "auto", "chosen": best.lr, "why": describe_choice(results, best),
                     "val_pairs": len(data.val), "val_accuracy_before_training": acc0,
                     "val_loss_before_training": loss0, "candidates": [r.as_dict() for r in results]}


# ----------------------------------------------------------------------------- worker loop


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker. ``config = {"job": TrainRewardConfig as dict}``."""
    import ray.train
    import ray.train.torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_state_dict, set_state_dict,
    )
    import torch.distributed.checkpoint as dcp
    from torch.utils.data import DistributedSampler

    from copl_ray.reward.baselines import build_model, prepare_training_data
    from copl_ray.reward.model import save_reward_model
    from copl_ray.reward.selection import loss_fell, plan_steps

    cfg = TrainRewardConfig.model_validate(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank before sharding

    model, tokenizer_owner = build_model(cfg)
    data = prepare_training_data(cfg, model, tokenizer_owner)
    model.to(device)
    model = shard_model(model, device.type, world, bf16=cfg.use_gpu)
    trainable = [p for p in model.parameters() if p.requires_grad]

    sampler = DistributedSampler(data.dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    steps_per_epoch, epochs, steps_reason = plan_steps(len(sampler), cfg.batch_size, cfg.epochs, cfg.min_steps)
    total_steps = steps_per_epoch * epochs
    sd_opts = StateDictOptions(ignore_frozen_params=True)
    # Checkpoints hold trainable tensors only, so loading them must not demand the frozen ones.
    load_opts = StateDictOptions(ignore_frozen_params=True, strict=False)

    checkpoint = ray.train.get_checkpoint()
    meta = None
    if checkpoint is not None:  # the lr was chosen by the first attempt: never re-probe
        with checkpoint.as_directory() as folder:
            meta = json.loads(Path(folder, "train_state.json").read_text())
        lr, selection = meta["lr"], meta["lr_selection"]
    elif cfg.lr == "auto" and data.val is None:
        lr = float(sorted(cfg.lr_candidates)[len(cfg.lr_candidates) // 2])
        selection = {"mode": "fallback", "chosen": lr,
                     "why": f"{len(data.dataset)} train pairs are too few to hold out a validation slice "
                            "(10% of them must be >= 1): the middle of lr_candidates, unchecked"}
    elif cfg.lr == "auto":
        lr, selection = select_lr(model, trainable, data, sampler, device, cfg)
    else:
        lr, selection = cfg.lr, {"mode": "fixed", "chosen": cfg.lr, "why": "lr set in the config"}
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_with_warmup(optimizer, total_steps, cfg.warmup_ratio)
    if rank == 0:  # progress, minutes apart on CPU: in rank 0's worker log (Ray dashboard, `ray logs`),
        # not the job's console (copl_ray.runtime keeps worker output off it)
        print(f"[train_reward] lr {lr:g}: {selection['why']}; {total_steps} steps ({steps_reason})", flush=True)

    step, restored, losses = 0, False, []
    probe_diff = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            msd, osd = get_state_dict(model, optimizer, options=sd_opts)
            state = {"model": msd, "optim": osd}
            dcp.load(state, checkpoint_id=os.path.join(folder, "dcp"))
            set_state_dict(model, optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"], options=load_opts)
        step = meta["step"]
        scheduler.load_state_dict(meta["scheduler"])
        losses = meta["losses"]
        restored = True
        # A restored model must score the probe exactly as the saved one did.
        probe_diff = float((probe_rewards(model, data.probe, device) - torch.tensor(meta["probe"])).abs().max())

    def save_checkpoint(metrics: dict) -> None:
        msd, osd = get_state_dict(model, optimizer, options=sd_opts)
        probe = probe_rewards(model, data.probe, device)
        with tempfile.TemporaryDirectory() as tmp:
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=os.path.join(tmp, "dcp"))
            if rank == 0:
                Path(tmp, "train_state.json").write_text(json.dumps(
                    {"step": step, "scheduler": scheduler.state_dict(), "probe": probe.tolist(),
                     "losses": losses, "lr": lr, "lr_selection": selection}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    t0 = time.perf_counter()
    model.train()
    for epoch in range(step // steps_per_epoch, epochs):
        sampler.set_epoch(epoch)
        order = list(sampler)
        for b in range(step - epoch * steps_per_epoch, steps_per_epoch):
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
            if cfg.fail_at_step is not None and step == cfg.fail_at_step and not restored:
                raise RuntimeError(f"injected failure at step {step} (fail_at_step)")
            items = [data.dataset[i] for i in order[b * cfg.batch_size:(b + 1) * cfg.batch_size]]
            loss = train_step(model, items, data.tokens, device, optimizer, trainable, cfg)
            scheduler.step()
            step += 1
            losses.append(_all_mean(float(loss), device))
            if rank == 0 and (step % PROGRESS_EVERY == 0 or step == total_steps):
                print(f"[train_reward] step {step}/{total_steps} loss {np.mean(losses[-PROGRESS_EVERY:]):.4f}"
                      f" ({time.perf_counter() - t0:.0f} s)", flush=True)
            is_epoch_end = b == steps_per_epoch - 1 or step == cfg.max_steps
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or is_epoch_end:
                save_checkpoint({"step": step, "epoch": epoch, "loss": float(np.mean(losses[-10:]))})

    val_acc = val_loss = None
    if data.val is not None:
        val_acc, val_loss = validate(model, data.val, data.tokens, device, cfg.batch_size * 4)
    # Export: gather only trainable tensors (the frozen backbone is rebuilt from its source).
    full = get_model_state_dict(model, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
    final_probe = probe_rewards(model, data.probe, device)
    if rank == 0:
        torch.manual_seed(cfg.seed)
        plain, _ = build_model(cfg)
        missing = [k for k, p in plain.named_parameters() if p.requires_grad and k not in full]
        if missing:
            raise RuntimeError(f"gathered state lacks trainable tensors {missing[:5]}")
        plain.load_state_dict(full, strict=False)
        out_dir = Path(cfg.output_dir)
        save_reward_model(plain.rm, out_dir / "model", encoding=text_encoding(cfg))
        plain.export_users(out_dir)
        torch.save(data.probe, out_dir / "probe_batch.pt")
        summary = {
            "steps": step, "steps_per_epoch": steps_per_epoch, "epochs": epochs, "steps_reason": steps_reason,
            "world_size": world, "n_train_pairs": len(data.dataset),
            "n_val_pairs": len(data.val) if data.val is not None else 0,
            "lr": lr, "lr_selection": selection, "losses": losses,
            "loss_first": float(np.mean(losses[:10])) if losses else None,
            "loss_last": float(np.mean(losses[-10:])) if losses else None,
            "loss_fell": loss_fell(losses), "val_accuracy": val_acc, "val_loss": val_loss,
            "train_seconds_this_attempt": time.perf_counter() - t0,
            "resumed": restored, "resume_probe_max_abs_diff": probe_diff,
            "probe_rewards": final_probe.tolist(),
        }
        (out_dir / "train_summary.json").write_text(json.dumps(summary))
    dist.barrier()
