"""Ray Train worker loop for the CoPL GNN (paper Section 4.1, Eq. 5; App. D.2) and its baselines.

Each worker trains on its shard of the annotation triples (`rank_batches`): every epoch one seeded
permutation of all triples, cut into global batches of ``batch_size`` pairs (paper: 1024) that the
workers split evenly, so 1 and 2 workers take the same steps over the same pairs.

Embeddings for a batch come from either
- ``mode="sampled"``: a ``NeighborSampler`` neighbourhood of the batch's users and responses with
  ``fanouts[l]`` neighbours per sign and layer, or
- ``mode="full"``: full-graph propagation for every batch (the official implementation's way;
  the sparse matrices are built once, `copl_ray.gnn.full_graph`).
- ``mode="auto"`` (default): sampled up to ``auto_full_min_train_pairs`` train pairs (where the
  selection grid runs); above, full-graph propagation with the large-batch recipe
  (`LARGE_BATCH`, `resolve_mode`): one step's sparse products cost the same whatever the batch, so
  a step of 65,536 pairs costs about what a step of 1,024 does, and far fewer steps reach the same
  accuracy (issue 18, `jobs/bench_gnn.py part=scale`).

Loss: BTL, -log sigma(s_{u,a} - s_{u,b}) (Eq. 5), averaged over the batch. AdamW with a cosine
schedule and linear warm-up (ratio 0.1); by default (``optimizer="sparse_grad_adamw"``) embedding
lookups give row-sparse gradients and AdamW's exact step is taken from them
(`copl_ray.gnn.optim`; ``row_sparse_adamw`` is the lazy variant). Gradients are averaged over the
workers by ``grad_sync="sparse_rows"`` (default: embedding tables all-gather only the rows a step
touched, other parameters are all-reduced; gloo on CPU, NCCL on GPU) or ``"ddp"``
(``ray.train.torch.prepare_model``; sparse gradients on gloo only). Both give the same mean
gradient; sparse_rows was the faster at 10k and at 1M users (`jobs/bench_gnn.py`).

Departures from the paper (App. D.2), stated:
- Eq. 5's lambda ||theta||^2 is taken per batch, as LightGCN's code does: ``l2`` times the batch
  mean of the squared norms of its triples' ID embeddings (e_u^(0), e_a^(0), e_b^(0); `id_l2`), so
  a row is penalized in proportion to how often it is scored. Layer matrices (``transform=true``)
  get AdamW's decoupled ``weight_decay`` instead. The paper gives no lambda; ``l2=1`` was measured
  (docs/ARCHITECTURE.md, "GNN defaults"): UF-P-4 withheld-pair accuracy 75.7 at its peak (74.6
  after 20 epochs) -> 80.3, flat.
- Defaults are CPU-sized: d=64, L=2, lr 1e-3, 20 epochs (paper: d=512, L=4, lr 1e-4, 300 epochs;
  ``configs/train_gnn/paper.yaml``).
- Sampled neighbourhoods instead of full-graph propagation per batch (``mode=full`` restores it).
- A training pair is scored without its own two edges (``exclude_target_edges``, default on).
- The single-run default layer is Table A4's "w/o Act. & Trans." ablation (``transform=false
  activation=false``); ``transform=true activation=true`` is Eq. 2-3 as written. Neither wins on all
  data (docs/ARCHITECTURE.md, "GNN model selection"): ``jobs/train_gnn.py`` trains both where cheap
  (``grid``) and keeps the better on a validation split carved from train (``val_fraction``), at its
  best epoch (``early_stopping_patience``); `validation_score` is what each epoch reports.

The graph and the triples reach the workers through the object store (one ``ray.put`` on the
driver, zero-copy numpy on each worker). Rank 0 writes a checkpoint at the end of every epoch
(model, optimizer, scheduler, history); after a worker failure Ray Train restarts the group
(``FailureConfig``) and ``ray.train.get_checkpoint()`` resumes at the next epoch.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field, model_validator

from copl_ray.config import JobConfig
from copl_ray.gnn.optim import build_optimizer, clip_grad_norm_, use_sparse_embedding_grads
from copl_ray.gnn.target_edges import mask_target_edges
from copl_ray.graph.signed_graph import SignedGraph
from copl_ray.schedule import cosine_with_warmup

MODELS = ("copl", "learnable", "uniform", "lore")


class TrainGNNConfig(JobConfig):
    """jobs/train_gnn.py: train CoPL's signed GNN (or a baseline) and export embeddings.

    Defaults are sized for one small CPU machine (d=64, L=2, 20 epochs, 2 workers);
    ``configs/train_gnn/paper.yaml`` holds the paper's d=512, L=4, lr 1e-4, 300 epochs.
    """

    dataset: str
    output_dir: str
    model: Literal["copl", "learnable", "uniform", "lore"] = "copl"
    dim: int = Field(64, ge=1, description="embedding size d (paper: 512)")
    num_layers: int = Field(2, ge=1, description="message-passing layers L (paper: 4)")
    transform: bool = Field(False, description=(
        "copl: W_self, W1..W4 of Eq. 2-3 (paper: true). false = Table A4's 'w/o Act. & Trans.' layer,"
        " e + a+ - a-; with activation=false it generalized best at d=64 (docs/ARCHITECTURE.md)"))
    activation: bool = Field(False, description="copl: LeakyReLU after each layer (paper: true)")
    model_options: dict = Field(default_factory=dict, description="extra model config fields")
    user_init: Literal["random", "agreement", "latent_classes"] = Field("random", description=(
        "copl: e^(0) of users. random: N(0, init_std^2) (paper). agreement: the first"
        " AGREEMENT_RANK columns start from the signed agreement spectrum of the train pairs"
        " (copl_ray/gnn/agreement_init.py; departs from the paper), row norm user_init_norm."
        " latent_classes: the first K columns start from each user's posterior over the classes of a"
        " latent-class EM on the train pairs (leave-one-out E-step), K and annealing chosen on validation"
        " (copl_ray/gnn/latent_classes.py)"))
    user_init_norm: float = Field(0.1, gt=0, description="user_init agreement / latent_classes: row norm of the warm start")
    mode: Literal["auto", "sampled", "full"] = Field("auto", description=(
        "auto: sampled up to auto_full_min_train_pairs train pairs, else full-graph propagation with"
        " the large-batch recipe (LARGE_BATCH: batch, lr, one worker with every CPU of a node) for"
        " the keys not set explicitly. full / sampled: as named, with the keys as given"))
    auto_full_min_train_pairs: int = Field(500_000, ge=0, description="mode=auto: full-graph training above this")
    cpus_per_worker: int | None = Field(None, ge=1, description=(
        "Ray CPUs and torch threads per worker. None: 1, or every CPU of the largest node when"
        " mode=auto picks full-graph training (its sparse products use every thread)"))
    exclude_target_edges: bool | None = Field(None, description=(
        "score each training pair without its own two edges in the message-passing graph"
        " (copl_ray/gnn/target_edges.py; departs from the paper). None: on for the propagation-only"
        " layer (transform=false), off with transform=true, where it was measured to hurt"
        " (docs/ARCHITECTURE.md, GNN defaults)"))
    fanouts: list[int] = Field(default_factory=lambda: [10, 10],
                               description="neighbours per sign per layer, outermost hop last")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(1024, ge=1, description="global pairs per step, split across workers")
    lr: float = Field(1e-3, gt=0)
    l2: float = Field(1.0, ge=0, description=(
        "Eq. 5's lambda: l2 * batch mean of ||e_u^(0)||^2 + ||e_a^(0)||^2 + ||e_b^(0)||^2 over the"
        " batch's triples (coupled, in the loss; every model in the harness). 0 = off"))
    weight_decay: float = Field(1e-4, ge=0, description="AdamW's decoupled decay (all parameters)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float | None = Field(None, gt=0)
    num_workers: int = Field(2, ge=1)
    grad_sync: Literal["ddp", "sparse_rows"] = Field("sparse_rows", description=(
        "sparse_rows: embedding tables exchange only the rows the step touched (all-gather of row"
        " ids and rows; the other parameters are all-reduced); ddp: Ray Train's prepare_model (torch"
        " DDP). Same averaged gradient; sparse_rows was faster at 10k and at 1M users (bench_gnn)"))
    optimizer: Literal["adamw", "sparse_grad_adamw", "row_sparse_adamw"] = Field("sparse_grad_adamw", description=(
        "adamw: torch AdamW, dense gradients. sparse_grad_adamw: embedding lookups give row-sparse"
        " gradients (exchanged as rows), AdamW's exact step. row_sparse_adamw: the same gradients, lazy"
        " step (only the rows a step touched move). copl_ray/gnn/optim.py; in mode=full all three are AdamW"))
    use_gpu: bool = False
    keep_freed_memory: bool = Field(True, description=(
        "glibc workers keep freed memory for reuse instead of unmapping it (train.keep_freed_memory):"
        " a 1M-user step's large temporaries otherwise page-fault afresh every step"))
    max_failures: int = Field(1, ge=0)
    storage_path: str | None = Field(None, description="Ray Train storage (a path or a pyarrow URI such as "
                                     "s3://bucket/x); default output_dir/ray")
    seed: int = 0
    validate_input: bool = Field(True, description=(
        "check the whole dataset first (copl_ray.data.dataset.validate_dataset: every split's columns"
        " and ids, named by file and row); 0.7 s at 10k users. The graph build checks train ids anyway"))
    holdout_fraction: float = Field(0.0, ge=0, lt=1, description=(
        "share of annotations/train kept out of the graph and scored as gnn_holdout_accuracy"
        " (paper Table 6: pairs not reflected in the graph); the per-epoch accuracy uses it"))
    val_fraction: float = Field(0.1, ge=0, lt=1, description=(
        "share of annotations/train carved out as validation pairs (kept out of the graph while"
        " training; each user keeps at least one train pair): the best epoch, early stopping and the"
        " grid are chosen on them, never on test labels (copl_ray/gnn/selection.py). Their edges are"
        " back in the graph for the exported embeddings. 0 = no selection: the last epoch is kept"))
    val_min_z: float = Field(3.0, ge=0, description=(
        "validation chooses (epoch, grid candidate) only when the best validation accuracy is this many"
        " standard errors above chance; below it (validation pairs the graph cannot score, e.g. survey"
        " pairs with ~1 annotator each) the first candidate is refit on all train pairs for all epochs."
        " 0: always trust validation (copl_ray.gnn.selection.beats_chance)"))
    early_stopping_patience: int | None = Field(3, ge=1, description=(
        "stop after this many epochs without a better validation score (None: run all epochs)"))
    grid: bool | Literal["auto"] = Field("auto", description=(
        "train each candidate of copl_ray.gnn.selection.GRID_CANDIDATES (layer kind, layers, lr, l2, user start)"
        " and keep the"
        " best on validation. auto: copl with a validation split and at most grid_max_train_pairs"
        " train pairs, varying only the keys not set explicitly; true / false force it on / off"))
    grid_max_train_pairs: int = Field(500_000, ge=0, description="grid=auto: the largest train split it runs on")
    eval_every_steps: int = Field(0, ge=0, description="test accuracy every N steps (0: per epoch)")
    stop_at_accuracy: float | None = Field(None, gt=0, le=1,
                                           description="stop once test accuracy reaches this (benchmarks)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="benchmarks: cut epochs short")
    evaluate_each_epoch: bool = Field(True, description="score the eval pairs after every epoch")
    fail_at_epoch: int | None = Field(None, ge=0, description="testing: raise once at this epoch's start")

    @model_validator(mode="after")
    def _check(self):
        if self.mode != "full" and self.model == "copl" and len(self.fanouts) != self.num_layers:
            raise ValueError(f"fanouts has {len(self.fanouts)} entries but num_layers={self.num_layers};"
                             " give one fan-out per layer (or mode=full)")
        if self.exclude_target_edges is None:
            # Derived, not chosen: bypass pydantic's __setattr__, which would mark the key as set
            # (train_gnn's grid varies only the keys a user did not set).
            object.__setattr__(self, "exclude_target_edges", self.model == "copl" and not self.transform)
        for key in ("transform", "activation", "dim", "num_layers"):
            if key in self.model_options:
                raise ValueError(f"model_options.{key}: set the top-level key {key} instead")
        if any(f < 1 for f in self.fanouts):
            raise ValueError(f"fanouts must be >= 1, got {self.fanouts}")
        if self.batch_size < self.num_workers:
            raise ValueError(f"batch_size={self.batch_size} < num_workers={self.num_workers}")
        if (self.optimizer != "adamw" and self.use_gpu and self.grad_sync == "ddp" and self.num_workers > 1):
            raise ValueError(f"optimizer={self.optimizer} with use_gpu=true and num_workers>1 needs"
                             " grad_sync=sparse_rows (NCCL cannot all-reduce DDP's sparse gradients)")
        if self.fail_at_epoch is not None and self.fail_at_epoch >= self.epochs:
            raise ValueError(f"fail_at_epoch={self.fail_at_epoch} must be < epochs={self.epochs}")
        return self


# The large-batch full-graph recipe mode=auto applies above auto_full_min_train_pairs (keys set
# explicitly keep their values). Measured on ufp4 ALL (withheld pairs; docs/ARCHITECTURE.md, "GNN
# at scale"): at 100k users 65,536-pair steps at lr 1e-2 passed 90% in 5 steps, 262,144-pair steps
# cost 2.7x more per step for no fewer steps, lr 3e-2 oscillated after its peak. A short warm-up:
# the run is a few hundred steps and reaches its target within tens, where 10% would still ramp.
LARGE_BATCH = {"batch_size": 65_536, "lr": 1e-2, "num_workers": 1, "warmup_ratio": 0.02}
LARGE_BATCH_MIN_STEPS = 200  # epochs default to the fewest that give this many steps (at most `epochs`)


def resolve_mode(cfg: TrainGNNConfig, n_train_pairs: int, node_cpus: int = 1) -> tuple[TrainGNNConfig, dict]:
    """``cfg`` with ``mode="auto"`` made concrete, and what was decided (for metrics.json).

    Args:
        n_train_pairs: pairs the run trains on.
        node_cpus: CPUs of the largest node (the full-graph worker's threads when not set).
    """
    if cfg.mode != "auto":
        return cfg, {"mode": cfg.mode, "reason": "set explicitly"}
    if cfg.model != "copl" or n_train_pairs <= cfg.auto_full_min_train_pairs:
        update = {"mode": "sampled"}
        reason = (f"{n_train_pairs} train pairs <= auto_full_min_train_pairs={cfg.auto_full_min_train_pairs}"
                  if cfg.model == "copl" else f"model={cfg.model} has no graph")
    else:
        update = {"mode": "full", **{k: v for k, v in LARGE_BATCH.items() if k not in cfg.model_fields_set}}
        batch = update.get("batch_size", cfg.batch_size)
        if "epochs" not in cfg.model_fields_set:
            steps_per_epoch = -(-n_train_pairs // batch)
            update["epochs"] = min(cfg.epochs, max(1, -(-LARGE_BATCH_MIN_STEPS // steps_per_epoch)))
        if "cpus_per_worker" not in cfg.model_fields_set:
            update["cpus_per_worker"] = max(1, int(node_cpus))
        reason = (f"{n_train_pairs} train pairs > auto_full_min_train_pairs={cfg.auto_full_min_train_pairs}:"
                  " full-graph propagation, large batches")
    # model_copy marks the updated keys as set: harmless, the grid varies none of them ("mode", and
    # the recipe's keys only above the grid's size limit).
    return cfg.model_copy(update=update), {**update, "reason": reason}


# ----------------------------------------------------------------------------- shared helpers


def graph_from_arrays(arrays: dict, n_users: int, n_responses: int) -> SignedGraph:
    """SignedGraph over object-store numpy arrays without copying them (read-only views)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns on read-only buffers; never written
        t = {k: torch.from_numpy(arrays[k]) for k in ("pos_user", "pos_response", "neg_user", "neg_response")}
    return SignedGraph(n_users, n_responses, t["pos_user"], t["pos_response"], t["neg_user"], t["neg_response"])


def global_batches(n: int, epoch: int, cfg: TrainGNNConfig, world: int) -> list[np.ndarray]:
    """Triple positions of every step's global batch in one epoch (identical on every rank).

    One seeded permutation per epoch, padded by wrapping to a multiple of the world size (so no
    rank gets an empty batch), cut into batches of ``cfg.batch_size`` rounded up to that multiple.
    """
    perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
    pad = (-n) % world
    if pad:
        perm = np.concatenate([perm, perm[:pad]])
    batch = -(-cfg.batch_size // world) * world
    out = [perm[s:s + batch] for s in range(0, len(perm), batch)]
    return out[:cfg.max_steps_per_epoch] if cfg.max_steps_per_epoch else out


def rank_batches(n: int, epoch: int, cfg: TrainGNNConfig, rank: int, world: int) -> list[np.ndarray]:
    """This rank's triple positions for each step of one epoch: positions r, r+W, ... of each
    `global_batches` batch. So the ranks of a step together see exactly the batch one worker
    would, and the DDP mean of their gradients is the one-worker gradient (up to float order)."""
    return [g[rank::world] for g in global_batches(n, epoch, cfg, world)]


@torch.no_grad()
def sync_gradients_sparse_rows(model: torch.nn.Module, world: int) -> None:
    """Average gradients over ranks; ``nn.Embedding`` tables send only their non-zero rows.

    A sampled step touches a small share of 1M user rows, so all-gathering (row ids, rows) moves
    tens of megabytes where DDP's dense all-reduce moves the whole table (256 MB at 1M x 64 floats).
    The result equals the dense mean: rows a rank did not touch contribute zeros either way. A
    row-sparse gradient (``optimizer`` other than ``adamw``) gives its rows directly and stays sparse
    (the union of the ranks' rows); a dense one is scanned for its non-zero rows.
    """
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, torch.nn.Embedding) and module.weight.grad is not None:
            grad = module.weight.grad
            if grad.is_sparse:
                # Not coalesced (a sort): the union repeats rows anyway, and the optimizer sums repeats.
                rows, vals = _all_gather_rows(grad._indices()[0], grad._values(), world)
                module.weight.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), vals.div_(world), grad.shape)
                continue
            rows = torch.nonzero(grad.abs().sum(1)).flatten()
            all_rows, all_vals = _all_gather_rows(rows, grad[rows], world)
            grad.index_fill_(0, rows, 0.0)  # only these rows are non-zero locally
            grad.index_add_(0, all_rows, all_vals)
            grad /= world
        else:
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world


