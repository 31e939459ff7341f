"""Pictures of a trained CoPL model, written as PNG (matplotlib, Agg backend, no display).

- `tsne_by_group`: t-SNE of user embeddings coloured by true preference group (paper Fig. 1/A1).
- `expert_heatmap`: per layer, the share of each group's users routed to each expert (Fig. 6).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


TSNE_MIN_POINTS = 5


def _groups(groups) -> np.ndarray:
    return np.asarray(["(none)" if g is None else str(g) for g in groups], dtype=object)


def tsne_by_group(
    emb: np.ndarray, groups, path: str | os.PathLike, title: str = "user embeddings",
    max_points: int = 5000, seed: int = 0, marked: np.ndarray | None = None,
) -> Path:
    """t-SNE of [N, d] embeddings, at most ``max_points`` sampled (seeded), one colour per group.

    Args:
        groups: [N] group label per row (None allowed).
        marked: optional [N] bool, rows drawn with a black edge (e.g. unseen users, Fig. A2).
    """
    from sklearn.manifold import TSNE

    emb = np.asarray(emb, dtype=np.float32)
    groups = _groups(groups)
    if emb.ndim != 2 or len(emb) != len(groups):
        raise ValueError(f"emb must be [N, d] with N = len(groups) = {len(groups)}, got {emb.shape}")
    if len(emb) < TSNE_MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {TSNE_MIN_POINTS} points, got {len(emb)}")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(emb), size=min(max_points, len(emb)), replace=False))
    xy = TSNE(n_components=2, perplexity=min(30.0, (len(idx) - 1) / 3), random_state=seed,
              init="pca").fit_transform(emb[idx])
    fig, ax = plt.subplots(figsize=(6, 5))
    for g in sorted(set(groups[idx])):
        sel = groups[idx] == g
        edge = None
        if marked is not None:
            edge = np.where(np.asarray(marked)[idx][sel], "black", "none")
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8, label=g, edgecolors=edge, linewidths=0.6)
    ax.set_title(f"{title} (t-SNE, {len(idx)} users)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(title="group", markerscale=2, fontsize=8)
    return _save(fig, path)


def expert_shares(expert_index: np.ndarray, groups, n_experts: int) -> tuple[list[str], np.ndarray]:
    """Share of each group's users routed to each expert, per layer.

    Args:
        expert_index: [U] or [U, n_layers] int, top-1 expert of each user (per layer).
    Returns:
        (group names [G], shares [n_layers, G, n_experts]; each row sums to 1).
    """
    idx = np.asarray(expert_index)
    if idx.ndim == 1:
        idx = idx[:, None]
    groups = _groups(groups)
    names = sorted(set(groups))
    shares = np.zeros((idx.shape[1], len(names), n_experts))
    for gi, g in enumerate(names):
        rows = idx[groups == g]
        for layer in range(idx.shape[1]):
            shares[layer, gi] = np.bincount(rows[:, layer], minlength=n_experts)[:n_experts] / len(rows)
    return names, shares


def expert_heatmap(expert_index: np.ndarray, groups, n_experts: int, path: str | os.PathLike,
                   title: str = "expert allocation", layer_names: list[str] | None = None) -> Path:
    """One heatmap per layer: rows groups, columns experts, cell = share of the group's users.

    Args:
        layer_names: one title per routing layer (default ``layer i``; a model-scope gate has one
            routing for all adapted layers, name it so).
    """
    names, shares = expert_shares(expert_index, groups, n_experts)
    n_layers = shares.shape[0]
    layer_names = layer_names or [f"layer {i}" for i in range(n_layers)]
    if len(layer_names) != n_layers:
        raise ValueError(f"{len(layer_names)} layer_names for {n_layers} routing layers")
    fig, axes = plt.subplots(1, n_layers, figsize=(2.2 + 0.45 * n_experts * n_layers, 0.6 + 0.45 * len(names)),
                             squeeze=False)
    for layer, ax in enumerate(axes[0]):
        im = ax.imshow(shares[layer], vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(layer_names[layer], fontsize=9)
        ax.set_xticks(range(n_experts))
        ax.set_xlabel("expert", fontsize=8)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if layer == 0 else [], fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="share of group's users")
    fig.suptitle(title, fontsize=10, y=1.02 + 0.1 / len(names))
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
