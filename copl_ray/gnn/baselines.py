"""Baselines trained in the same harness as `CoPLGNN` (same BTL loss, metric and embedding export).

Each model scores a (user, response) pair by the dot product of a user vector and a response
vector, so ``embed_all`` gives CONTRACT-3 embeddings for all of them:

- `LearnableEmbeddings`: the paper's "w/o GNN embedding" ablation: free d-dim user and response
  embeddings, s = e_u . e_r, no message passing.
- `UniformScores`: one preference for everyone (the paper's Uniform, here over response IDs as the
  graph harness has no text): a learned scalar score per response; user vector = [1] (1-d).
- `LoRe` (Bose et al., LoRe Eq. 10): B basis scores per response R_r in R^B and per-user weights
  w_u on the simplex (softmax of free logits), s = w_u . R_r. With only response IDs, the basis
  R_phi(x, y) is a free B-vector per response (the matrix-factorization form P = W R of LoRe
  Sec. 3.1). LoRe weights each user's loss by 1/|D_i|; `btl_loss(weight=...)` takes such weights,
  the shared trainer uses the plain pair mean (a departure when the trainer does not pass them).

``ID_TABLES`` names the tables indexed by user / response id (the trainer's Eq. 5 penalty).
Constructors take keyword fields (``n_users, n_responses, dim, ...``) and keep them as ``cfg``.
``forward(user [B], resp [B]) -> s [B]``; ``embed(user, resp) -> (e_u [B, k], e_r [B, k])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from copl_ray.gnn.model import CoPLGNN, GNNConfig
from copl_ray.graph.signed_graph import SignedGraph

__all__ = ["LearnableEmbeddings", "UniformScores", "LoRe", "MODEL_KINDS", "kind_of"]


@dataclass
class BaselineConfig:
    n_users: int
    n_responses: int
    dim: int = 64
    init_std: float = 0.01  # same ID-embedding init as CoPLGNN, for a fair comparison
    n_basis: int | None = None  # LoRe only: B (default: dim)

    def __post_init__(self):
        for name in ("n_users", "n_responses", "dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_basis is not None and self.n_basis < 1:
            raise ValueError(f"n_basis must be >= 1, got {self.n_basis}")


class _PairScorer(nn.Module):
    """Shared plumbing: s = <user vector, response vector>."""

    def __init__(self, **fields):
        super().__init__()
        self.cfg = BaselineConfig(**fields)

    def user_vectors(self, user: Tensor | None) -> Tensor:
        raise NotImplementedError

    def resp_vectors(self, resp: Tensor | None) -> Tensor:
        raise NotImplementedError

    def embed(self, user: Tensor, resp: Tensor) -> tuple[Tensor, Tensor]:
        """(e_u [B, k], e_r [B, k]) for index tensors user [B], resp [B]."""
        return self.user_vectors(user), self.resp_vectors(resp)

    def forward(self, user: Tensor, resp: Tensor) -> Tensor:
        """Scores s_{u,r} [B] for dense indices user [B], resp [B]."""
        e_u, e_r = self.embed(user, resp)
        return (e_u * e_r).sum(-1)

    @torch.no_grad()
    def embed_all(self, graph: SignedGraph | None = None, batch_users: int | None = None) -> tuple[Tensor, Tensor]:
        """All vectors (e_user [n_users, k], e_resp [n_responses, k]); ``graph`` only checks sizes."""
        if graph is not None and (graph.n_users, graph.n_responses) != (self.cfg.n_users, self.cfg.n_responses):
            raise ValueError(f"graph has {graph.n_users} users / {graph.n_responses} responses, model was"
                             f" built for {self.cfg.n_users} / {self.cfg.n_responses}")
        return self.user_vectors(None), self.resp_vectors(None)


class LearnableEmbeddings(_PairScorer):
    """Free user and response embeddings (paper: "w/o GNN embedding"), s = e_u . e_r."""

    ID_TABLES = {"user": ("user_emb",), "resp": ("resp_emb",)}

    def __init__(self, **fields):
        super().__init__(**fields)
        self.user_emb = nn.Embedding(self.cfg.n_users, self.cfg.dim)
        self.resp_emb = nn.Embedding(self.cfg.n_responses, self.cfg.dim)
        nn.init.normal_(self.user_emb.weight, std=self.cfg.init_std)
        nn.init.normal_(self.resp_emb.weight, std=self.cfg.init_std)

    def user_vectors(self, user):
        return self.user_emb.weight if user is None else self.user_emb(user)

    def resp_vectors(self, resp):
        return self.resp_emb.weight if resp is None else self.resp_emb(resp)


class UniformScores(_PairScorer):
    """User-independent scores: s_{u,r} = b_r; user vector = [1], response vector = [b_r].

    ``dim`` is accepted for a uniform constructor and ignored (the embeddings are 1-d).
    """

    ID_TABLES = {"user": (), "resp": ("resp_score",)}

    def __init__(self, **fields):
        super().__init__(**fields)
        self.resp_score = nn.Embedding(self.cfg.n_responses, 1)
        nn.init.normal_(self.resp_score.weight, std=self.cfg.init_std)

    def user_vectors(self, user):
        n = self.cfg.n_users if user is None else user.shape[0]
        return self.resp_score.weight.new_ones(n, 1)

    def resp_vectors(self, resp):
        return self.resp_score.weight if resp is None else self.resp_score(resp)


class LoRe(_PairScorer):
    """LoRe (Eq. 10): s_{u,r} = w_u . R_r with w_u = softmax(logits_u) in the simplex, R_r in R^B."""

    ID_TABLES = {"user": ("user_logits",), "resp": ("basis",)}

    def __init__(self, **fields):
        super().__init__(**fields)
        b = self.cfg.n_basis or self.cfg.dim
        self.user_logits = nn.Embedding(self.cfg.n_users, b)
        self.basis = nn.Embedding(self.cfg.n_responses, b)
        nn.init.normal_(self.user_logits.weight, std=self.cfg.init_std)
        nn.init.normal_(self.basis.weight, std=self.cfg.init_std)

    def user_vectors(self, user):
        logits = self.user_logits.weight if user is None else self.user_logits(user)
        return torch.softmax(logits, dim=-1)

    def resp_vectors(self, resp):
        return self.basis.weight if resp is None else self.basis(resp)


# kind -> (constructor from the saved config dict)
MODEL_KINDS = {
    "copl": lambda c: CoPLGNN(GNNConfig(**c)),
    "learnable": lambda c: LearnableEmbeddings(**c),
    "uniform": lambda c: UniformScores(**c),
    "lore": lambda c: LoRe(**c),
}
_CLASSES = {"copl": CoPLGNN, "learnable": LearnableEmbeddings, "uniform": UniformScores, "lore": LoRe}


def kind_of(model: nn.Module) -> str:
    """Registered kind name of a model instance (for `save_model`)."""
    model = getattr(model, "module", model)  # DDP wrapper
    for kind, cls in _CLASSES.items():
        if type(model) is cls:
            return kind
    raise TypeError(f"{type(model).__name__} is not a registered GNN model kind ({sorted(_CLASSES)})")