def _all_gather_rows(rows: torch.Tensor, vals: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (rows [n_k], vals [n_k, d]) in rank order, as ([W * w], [W * w, d]), w = max n_k.

    A shorter list is padded with zero-valued entries at its own first row, so sums over the
    result (``index_add_``, ``coalesce``) and the set of rows are those of the unpadded lists; no
    copy trims the padding (at 1M users a rank sends ~45 MB). Only when a rank sends no row at all
    is the padding cut off after the exchange.
    """
    dev = vals.device  # NCCL needs device tensors; gloo takes CPU ones
    counts = torch.zeros(world, dtype=torch.long, device=dev)
    dist.all_gather_into_tensor(counts, torch.tensor([rows.numel()], dtype=torch.long, device=dev))
    sizes = counts.tolist()
    width, n = max(sizes), rows.numel()
    if n < width:
        pad_row = rows[:1] if n else rows.new_zeros(1)
        rows = torch.cat([rows, pad_row.expand(width - n)])
        vals = torch.cat([vals, vals.new_zeros(width - n, vals.shape[1])])
    all_rows = rows.new_empty(world * width)
    all_vals = vals.new_empty(world * width, vals.shape[1])
    dist.all_gather_into_tensor(all_rows, rows.contiguous())
    dist.all_gather_into_tensor(all_vals, vals.contiguous())
    if min(sizes) == 0:
        keep = torch.cat([torch.arange(k * width, k * width + m, device=dev) for k, m in enumerate(sizes)])
        all_rows, all_vals = all_rows[keep], all_vals[keep]
    return all_rows, all_vals


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process (no mmap for large blocks, no trim).

    A sampled step at 1M users allocates ~270 MB of temporaries in blocks above glibc's mmap
    threshold (embedding rows of the 2-hop neighbourhood, their gradients); glibc maps each one and
    unmaps it on free, so every step page-faults them in again: measured on one thread here, 68k
    minor faults and 560 -> 460 ms CPU per step (forward 78 -> 61, backward 230 -> 142) once they
    are reused, for ~0.1 GB more peak RSS. Process-wide (a Ray Train worker runs nothing else);
    returns False where there is no glibc ``mallopt`` (the call is then a no-op).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc <malloc.h>
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 1 << 30))


def _peak_rss_per_rank(rank: int, world: int) -> list[float]:
    """Peak resident memory (MiB) of every rank's process so far (``ru_maxrss``, KiB on Linux)."""
    import resource

    return _per_rank(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rank, world)


def _node_ids(world: int) -> list[str]:
    """The Ray node id each rank runs on, in rank order (a collective when world > 1)."""
    import ray

    mine = ray.get_runtime_context().get_node_id()
    if world == 1:
        return [mine]
    every: list = [None] * world
    dist.all_gather_object(every, mine)
    return every


def _per_rank(value: float, rank: int, world: int) -> list[float]:
    """Every rank's ``value``, in rank order (a collective: all ranks must call it)."""
    mine = torch.zeros(world, dtype=torch.float64)
    mine[rank] = value
    if world > 1:
        dist.all_reduce(mine)
    return mine.tolist()


def _fail_after_reports_consumed(epoch: int, world: int) -> None:
    """Raise the injected failure (``fail_at_epoch``) once every rank's last report has reached the controller.

    Ray Train polls each worker for one queued report every couple of seconds and handles a worker's
    error as soon as a poll sees it. A rank that raised right after ``report`` could therefore be seen
    failing before a slower rank's report of the same epoch arrived, and that epoch's checkpoint would
    be dropped: the restart resumed one epoch early, at random. Waiting until each rank's report queue
    is drained (the poll marks it done) and then for every rank makes the resume point deterministic.
    """
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        get_train_context().get_result_queue().join()
    except (ImportError, AttributeError):  # another Ray Train layout: fall back to two poll intervals
        time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)))
    if world > 1:
        dist.barrier()
    raise RuntimeError(f"injected failure at the start of epoch {epoch} (fail_at_epoch)")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


