"""CoPL's GNN (paper Section 4.1): ID embeddings, L signed message-passing layers, Eq. 4-5.

Departures from the paper, all options default to the paper:
- ``variant="official"`` reproduces the authors' code as the issue describes it (see
  `SignedBipartiteConv`); the paper's own equations are ``variant="paper"``.
- Eq. 5's lambda ||theta||^2 is `btl_loss`'s ``l2`` over the tensors the caller passes; the trainer
  may use AdamW's decoupled ``weight_decay`` instead (different under Adam's per-coordinate step
  sizes: the coupled penalty of Eq. 5 is the faithful one).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from copl_ray.gnn.layers import SignedBipartiteConv
from copl_ray.gnn.sampler import SignedEdges
from copl_ray.graph.signed_graph import SignedGraph

__all__ = ["GNNConfig", "CoPLGNN", "btl_loss", "pair_accuracy", "save_model", "load_model",
           "MODEL_FORMAT_VERSION"]

MODEL_FORMAT_VERSION = "1"


@dataclass
class GNNConfig:
    """Hyper-parameters of `CoPLGNN` (paper App. D.2: d=512, L=4, LeakyReLU)."""

    n_users: int
    n_responses: int
    dim: int = 512
    num_layers: int = 4
    negative_edges: bool = True
    transform: bool = True
    activation: bool = True
    variant: str = "paper"
    # N(0, init_std^2) ID embeddings; the paper says only "randomly initialize". The scale matters:
    # on tldr 10k ALL (d=64, L=2, lr 1e-3, one pair per user withheld from the graph) std 0.1 fit
    # every train pair through the free ID embeddings and stayed at chance on withheld pairs
    # (52.7%), while std 0.01 reached 95.0% after 2 epochs.
    init_std: float = 0.01
    negative_slope: float = 0.01
    weight_init: str = "glorot"

    def __post_init__(self):
        for name in ("n_users", "n_responses", "dim", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GNNConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.init_std <= 0:
            raise ValueError(f"GNNConfig.init_std must be > 0, got {self.init_std}")


class CoPLGNN(nn.Module):
    """ID embeddings e^(0) and ``num_layers`` `SignedBipartiteConv` layers; s_{u,r} = e_u^(L) . e_r^(L).

    The embeddings are ``nn.Embedding`` tables (the trainer's row-sparse gradient exchange looks for
    them). psi is applied after every layer including the last, as Eq. 3 is written.
    """

    ID_TABLES = {"user": ("user_emb",), "resp": ("resp_emb",)}  # e^(0), penalized by Eq. 5's lambda

    def __init__(self, cfg: GNNConfig):
        super().__init__()
        self.cfg = cfg
        self.user_emb = nn.Embedding(cfg.n_users, cfg.dim)
        self.resp_emb = nn.Embedding(cfg.n_responses, cfg.dim)
        self.convs = nn.ModuleList(
            SignedBipartiteConv(cfg.dim, negative_edges=cfg.negative_edges, transform=cfg.transform,
                                activation=cfg.activation, variant=cfg.variant,
                                negative_slope=cfg.negative_slope, weight_init=cfg.weight_init)
            for _ in range(cfg.num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.user_emb.weight, std=self.cfg.init_std)
        nn.init.normal_(self.resp_emb.weight, std=self.cfg.init_std)
        for conv in self.convs:
            conv.reset_parameters()

    def forward(self, edges: SignedEdges, user_nodes: Tensor | None = None,
                resp_nodes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Final embeddings (e_user [nu, d], e_resp [nr, d]).

        Args:
            edges: edges over local ids: the full graph (``user_nodes``/``resp_nodes`` None: local =
                global) or a sampled `Subgraph.edges`.
            user_nodes: [nu] global ids of the subgraph's users (row i = local user i); None = all.
            resp_nodes: [nr] likewise for responses.
        Returns:
            full graph: all rows. A sampled subgraph from a sampler with ``len(fanouts) ==
            num_layers`` (``edges.user_hops`` set): only the seed rows, e_user [n_seed_users, d] and
            e_resp [n_seed_resps, d], since layer l updates only the nodes within L-1-l hops.
        """
        e_u = self.user_emb.weight if user_nodes is None else self.user_emb(user_nodes)
        e_r = self.resp_emb.weight if resp_nodes is None else self.resp_emb(resp_nodes)
        L = len(self.convs)
        hu, hr = edges.user_hops, edges.resp_hops
        trim = hu is not None and hr is not None and len(hu) == len(hr) == L + 1
        for layer, conv in enumerate(self.convs):
            # Layer l only needs nodes within L-1-l hops of the seeds (the rest cannot reach them).
            n_out = (int(hu[L - 1 - layer]), int(hr[L - 1 - layer])) if trim else None
            e_u, e_r = conv(e_u, e_r, edges, n_out=n_out)
        return e_u, e_r

    @torch.no_grad()
    def embed_all(self, graph: SignedGraph, batch_users: int | None = None) -> tuple[Tensor, Tensor]:
        """Full-graph final embeddings (e_user [n_users, d], e_resp [n_responses, d]) for export.

        No gradients. ``batch_users``: update this many rows (users, and responses) at a time
        within each layer, so the layer's [N, d] temporaries (aggregates, Hadamard products, matrix
        products; ~8 of them in an unchunked `forward`) shrink to [batch_users, d]; two [N, d]
        tables per side remain (1M users, d=512: 4 GB). None: 65536.
        """
        if (graph.n_users, graph.n_responses) != (self.cfg.n_users, self.cfg.n_responses):
            raise ValueError(f"graph has {graph.n_users} users / {graph.n_responses} responses, model was"
                             f" built for {self.cfg.n_users} / {self.cfg.n_responses}")
        device = self.user_emb.weight.device
        edges = SignedEdges.from_graph(graph).to(device)
        batch_users = 65536 if batch_users is None else batch_users
        if batch_users < 1:
            raise ValueError(f"batch_users must be >= 1, got {batch_users}")
        e_u, e_r = self.user_emb.weight, self.resp_emb.weight
        for conv in self.convs:
            e_u, e_r = conv.forward_chunked(e_u, e_r, edges, batch_users)
        return e_u, e_r


