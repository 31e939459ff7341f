"""A ``train_reward`` output folder (``reward_dir``) loaded in one place, for ``evaluate`` and serving.

``reward_dir/reward_dir.json`` (written by ``jobs/train_reward.py``, format 1) says what the folder
holds: ``method``, the ``gnn_dir`` whose user embeddings the model was trained with, the text
``encoding`` (template + max_length) and, for G-Oracle, the folder of each group's model. Folders
written before the manifest existed are read from the job's resolved ``config.yaml`` instead (here
only: no reader opens another job's config itself).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from copl_ray.reward.data import UserTable, load_user_table
from copl_ray.reward.encoding import TextEncoding

__all__ = ["MANIFEST", "RewardDir", "load_reward_dir", "write_manifest", "USER_METHODS"]

MANIFEST = "reward_dir.json"
MANIFEST_FORMAT = 1
USER_METHODS = ("copl", "no_mole", "no_gnn")  # methods whose reward depends on a user embedding


@dataclass
class RewardDir:
    """A loaded reward_dir.

    Attributes:
        method: ``copl`` | ``uniform`` | ``g_oracle`` | ``no_gnn`` | ``no_mole``.
        models: ``{None: model}``, or ``{group: model}`` for G-Oracle.
        encoding: how texts become token ids (the training run's).
        gnn_dir: the GNN output whose users the model was trained with (copl, no_mole) or None.
    """

    path: Path
    method: str
    models: dict
    encoding: TextEncoding
    gnn_dir: str | None = None
    _learned: UserTable | None = field(default=None, repr=False)

    @property
    def uses_user(self) -> bool:
        return self.method in USER_METHODS

    def user_table(self, gnn_dir: str | os.PathLike | None = None,
                   adapt_dir: str | os.PathLike | None = None) -> UserTable | None:
        """The users the model can score: GNN users (``gnn_dir``, default the training's) plus
        adapted users (``adapt_dir``); the learned table for ``no_gnn``; None where the method
        ignores the user (Uniform, G-Oracle)."""
        if self.method == "no_gnn":
            return self._learned
        if self.method in ("copl", "no_mole"):
            g = gnn_dir or self.gnn_dir
            if g is None:
                raise ValueError(f"{self.path}: method {self.method!r} needs a gnn_dir (none recorded, none given)")
            return load_user_table(g, adapt_dir)
        return None


def write_manifest(out_dir: str | os.PathLike, method: str, gnn_dir: str | None, encoding: TextEncoding,
                   groups: dict[str, str] | None = None) -> Path:
    path = Path(out_dir) / MANIFEST
    body = {"format_version": MANIFEST_FORMAT, "method": method,
            "gnn_dir": str(Path(gnn_dir).resolve()) if gnn_dir else None,
            "encoding": encoding.model_dump(mode="json"), "groups": groups}
    path.write_text(json.dumps(body, indent=1))
    return path


def _manifest(d: Path) -> dict:
    path = d / MANIFEST
    if path.is_file():
        body = json.loads(path.read_text())
        if body.get("format_version") != MANIFEST_FORMAT:
            raise ValueError(f"{path}: format_version {body.get('format_version')!r}, expected {MANIFEST_FORMAT}")
        return body
    config = d / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{d}: neither {MANIFEST} nor config.yaml: reward_dir must be a "
                                "jobs/train_reward.py output")
    import yaml

    from copl_ray.reward.train import TrainRewardConfig

    cfg = TrainRewardConfig.model_validate(yaml.safe_load(config.read_text()))
    groups = None
    if cfg.method == "g_oracle":
        groups = json.loads((d / "g_oracle.json").read_text())["groups"]
    return {"method": cfg.method, "gnn_dir": cfg.gnn_dir, "groups": groups,
            "encoding": TextEncoding(max_length=cfg.max_length).model_dump()}


def load_reward_dir(reward_dir: str | os.PathLike, map_location: str | torch.device = "cpu",
                    max_length: int | None = None, load_models: bool = True) -> RewardDir:
    """Load a reward_dir's model(s), method, encoding and user table source.

    Args:
        max_length: override the training run's truncation (``evaluate``'s option).
        load_models: False reads everything but the weights (``models`` is then empty).
    """
    from copl_ray.embeddings import read_embeddings
    from copl_ray.graph.id_map import IdMap
    from copl_ray.reward.baselines import LEARNED_USERS_FILE
    from copl_ray.reward.model import load_reward_model

    d = Path(reward_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: reward_dir not found (expected a jobs/train_reward.py output)")
    man = _manifest(d)
    method = man["method"]
    if not load_models:
        models = {}
    elif method == "g_oracle":
        models = {g: load_reward_model(d / sub / "model", map_location) for g, sub in man["groups"].items()}
    else:
        models = {None: load_reward_model(d / "model", map_location)}
    encoding = TextEncoding.model_validate(man["encoding"])
    if max_length is not None:
        encoding = encoding.model_copy(update={"max_length": max_length})
    for m in models.values():
        m.encoding = encoding
    learned = None
    if method == "no_gnn":
        import numpy as np

        ids, emb = read_embeddings(d / LEARNED_USERS_FILE, "user_id")
        learned = UserTable(IdMap(ids), torch.from_numpy(emb), np.full(len(ids), "learned", dtype=object))
    return RewardDir(d, method, models, encoding, man.get("gnn_dir"), learned)