# ----------------------------------------------------------------------------- worker loop


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker.

    ``config = {"job": TrainGNNConfig as dict, "data": ObjectRef of a dict of numpy arrays
    (graph edges ``pos_user``..., train triples ``train_user/train_chosen/train_rejected``, the
    pairs scored each epoch ``eval_user/eval_chosen/eval_rejected``, ``response_in_graph``;
    ``user_spectrum`` [n_users, k] when ``user_init="agreement"``, ``user_classes`` [n_users, K] when
    ``user_init="latent_classes"``),
    "n_users": int, "n_responses": int}``.
    """
    import ray
    import ray.train
    import ray.train.torch

    from copl_ray.eval.gnn_metrics import gnn_accuracy
    from copl_ray.gnn.selection import EarlyStopping

    cfg = TrainGNNConfig.model_validate(config["job"])
    if cfg.mode == "auto":
        raise ValueError("train_loop_per_worker: resolve mode=auto first (copl_ray.gnn.train.resolve_mode)")
    if cfg.cpus_per_worker is not None:
        torch.set_num_threads(cfg.cpus_per_worker)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    data = config["data"]
    data = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    n_users, n_responses = int(config["n_users"]), int(config["n_responses"])
    graph = graph_from_arrays(data, n_users, n_responses)
    train_u, train_a, train_b = data["train_user"], data["train_chosen"], data["train_rejected"]
    n_train = len(train_u)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, n_users, n_responses)
    if cfg.model == "copl" and cfg.user_init != "random":
        key = {"agreement": "user_spectrum", "latent_classes": "user_classes"}[cfg.user_init]
        if key not in data:
            raise ValueError(f"user_init={cfg.user_init}: the driver put no {key} in the data")
        from copl_ray.gnn.agreement_init import warm_start_users

        warm_start_users(model.user_emb.weight, data[key], cfg.user_init_norm)
    model = model.to(device)
    # Row-sparse gradients where tables are looked up (not full-graph propagation, which reads every
    # row and gives a dense gradient that DDP must then expect). Before DDP: it reads the flag once.
    use_sparse_embedding_grads(model, cfg.optimizer != "adamw" and not (_is_gnn(model) and cfg.mode == "full"))
    if world > 1 and cfg.grad_sync == "ddp":
        model = ray.train.torch.prepare_model(model)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    spe = len(rank_batches(n_train, 0, cfg, rank, world))
    scheduler = cosine_with_warmup(optimizer, spe * cfg.epochs, cfg.warmup_ratio)
    sampler = full_edges = None
    if _is_gnn(model) and cfg.mode == "sampled":
        from copl_ray.gnn.sampler import NeighborSampler

        sampler = NeighborSampler(graph, list(cfg.fanouts), seed=cfg.seed * 1000 + rank,
                                  negative_edges=cfg.model_options.get("negative_edges", True))
    elif _is_gnn(model):
        from copl_ray.gnn.full_graph import FullGraph
        from copl_ray.gnn.sampler import SignedEdges

        full_edges = FullGraph(SignedEdges.from_graph(graph).to(device), n_users, n_responses)

    state = {"epoch": 0, "step": 0, "history": [], "evals": [], "train_seconds": 0.0, "train_cpu_seconds": 0.0,
             "restored_from_epoch": None, "stopped_early": False, "early_stopping": None}
    n_val = len(data.get("val_user", ()))
    stopper = EarlyStopping(cfg.early_stopping_patience if n_val else None)
    best_model = None  # rank 0: CPU copy of the weights at the best validation epoch
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            blob = torch.load(os.path.join(folder, "train_state.pt"), map_location=device, weights_only=False)
        _unwrap(model).load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        state = blob["state"]
        state["restored_from_epoch"] = state["epoch"]
        best_model = blob.get("best_model")
        if state.get("early_stopping"):
            stopper.load_state_dict(state["early_stopping"])
    # Where each rank ran, one entry per (re)start of the worker group: multi-node runs are checkable.
    state.setdefault("worker_nodes", []).append(_node_ids(world))

    def evaluate(embeddings=None) -> float:
        e_user, e_resp = embeddings or embed_all(_unwrap(model), graph)
        acc = gnn_accuracy(e_user.cpu(), e_resp.cpu(), data["eval_user"], data["eval_chosen"],
                           data["eval_rejected"], data["response_in_graph"])
        return acc["accuracy"]

    def stop_flag(value: bool) -> bool:
        flag = torch.tensor([1.0 if value else 0.0])
        if world > 1:
            dist.broadcast(flag, src=0)  # rank 0 decides; every rank must leave the loop together
        return bool(flag.item())

    model.train()
    stop = False
    for epoch in range(state["epoch"], cfg.epochs):
        if cfg.fail_at_epoch is not None and epoch == cfg.fail_at_epoch and state["restored_from_epoch"] is None:
            _fail_after_reports_consumed(epoch, world)
        losses = []
        t_epoch = t_epoch_start = time.perf_counter()
        # This worker's CPU seconds too: unlike wall time, not stretched by other processes on the cores.
        c_epoch = c_epoch_start = time.process_time()
        state.setdefault("train_cpu_seconds", 0.0)
        for step_batch in global_batches(n_train, epoch, cfg, world):
            idx = step_batch[rank::world]
            u, a, r = (torch.from_numpy(x[idx]).to(device) for x in (train_u, train_a, train_b))
            # Every rank masks the whole global batch's edges, as one worker would.
            targets = (tuple(torch.from_numpy(x[step_batch]).to(device) for x in (train_u, train_a, train_b))
                       if cfg.exclude_target_edges else None)
            s_a, s_b = batch_scores(model, u, a, r, sampler=sampler, full_edges=full_edges, device=device,
                                    target_triples=targets)
            btl = -torch.nn.functional.logsigmoid(s_a - s_b).mean()
            loss = btl + cfg.l2 * id_l2(model, u, a, r) if cfg.l2 else btl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1 and cfg.grad_sync == "sparse_rows":
                sync_gradients_sparse_rows(model, world)
            if cfg.max_grad_norm is not None:
                clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            losses.append((float(loss.detach()), float(btl.detach())))
            if cfg.eval_every_steps and state["step"] % cfg.eval_every_steps == 0:
                state["train_seconds"] += time.perf_counter() - t_epoch
                state["train_cpu_seconds"] += time.process_time() - c_epoch
                acc = evaluate() if rank == 0 else float("nan")
                state["evals"].append({"step": state["step"], "train_seconds": state["train_seconds"],
                                       "train_cpu_seconds": state["train_cpu_seconds"], "test_accuracy": acc})
                stop = stop_flag(cfg.stop_at_accuracy is not None and acc >= cfg.stop_at_accuracy)
                t_epoch, c_epoch = time.perf_counter(), time.process_time()  # evaluation is not training
                if stop:
                    break
        state["train_seconds"] += time.perf_counter() - t_epoch
        state["train_cpu_seconds"] += time.process_time() - c_epoch
        epoch_wall = time.perf_counter() - t_epoch_start  # includes mid-epoch evaluations, if any
        epoch_cpu = _per_rank(time.process_time() - c_epoch_start, rank, world)
        # [objective, BTL part] averaged over this epoch's steps and the ranks
        loss_mean = torch.tensor(np.mean(losses, axis=0) if losses else [float("nan")] * 2, dtype=torch.float32)
        if world > 1:
            dist.all_reduce(loss_mean)
            loss_mean /= world
        # rank 0 scores the epoch: eval pairs (monitoring only) and validation pairs (selection)
        emb = embed_all(_unwrap(model), graph) if rank == 0 and (cfg.evaluate_each_epoch or n_val) else None
        acc = evaluate(emb) if rank == 0 and cfg.evaluate_each_epoch else float("nan")
        val = (validation_score(*(e.cpu() for e in emb), data["val_user"], data["val_chosen"], data["val_rejected"])
               if rank == 0 and n_val else None)
        if val is not None:
            no_progress = stopper.update(epoch, val)
            if stopper.best_epoch == epoch:
                best_model = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
            state["early_stopping"] = stopper.state_dict()
        # rank 0 decides (the others have no validation score); every rank leaves together
        stop_on_val = stop_flag(val is not None and no_progress) if n_val else False
        state["peak_rss_mb_per_rank"] = _peak_rss_per_rank(rank, world)
        state["history"].append({"epoch": epoch, "loss": float(loss_mean[0]), "btl_loss": float(loss_mean[1]),
                                 "test_accuracy": acc,
                                 "val_accuracy": None if val is None else val.accuracy,
                                 "val_loss": None if val is None else val.loss,
                                 "steps": state["step"], "train_seconds": state["train_seconds"],
                                 "epoch_seconds": epoch_wall, "epoch_cpu_seconds_per_rank": epoch_cpu,
                                 "epoch_steps": len(losses)})
        state["epoch"] = epoch + 1
        if not stop and cfg.stop_at_accuracy is not None and not cfg.eval_every_steps:
            stop = stop_flag(acc >= cfg.stop_at_accuracy)
        stop = stop or stop_on_val
        state["stopped_early"] = bool(stop)
        metrics = {"epoch": epoch, "loss": float(loss_mean[0]), "btl_loss": float(loss_mean[1]), "test_accuracy": acc}
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                torch.save({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "state": state, "best_model": best_model},
                           os.path.join(tmp, "train_state.pt"))
                Path(tmp, "train_state.json").write_text(json.dumps(state))
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        if stop:
            break


# ----------------------------------------------------------------------------- model harness


def build_model(cfg: TrainGNNConfig, n_users: int, n_responses: int) -> torch.nn.Module:
    """The model named by ``cfg.model``; all four score pairs by a user-response dot product."""
    from copl_ray.gnn import baselines
    from copl_ray.gnn.model import CoPLGNN, GNNConfig

    if cfg.model == "copl":
        return CoPLGNN(GNNConfig(n_users=n_users, n_responses=n_responses, dim=cfg.dim,
                                 num_layers=cfg.num_layers, transform=cfg.transform,
                                 activation=cfg.activation, **cfg.model_options))
    cls = {"learnable": baselines.LearnableEmbeddings, "uniform": baselines.UniformScores,
           "lore": baselines.LoRe}[cfg.model]
    return cls(n_users=n_users, n_responses=n_responses, dim=cfg.dim, **cfg.model_options)


def _is_gnn(model: torch.nn.Module) -> bool:
    from copl_ray.gnn.model import CoPLGNN

    return isinstance(_unwrap(model), CoPLGNN)


def batch_scores(model, user: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
                 sampler=None, full_edges=None, device=None,
                 target_triples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_{u,a} [B], s_{u,b} [B]) for a batch of triples (dense indices, each [B]).

    GNN: embeddings over the sampled neighbourhood of the batch's users and responses (``sampler``)
    or over the full graph (``full_edges``: a `FullGraph`, whose sparse matrices are built once;
    with ``target_triples`` a view with those edges masked). ``target_triples``: (user, chosen,
    rejected) global ids [T] whose own edges carry no message (`copl_ray.gnn.target_edges`; the
    step's global batch, which contains this rank's triples). Baselines score pairs directly.
    """
    if not _is_gnn(model):
        # One forward for both sides: DDP allows one forward per backward.
        s = model(torch.cat([user, user]), torch.cat([chosen, rejected]))
        return s[:len(user)], s[len(user):]
    if sampler is None:
        if full_edges is None:
            raise ValueError("batch_scores: a GNN needs a sampler or full_edges")
        edges = full_edges.view(*target_triples) if target_triples is not None else full_edges.view()
        e_user, e_resp = model(edges)
        e_u = e_user[user]
        return (e_u * e_resp[chosen]).sum(-1), (e_u * e_resp[rejected]).sum(-1)
    seed_users, inv_u = torch.unique(user, return_inverse=True)
    seed_resps, inv_r = torch.unique(torch.cat([chosen, rejected]), return_inverse=True)
    sub = sampler.sample(seed_users.cpu(), seed_resps.cpu())
    # The sampler puts the seeds first, in the order given, so seed i is local row i.
    b = len(chosen)
    edges = sub.edges.to(device)
    if target_triples is not None:
        edges = mask_target_edges(edges, int(_unwrap(model).cfg.n_responses), *target_triples,
                                  user_nodes=sub.user_nodes.to(device), resp_nodes=sub.resp_nodes.to(device))
    e_user, e_resp = model(edges, sub.user_nodes.to(device), sub.resp_nodes.to(device))
    e_u = e_user[inv_u]
    return (e_u * e_resp[inv_r[:b]]).sum(-1), (e_u * e_resp[inv_r[b:]]).sum(-1)


