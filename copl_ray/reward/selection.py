"""Model selection for the reward model: a validation slice of train pairs, an lr probe, step count.

`train_reward` must learn at its defaults on data it was not tuned on. A fixed lr does not carry
over: the paper's 5e-5 (gemma-2b, App. D.2) leaves a rank-8 LoRA on MiniLM or on a random tiny
decoder at chance after a full epoch (loss 0.695 -> 0.694), while 1e-3 learns the same data. So:

1. `split_validation` carves a seeded slice of the *train* pairs (at most 10% of them); it sees
   only a count of train pairs, so test labels cannot reach the selection.
2. Each lr in the candidate list trains the same initial weights for a few steps; the slice scores
   it (`ProbeResult`), and `pick_best` takes the best validation accuracy (ties: lower validation
   loss, then the smaller lr).
3. `plan_steps` raises the epoch count so small datasets still get ``min_steps`` optimizer steps.
4. `loss_fell` checks the training curve afterwards; the job warns loudly when it did not fall.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["ProbeResult", "split_validation", "pick_best", "plan_steps", "loss_fell", "describe_choice"]

MAX_VAL_FRACTION = 0.1


@dataclass
class ProbeResult:
    """One lr candidate after ``steps`` probe steps, scored on the validation slice."""

    lr: float
    val_accuracy: float
    val_loss: float
    loss_first: float | None = None
    loss_last: float | None = None
    steps: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def split_validation(n_pairs: int, val_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of ``n_pairs`` train pairs, both sorted.

    The slice holds ``min(val_pairs, 10% of n_pairs)`` rows drawn with ``seed``; 0 rows when
    ``val_pairs`` is 0 or there are fewer than 10 pairs.
    """
    n_val = min(int(val_pairs), int(n_pairs * MAX_VAL_FRACTION))
    rows = np.arange(n_pairs)
    if n_val <= 0:
        return rows, rows[:0]
    val = np.sort(np.random.default_rng(seed).choice(n_pairs, size=n_val, replace=False))
    keep = np.ones(n_pairs, dtype=bool)
    keep[val] = False
    return rows[keep], val


def pick_best(results: list[ProbeResult]) -> ProbeResult:
    """The candidate with the best validation accuracy; ties go to the lower validation loss,
    then to the smaller lr. NaN losses/accuracies (a diverged run) rank last."""
    if not results:
        raise ValueError("pick_best needs at least one probe result")

    def key(r: ProbeResult):
        acc = r.val_accuracy if math.isfinite(r.val_accuracy) else -1.0
        loss = r.val_loss if math.isfinite(r.val_loss) else math.inf
        return (-round(acc, 6), loss, r.lr)

    return min(results, key=key)


def plan_steps(pairs_per_worker: int, batch_size: int, epochs: int, min_steps: int) -> tuple[int, int, str]:
    """(steps_per_epoch, epochs, why): ``epochs`` raised until there are ``min_steps`` steps."""
    steps_per_epoch = max(1, math.ceil(pairs_per_worker / batch_size))
    need = math.ceil(min_steps / steps_per_epoch) if min_steps > 0 else 1
    if need > epochs:
        return steps_per_epoch, need, (f"{epochs} epoch(s) of {steps_per_epoch} steps is under min_steps="
                                       f"{min_steps}: raised to {need} epochs")
    return steps_per_epoch, epochs, f"{epochs} epoch(s) of {steps_per_epoch} steps (>= min_steps={min_steps})"


def loss_fell(losses: list[float], min_drop: float = 0.02) -> bool | None:
    """Whether the mean of the last 10% of step losses is at least ``min_drop`` below the mean of
    the first 10% (5 steps at least each); None when there are fewer than 10 steps to judge."""
    if len(losses) < 10:
        return None
    k = max(5, len(losses) // 10)
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    return bool(np.isfinite(last) and last <= first - min_drop)


def describe_choice(results: list[ProbeResult], best: ProbeResult) -> str:
    scores = ", ".join(f"{r.lr:g}: acc {r.val_accuracy:.3f} loss {r.val_loss:.3f}" for r in results)
    return f"lr {best.lr:g} has the best validation accuracy after {best.steps} probe steps ({scores})"