def btl_loss(e_user: Tensor, e_chosen: Tensor, e_rejected: Tensor, l2: float = 0.0,
             params: list[Tensor] | None = None, weight: Tensor | None = None) -> Tensor:
    """Eq. 5: mean over pairs of -log sigma(s_{u,a} - s_{u,b}) + l2 * sum ||p||^2.

    Args:
        e_user, e_chosen, e_rejected: [B, d] embeddings of each pair's user and responses.
        l2: lambda of Eq. 5; applied to ``params`` (e.g. ``model.parameters()``, or, as LightGCN's
            code does, only the batch's ID embeddings). 0 = no penalty (use AdamW decay instead).
        weight: optional [B] per-pair weights (e.g. 1/|D_u|, LoRe Eq. 10); weighted mean.
    Returns:
        scalar loss.
    """
    margin = (e_user * (e_chosen - e_rejected)).sum(-1)
    nll = -F.logsigmoid(margin)
    loss = nll.mean() if weight is None else (nll * weight).sum() / weight.sum()
    if l2:
        if params is None:
            raise ValueError("btl_loss: l2 > 0 needs params (the tensors Eq. 5 regularizes)")
        loss = loss + l2 * sum(p.pow(2).sum() for p in params)
    return loss


@torch.no_grad()
def pair_accuracy(e_user: Tensor, e_chosen: Tensor, e_rejected: Tensor) -> float:
    """Fraction of pairs with s_{u,a} > s_{u,b} (strict; copl_ray.eval.gnn_metrics counts ties half)."""
    margin = (e_user * (e_chosen - e_rejected)).sum(-1)
    return float((margin > 0).float().mean()) if margin.numel() else float("nan")


def save_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Weights + {format_version, kind, config JSON} as one safetensors file, written atomically.

    Works for `CoPLGNN` and the baselines (anything with a dataclass ``cfg`` and a registered kind).
    """
    from safetensors.torch import save_file

    from copl_ray.gnn.baselines import kind_of

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format_version": MODEL_FORMAT_VERSION, "kind": kind_of(model), "config": json.dumps(asdict(model.cfg))}
    tmp = path.parent / f".{path.name}.tmp"
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_model(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """The model written by `save_model` (a `CoPLGNN` or a baseline), in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from copl_ray.gnn.baselines import MODEL_KINDS

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("format_version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{path}: model format_version {meta.get('format_version')!r} is not {MODEL_FORMAT_VERSION!r}")
    if meta.get("kind") not in MODEL_KINDS:
        raise ValueError(f"{path}: unknown model kind {meta.get('kind')!r}; expected one of {sorted(MODEL_KINDS)}")
    model = MODEL_KINDS[meta["kind"]](json.loads(meta["config"]))
    model.load_state_dict(load_file(str(path), device=map_location))
    return model.eval()
