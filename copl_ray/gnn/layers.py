"""CoPL's signed bipartite message-passing layer (paper Eq. 2-3 for users, Eq. 12-13 for responses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from copl_ray.gnn.sampler import SignedEdges

__all__ = ["SignedBipartiteConv", "VARIANTS", "WEIGHT_INITS"]

VARIANTS = ("paper", "official")
WEIGHT_INITS = ("glorot", "identity")


class _SideWeights(nn.Module):
    """W_self, W1..W4 of one side (d x d each, no bias: Eq. 2 has none)."""

    def __init__(self, in_channels: int, out_channels: int, negative: bool, identity_w1w3: bool):
        super().__init__()
        lin = lambda: nn.Linear(in_channels, out_channels, bias=False)  # noqa: E731
        self.lin_self = lin()
        self.lin1 = None if identity_w1w3 else lin()
        self.lin2 = lin()
        self.lin3 = None if (identity_w1w3 or not negative) else lin()
        self.lin4 = lin() if negative else None

    def reset_parameters(self, weight_init: str = "glorot") -> None:
        if weight_init == "glorot":
            # PyG's default (torch's xavier_uniform_): a d x d map keeps its input's scale at any d.
            for m in (self.lin_self, self.lin1, self.lin2, self.lin3, self.lin4):
                if m is not None:
                    nn.init.xavier_uniform_(m.weight)
            return
        # "identity": the layer starts as signed propagation, e + a+ - a- (W_self = W1 = I,
        # W3 = -I, Hadamard maps W2 = W4 = 0), and learns away from it.
        with torch.no_grad():
            for m, value in ((self.lin_self, 1.0), (self.lin1, 1.0), (self.lin3, -1.0)):
                if m is not None:
                    m.weight.copy_(value * torch.eye(m.weight.shape[0], m.weight.shape[1]))
            for m in (self.lin2, self.lin4):
                if m is not None:
                    nn.init.zeros_(m.weight)


class SignedBipartiteConv(nn.Module):
    r"""One CoPL layer: users and responses updated from their signed neighbours.

    User update (Eq. 2-3; responses symmetric with their own hatted weights, Eq. 12-13)::

        m_u^+ = sum_{r in N+_u} alpha_{u,r} (W1 e_r + W2 (e_r * e_u))
        m_u^- = sum_{r in N-_u} beta_{u,r}  (W3 e_r + W4 (e_r * e_u))
        e_u'  = psi(W_self e_u + m_u^+ + m_u^-),      psi = LeakyReLU

    Computed without a d-vector per edge: with a_u = sum_r alpha_{u,r} e_r (one sparse product),
    m_u^+ = W1 a_u + W2 (e_u * a_u), since the Hadamard factor e_u does not depend on r.

    Args:
        channels: embedding size d (in = out, as in the paper).
        negative_edges: False drops m^- and W3/W4 (Table A4 "w/o negative edges").
        transform: False removes every matrix (Table A4, LightGCN-style): m_u = e_u + a_u^+ - a_u^-.
            The Hadamard terms go too (without W2/W4 they would make the layer non-linear) and the
            negative aggregate is subtracted (without W3 nothing could learn its sign). A choice:
            the paper does not spell the ablated equation out.
        activation: False makes psi the identity (Table A4).
        variant: ``"paper"`` (separate W1..W4, W_self per side) or ``"official"`` (the authors'
            code as described in the issue: W1 = W3 = identity, one weight set shared by the user and
            response updates, negative message subtracted).
        negative_slope: LeakyReLU slope (paper: LeakyReLU, slope unstated; torch default 0.01).
        weight_init: ``"glorot"`` (every matrix Glorot-uniform) or ``"identity"`` (the layer starts
            as e + a+ - a-: see `_SideWeights.reset_parameters`). The paper does not say.

    Shapes:
        e_user [Nu, d], e_resp [Nr, d], edges over local ids < Nu / Nr -> ([Nu, d], [Nr, d]).
    """

    def __init__(self, channels: int, negative_edges: bool = True, transform: bool = True,
                 activation: bool = True, variant: str = "paper", negative_slope: float = 0.01,
                 weight_init: str = "glorot"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        self.weight_init = weight_init
        if variant == "official" and not transform:
            raise ValueError("variant='official' has transform matrices; use transform=True or variant='paper'")
        self.in_channels = self.out_channels = self.channels = channels
        self.negative_edges, self.transform, self.activation = negative_edges, transform, activation
        self.variant, self.negative_slope = variant, negative_slope
        if transform:
            official = variant == "official"
            self.user = _SideWeights(channels, channels, negative_edges, official)
            # official: one weight set for both sides (not registered twice: one state-dict entry)
            self.resp = None if official else _SideWeights(channels, channels, negative_edges, official)
        else:
            self.user = self.resp = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for side in (self.user, self.resp):
            if side is not None:
                side.reset_parameters(self.weight_init)

    def forward(self, e_user: Tensor, e_resp: Tensor, edges: SignedEdges,
                n_out: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """([Nu, d], [Nr, d]); with ``n_out = (ou, or)`` only the first ou users / or responses
        ([ou, d], [or, d]): a sampled subgraph's nodes near enough to the seeds to matter."""
        nu, nr = e_user.shape[0], e_resp.shape[0]
        ou, o_r = n_out if n_out is not None else (nu, nr)
        adj = lambda pos, to: edges.adjacency(pos, to, nu, nr, None if n_out is None else  # noqa: E731
                                              (ou if to == "user" else o_r))
        # Aggregates first (sparse, no per-edge vectors), from layer-l embeddings of both sides.
        a_u_pos, a_r_pos = adj(True, "user") @ e_resp, adj(True, "resp") @ e_user
        a_u_neg = a_r_neg = None
        if self.negative_edges:
            a_u_neg, a_r_neg = adj(False, "user") @ e_resp, adj(False, "resp") @ e_user
        out_u = self._update(e_user[:ou], a_u_pos, a_u_neg, self.user)
        out_r = self._update(e_resp[:o_r], a_r_pos, a_r_neg,
                             self.user if self.variant == "official" else self.resp)
        return out_u, out_r

    @torch.no_grad()
    def forward_chunked(self, e_user: Tensor, e_resp: Tensor, edges: SignedEdges,
                        chunk: int) -> tuple[Tensor, Tensor]:
        """`forward` computed ``chunk`` target rows at a time (no autograd): inference on graphs whose
        [N, d] temporaries (aggregates, Hadamard products, five matrix products) would not fit."""
        nu, nr = e_user.shape[0], e_resp.shape[0]
        resp_w = self.user if self.variant == "official" else self.resp
        outs = []
        for e, other, to, w in ((e_user, e_resp, "user", self.user), (e_resp, e_user, "resp", resp_w)):
            pos = edges.adjacency(True, to, nu, nr)
            neg = edges.adjacency(False, to, nu, nr) if self.negative_edges else None
            out = torch.empty_like(e)
            for i in range(0, e.shape[0], chunk):
                j = min(i + chunk, e.shape[0])
                a_neg = None if neg is None else (neg.row_block(i, j) @ other if neg.nnz else
                                                  other.new_zeros(j - i, other.shape[1]))
                a_pos = pos.row_block(i, j) @ other if pos.nnz else other.new_zeros(j - i, other.shape[1])
                out[i:j] = self._update(e[i:j], a_pos, a_neg, w)
            outs.append(out)
        return outs[0], outs[1]

    def _update(self, e: Tensor, a_pos: Tensor, a_neg: Tensor | None, w: _SideWeights | None) -> Tensor:
        """m = W_self e + W1 a+ + W2 (e * a+) + W3 a- + W4 (e * a-), then psi; e, a [N, d]."""
        if w is None:  # no transform matrices
            m = e + a_pos if a_neg is None else e + a_pos - a_neg
        else:
            m = w.lin_self(e) + w.lin2(e * a_pos) + (w.lin1(a_pos) if w.lin1 is not None else a_pos)
            if a_neg is not None:
                neg = w.lin4(e * a_neg) + (w.lin3(a_neg) if w.lin3 is not None else a_neg)
                m = m - neg if self.variant == "official" else m + neg
        return F.leaky_relu(m, self.negative_slope) if self.activation else m

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, negative_edges={self.negative_edges}, "
                f"transform={self.transform}, activation={self.activation}, variant={self.variant!r})")
