"""CoPL's reward model and its baselines behind one training/scoring harness.

Every method is a `UserConditionedRM`: a user table (rows = users, [U, d]) in front of a
`PersonalRewardModel`. The batch carries ``user_index`` rows, so one forward scores a batch mixing
any users. What differs per method (paper Sec. 5.1, Table 4, App. B/D.2):

=============  ==========================================  ================================
method         user table                                  reward model (``cfg.mode``)
=============  ==========================================  ================================
``copl``       GNN embeddings (frozen buffer, gnn_dir)     ``mole``: shared + 8 experts, rank 8
``no_gnn``     learnable ``nn.Embedding`` (w/o GNN)        ``mole``
``no_mole``    GNN embeddings (frozen)                     ``user_token``: rank-64 LoRA + token
``uniform``    zeros (ignored)                             ``lora``: one rank-64 LoRA
``g_oracle``   zeros (ignored); one model per true group   ``lora``, trained on the group's users
=============  ==========================================  ================================

Departure: the w/o-GNN table is initialised N(0, 0.02^2) (the paper does not say how).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from torch import nn

from copl_ray.data.dataset import read_table
from copl_ray.embeddings import write_embeddings
from copl_ray.graph.id_map import IdMap
from copl_ray.reward.data import (
    PairDataset, TokenTable, UserTable, collate_pairs, load_pairs, load_user_table, tokenize_responses,
)

MODE_OF_METHOD = {"copl": "mole", "no_gnn": "mole", "no_mole": "user_token", "uniform": "lora", "g_oracle": "lora"}
LEARNED_USERS_FILE = "user_embeddings.parquet"


class UserConditionedRM(nn.Module):
    """``user_index -> e_u -> r_phi(x, e_u)``.

    Args:
        rm: the `PersonalRewardModel`.
        users: ids of the table's rows.
        user_emb: [U, d] initial table.
        learnable: True makes the table a trained parameter (w/o GNN), else a frozen buffer.
    Shapes:
        forward(input_ids [B, L], attention_mask [B, L], user_index [B]) -> RewardOutput, rewards [B].
    """

    def __init__(self, rm: nn.Module, users: IdMap, user_emb: torch.Tensor, learnable: bool):
        super().__init__()
        self.rm = rm
        self.user_ids = users
        self.learnable = learnable
        if learnable:
            self.user_table = nn.Embedding.from_pretrained(user_emb.clone(), freeze=False)
        else:
            self.register_buffer("user_buffer", user_emb.clone(), persistent=False)

    def user_embeddings(self, user_index: torch.Tensor) -> torch.Tensor:
        """[B] rows -> [B, d] embeddings."""
        return self.user_table(user_index) if self.learnable else self.user_buffer[user_index]

    def forward(self, input_ids, attention_mask, user_index):
        if self.rm.cfg.mode == "lora":  # Uniform / G-Oracle: the user is not an input
            return self.rm(input_ids, attention_mask, None)
        return self.rm(input_ids, attention_mask, self.user_embeddings(user_index))

    def export_users(self, out_dir: str | os.PathLike) -> Path | None:
        """Write a learned table as ``out_dir/user_embeddings.parquet`` (CONTRACT 3 format)."""
        if not self.learnable:
            return None
        emb = self.user_table.weight.detach().float().cpu().numpy()
        return write_embeddings(Path(out_dir) / LEARNED_USERS_FILE, "user_id", self.user_ids.ids, emb,
                                meta={"producer": "train_reward no_gnn"})


def seen_users(dataset, group: str | None = None) -> IdMap:
    """Seen users of ``dataset`` (optionally only one true group) in users.parquet order."""
    users = read_table(dataset, "users")
    mask = pc.equal(users.column("split"), "seen")
    if group is not None:
        mask = pc.and_(mask, pc.equal(users.column("group"), group))
    ids = users.column("user_id").filter(mask).combine_chunks()
    if len(ids) == 0:
        raise ValueError(f"{dataset}/users.parquet: no seen users" + (f" in group {group!r}" if group else ""))
    return IdMap(ids)


def reward_model_config(cfg, user_dim: int):
    """`RewardModelConfig` of a method: the method fixes ``mode``; ``cfg.model`` sets the rest."""
    from copl_ray.reward.model import RewardModelConfig

    fields = dict(cfg.model)
    fields["mode"] = MODE_OF_METHOD[cfg.method]
    fields["user_dim"] = user_dim if fields["mode"] != "lora" else None
    fields.setdefault("gradient_checkpointing", cfg.gradient_checkpointing)
    return RewardModelConfig(**fields)


def build_model(cfg) -> tuple[UserConditionedRM, object]:
    """Build the method's model for a `TrainRewardConfig`; returns (model, tokenizer)."""
    from copl_ray.reward.model import PersonalRewardModel

    if cfg.method in ("copl", "no_mole"):
        table: UserTable = load_user_table(cfg.gnn_dir)
        users, emb, learnable = table.index, table.emb, False
    else:
        users = seen_users(cfg.dataset, cfg.group if cfg.method == "g_oracle" else None)
        dim = cfg.user_dim
        if cfg.gnn_dir is not None and cfg.method == "no_gnn":
            dim = load_user_table(cfg.gnn_dir).emb.shape[1]  # same width as CoPL's for the ablation
        g = torch.Generator().manual_seed(cfg.seed)
        if cfg.method == "no_gnn":
            emb, learnable = torch.randn(len(users), dim, generator=g) * 0.02, True
        else:  # Uniform / G-Oracle ignore the user: a 1-wide placeholder table keeps one harness
            emb, learnable = torch.zeros(len(users), 1), False
    rm = PersonalRewardModel(reward_model_config(cfg, emb.shape[1]))
    return UserConditionedRM(rm, users, emb, learnable), rm.tokenizer


@dataclass
class TrainingData:
    dataset: PairDataset          # pairs trained on
    tokens: TokenTable
    probe: dict                   # a fixed collated batch used to check checkpoint/export fidelity
    val: PairDataset | None = None  # held-out slice of the *train* split (lr selection, final check)


def prepare_training_data(cfg, model: UserConditionedRM, tokenizer) -> TrainingData:
    """Train pairs of the config's users, tokenized once, as rows into ``model``'s user table.

    A seeded slice of them (``cfg.val_pairs``, at most 10%) is held out as ``val``; only the
    ``train`` split is read, so nothing chosen on it has seen a test label.
    """
    from copl_ray.reward.selection import split_validation

    group_users = None
    if cfg.method == "g_oracle":
        group_users = list(model.user_ids.ids.to_pylist())
    pairs = load_pairs(cfg.dataset, "train", group_users, cfg.max_pairs, cfg.seed)
    from copl_ray.reward.train import text_encoding

    tokens = tokenize_responses(cfg.dataset, list(pairs.chosen_id) + list(pairs.rejected_id), tokenizer,
                                encoding=text_encoding(cfg))
    train_rows, val_rows = split_validation(len(pairs), cfg.val_pairs, cfg.seed)
    dataset = PairDataset.from_pairs(pairs.take(train_rows), model.user_ids, tokens)
    val = PairDataset.from_pairs(pairs.take(val_rows), model.user_ids, tokens) if len(val_rows) else None
    probe_rows = np.linspace(0, len(dataset) - 1, num=min(4, len(dataset))).astype(int)
    probe = collate_pairs([dataset[int(i)] for i in probe_rows], tokens)
    return TrainingData(dataset=dataset, tokens=tokens, probe=probe, val=val)