def id_l2(model: torch.nn.Module, user: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Batch mean of ||e_u^(0)||^2 + ||e_a^(0)||^2 + ||e_b^(0)||^2 (scalar) for triples user,
    chosen, rejected [B]: the rows of every ID table the model names in ``ID_TABLES``
    (``{"user": (...), "resp": (...)}``; e.g. CoPL's ``user_emb`` / ``resp_emb``, LoRe's logits and
    basis). Looked up again here rather than taken from the forward pass, which (full graph,
    sampled subgraph) holds these rows at positions that differ by mode."""
    m = _unwrap(model)
    total = user.new_zeros((), dtype=torch.float32)
    for side, ids in (("user", (user,)), ("resp", (chosen, rejected))):
        for name in type(m).ID_TABLES[side]:
            table = getattr(m, name)
            for i in ids:
                total = total + table(i).float().pow(2).sum(-1).mean()
    return total


@torch.no_grad()
def validation_score(e_user: torch.Tensor, e_resp: torch.Tensor, user: np.ndarray, chosen: np.ndarray,
                     rejected: np.ndarray):
    """`Score` (accuracy with ties counted half, mean BTL loss) of validation triples [V] under
    final embeddings e_user [n_users, d], e_resp [n_responses, d]."""
    from copl_ray.gnn.selection import score_margins

    u, a, b = (torch.from_numpy(np.asarray(x)) for x in (user, chosen, rejected))
    return score_margins((e_user[u] * (e_resp[a] - e_resp[b])).sum(-1))


@torch.no_grad()
def embed_all(model: torch.nn.Module, graph: SignedGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """All final embeddings (e_user [n_users, d], e_resp [n_responses, d]), eval mode."""
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    out = model.embed_all(graph)
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------- driver


def train_storage(cfg: TrainGNNConfig) -> str:
    """Ray Train's storage: a URI (s3://, gs://, any pyarrow filesystem) as given; a path made absolute."""
    if cfg.storage_path and "://" in cfg.storage_path:
        return cfg.storage_path
    return str(Path(cfg.storage_path or Path(cfg.output_dir) / "ray").resolve())


def run_training(cfg: TrainGNNConfig, data_ref, n_users: int, n_responses: int, run_tag: str = ""):
    """Fit on Ray Train; returns (``ray.train.Result``, the last checkpoint's training state).

    ``data_ref``: object ref of the arrays `train_loop_per_worker` documents.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = train_storage(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": cfg.model_dump(mode="json"), "data": data_ref,
                           "n_users": n_users, "n_responses": n_responses},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker or 1}),
        run_config=RunConfig(
            storage_path=str(storage),
            # A fresh name per run: Ray Train V2 would resume a finished run of the same name.
            name=f"train_gnn-{cfg.model}{'-' + run_tag if run_tag else ''}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training under {storage} ended without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = json.loads(Path(folder, "train_state.json").read_text())
    return result, state


def load_trained_model(cfg: TrainGNNConfig, checkpoint, graph: SignedGraph):
    """(model, e_user [n_users, d], e_resp [n_responses, d]) from a training checkpoint: the
    weights of the best validation epoch when there was a validation split, else the last ones.
    ``graph`` is the one the embeddings are propagated over (may hold more edges than training's)."""
    model = build_model(cfg, graph.n_users, graph.n_responses)
    with checkpoint.as_directory() as folder:
        blob = torch.load(os.path.join(folder, "train_state.pt"), map_location="cpu", weights_only=False)
    model.load_state_dict(blob.get("best_model") or blob["model"])
    e_user, e_resp = embed_all(model, graph)
    return model, e_user, e_resp
