"""Model selection inside `jobs/train_gnn.py`: a validation split carved from train, early stopping
on it, the best epoch, and a small grid of candidate settings (layer kind, depth, lr, l2) where
training is cheap.

Defaults tuned on the team's own presets did not carry over to other data (issue 14), so the job
chooses on the data it is given. Everything here reads only ``annotations/train``: the validation
pairs are train pairs kept out of the graph and out of the training triples (the paper's Table 6
situation: pairs the graph does not reflect), and test labels are never read for any choice.

Selection score: validation accuracy (ties count half, as `copl_ray.eval.gnn_metrics` does); on
equal accuracy the lower validation BTL loss wins, then the earlier epoch / candidate. Validation
chooses only when its best score beats chance by ``val_min_z`` standard errors (`beats_chance`);
below that the job refits the first candidate on every train pair for every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from copl_ray.graph.build import Triples

__all__ = ["split_validation", "Score", "score_margins", "better", "best_index", "EarlyStopping", "candidate_grid",
           "GRID_CANDIDATES", "beats_chance", "chance_threshold"]

# Candidate settings tried when the grid is on (`candidate_grid`); the first is the single-run
# default. Measured (issue 14 note; in-process full-graph fits, 4 latent-factor datasets and the
# presets): the propagation-only layer with target-edge masking won on the UF-P-4 preset (77.2 vs
# 59.5 for Eq. 2-3 at d=64), while Eq. 2-3 as written (W matrices, LeakyReLU, no masking) with
# l2=0.3 won on imbalanced, sparse and correlated data (+2 to +9 points over the propagation-only
# layer, +2 to +6 over free embeddings). Neither wins everywhere, so validation chooses. The fourth
# starts the users from the agreement spectrum (copl_ray/gnn/agreement_init.py): on the two suite
# cases where spectral clustering beat the GNN (issue 14, 2,000 users, seed 1) it moved the Eq. 2-3
# layer's seen-user test accuracy 68.6 -> 73.1 (g4_corr06_dense) and 56.8 -> 63.7
# (g5_imb_6attr_sparse); with the propagation-only layer it did not help (65.7 -> 65.6 / 63.1).
# The fifth starts them from a latent-class EM's posteriors (copl_ray/gnn/latent_classes.py):
# on 6-group sparse data where every other start ended at one shared preference (4,000 users,
# g6_8attr_sparse seed 1: 61.8, shared 61.5) it reached 66.2 (annealed EM, K = 6 chosen on
# validation), 66.5 with the leave-one-out E-step. Its start is written at row norm 1.0, not the
# agreement start's 0.1: at 0.1 training washed out part of what the EM found (EM validation 69.2,
# the GNN from it 66.5); at 1.0 no run of the suite lost and the mean seen-user accuracy rose 1.2
# points (4,000 users, 8 cases x 2 seeds; up to +3.3 on the 6-group cases; issue 14 note, session 11).
_PROPAGATION = {"transform": False, "activation": False, "exclude_target_edges": True}
_PAPER_LAYER = {"transform": True, "activation": True, "exclude_target_edges": False}
GRID_CANDIDATES: tuple[dict, ...] = (
    {"num_layers": 2, "fanouts": [10, 10], "lr": 1e-3, "l2": 1.0, **_PROPAGATION},
    {"num_layers": 2, "fanouts": [10, 10], "lr": 1e-3, "l2": 0.3, **_PAPER_LAYER},
    {"num_layers": 1, "fanouts": [10], "lr": 3e-3, "l2": 0.3, **_PAPER_LAYER},
    {"num_layers": 2, "fanouts": [10, 10], "lr": 1e-3, "l2": 0.3, **_PAPER_LAYER, "user_init": "agreement"},
    {"num_layers": 2, "fanouts": [10, 10], "lr": 1e-3, "l2": 0.3, **_PAPER_LAYER, "user_init": "latent_classes",
     "user_init_norm": 1.0},
)


def split_validation(triples: Triples, fraction: float, seed: int) -> tuple[Triples, Triples]:
    """Seeded split of train triples into (fit, validation), stratified by user.

    Each triple is a validation candidate with probability ``fraction``, except each user's first
    triple in a seeded random order, which always stays in ``fit``: no user loses all their edges
    (a user without edges has no graph signal, and validation would then measure cold start).
    Users with one annotation are never validated.

    Args:
        triples: [N] train triples (dense indices).
        fraction: in [0, 1).
    Returns:
        (fit, val) `Triples`, each in the input's order; kinds carried when present.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    n = len(triples)
    rng = np.random.default_rng([seed, 11])
    order = rng.permutation(n)
    keep_first = np.zeros(n, dtype=bool)
    # first occurrence of each user in the random order
    keep_first[order[np.unique(triples.user[order], return_index=True)[1]]] = True
    val = (rng.random(n) < fraction) & ~keep_first

    def pick(mask: np.ndarray) -> Triples:
        return Triples(*(None if v is None else v[mask] for v in
                         (triples.user, triples.chosen, triples.rejected, triples.kind)))

    return pick(~val), pick(val)


@dataclass(frozen=True)
class Score:
    """A validation result: accuracy (higher is better), BTL loss (lower is better)."""

    accuracy: float
    loss: float


def score_margins(margin) -> Score:
    """`Score` of pairs from their margins s_{u,a} - s_{u,b} ([P] tensor): accuracy with ties
    counted half, mean BTL loss; NaN for no pair."""
    import torch

    if margin.numel() == 0:
        return Score(float("nan"), float("nan"))
    acc = float(((margin > 0).float() + 0.5 * (margin == 0).float()).mean())
    return Score(acc, float(-torch.nn.functional.logsigmoid(margin).mean()))


def better(a: Score, b: Score | None) -> bool:
    """True when ``a`` beats ``b`` (None: nothing yet): higher accuracy, then lower loss.
    NaN never wins (an undefined score cannot be selected)."""
    if not np.isfinite(a.accuracy):
        return False
    if b is None or not np.isfinite(b.accuracy):
        return True
    if a.accuracy != b.accuracy:
        return a.accuracy > b.accuracy
    return a.loss < b.loss


def best_index(scores: list[Score]) -> int | None:
    """Index of the best score (the earliest among equals); None when none is finite."""
    best = None
    for i, s in enumerate(scores):
        if better(s, None if best is None else scores[best]):
            best = i
    return best


def beats_chance(score: Score, n_pairs: int, z: float) -> bool:
    """True when a validation accuracy is ``z`` standard errors above chance (0.5) on ``n_pairs``
    pairs (binomial standard error under chance, 0.5 / sqrt(n)).

    Why: where validation pairs say nothing (survey pairs with ~1 annotator each, so a validation
    pair's responses are barely in the fit graph: the tldr preset at 1,000 users), every epoch and
    candidate scores chance, and choosing by it is choosing by noise: it stopped the propagation
    layer at epoch 0 there, whose user embeddings then told the two groups apart at 0.57 (linear
    probe) against 0.89 after the full 20 epochs, and the reward model gated on them learned
    nothing. ``z`` is high (3) because the best of ~50 looks (epochs x candidates) is compared.
    """
    if n_pairs <= 0 or not np.isfinite(score.accuracy):
        return False
    return score.accuracy >= chance_threshold(n_pairs, z)


def chance_threshold(n_pairs: int, z: float) -> float:
    """The least accuracy `beats_chance` accepts on ``n_pairs`` > 0 pairs: 0.5 + z * 0.5 / sqrt(n)."""
    return 0.5 + z * 0.5 / float(np.sqrt(n_pairs))


class EarlyStopping:
    """Stop once ``patience`` epochs in a row failed to beat the best validation score.

    ``patience=None`` never stops. ``update(score)`` returns True when training should stop.
    """

    def __init__(self, patience: int | None):
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        self.patience = patience
        self.best: Score | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def update(self, epoch: int, score: Score) -> bool:
        if better(score, self.best):
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": None if self.best is None else [self.best.accuracy, self.best.loss],
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best = None if state["best"] is None else Score(*state["best"])
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]


def candidate_grid(grid: bool | str, n_train_pairs: int, max_train_pairs: int, model: str) -> list[dict]:
    """The settings to train and compare on validation: ``[{}]`` (the config as given) unless the
    grid is on. ``grid="auto"``: on for the CoPL model when the train split has at most
    ``max_train_pairs`` pairs (each candidate is a full training run); True / False force it.
    """
    if grid not in ("auto", True, False):
        raise ValueError(f"grid must be 'auto', true or false, got {grid!r}")
    use = grid is True or (grid == "auto" and model == "copl" and n_train_pairs <= max_train_pairs)
    return [dict(c) for c in GRID_CANDIDATES] if use else [{}]
