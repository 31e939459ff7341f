"""Preference pairs for reward-model training and evaluation.

A pair is (user, chosen response, rejected response). The text the reward model reads for a
response is the CoPL format ``"Human: " + prompt + " Assistant: " + response`` (the official
code's ``datagen_tldr.py``; `copl_ray.reward.encoding.TextEncoding`, saved with the model), so
the reward is r(user, prompt, response) (paper Eq. 5-7).

Every distinct response text is tokenized once (`TokenTable`); pairs only hold indices into it,
so a dataset of 100k pairs over 20k responses costs 20k tokenizations, not 200k. User embeddings
come from ``gnn_dir/users.parquet`` (seen users, CONTRACT 3) and, for unseen users, from
``adapt_dir/users.parquet`` (adaptation output, same format); `UserTable` stacks them and maps
user ids to rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from copl_ray.data.dataset import DatasetError, read_annotations, read_table
from copl_ray.gnn.gnn_dir import read_user_embeddings, users_path
from copl_ray.graph.id_map import IdMap
from copl_ray.reward.encoding import TextEncoding, pad_id_of, pad_right

__all__ = [
    "PairTable", "TokenTable", "UserTable", "PairDataset", "load_pairs", "load_user_table",
    "tokenize_responses", "collate_pairs", "response_texts",
]


@dataclass
class PairTable:
    """Annotations of one split, as columns of length N (strings stay strings).

    ``kind`` and ``group`` may hold None (the contract allows null).
    """

    user_id: np.ndarray      # [N] object
    prompt_id: np.ndarray    # [N] object
    chosen_id: np.ndarray    # [N] object
    rejected_id: np.ndarray  # [N] object
    kind: np.ndarray         # [N] object, "common" | "controversial" | None
    group: np.ndarray        # [N] object, the user's group or None

    def __len__(self) -> int:
        return len(self.user_id)

    def take(self, idx: np.ndarray) -> "PairTable":
        return PairTable(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def load_pairs(
    dataset: str | os.PathLike,
    split: str,
    users: Sequence[str] | None = None,
    max_pairs: int | None = None,
    seed: int = 0,
    allow_empty: bool = False,
) -> PairTable:
    """Read one annotation split, optionally restricted to ``users`` and subsampled.

    Args:
        users: keep only these user ids (e.g. one true group for G-Oracle).
        max_pairs: keep a uniform random subset of this many pairs (seeded), order preserved.
        allow_empty: return an empty table for an empty split (e.g. ``fewshot`` of cold-start
            users) instead of raising.
    Raises:
        DatasetError: the split is empty (after filtering), naming the dataset and split.
    """
    table = read_annotations(dataset, split)
    if users is not None:
        table = table.filter(pc.is_in(table.column("user_id"), value_set=pa.array(list(users), pa.string())))
    if table.num_rows == 0 and not allow_empty:
        raise DatasetError(f"{Path(dataset) / 'annotations' / split}: no annotations to use"
                           + (" for the requested users" if users is not None else ""))
    n = table.num_rows
    if max_pairs is not None and max_pairs < n:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_pairs, replace=False))
        table = table.take(pa.array(keep))
    user_tab = read_table(dataset, "users")
    group_of = dict(zip(user_tab.column("user_id").to_pylist(), user_tab.column("group").to_pylist()))
    col = lambda name: np.asarray(table.column(name).to_pylist(), dtype=object)  # noqa: E731
    user_id = col("user_id")
    return PairTable(
        user_id=user_id, prompt_id=col("prompt_id"), chosen_id=col("chosen_id"),
        rejected_id=col("rejected_id"), kind=col("kind"),
        group=np.asarray([group_of.get(u) for u in user_id], dtype=object),
    )


def response_texts(dataset: str | os.PathLike, response_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """(prompt texts, response texts) for ``response_ids``, in that order."""
    responses = read_table(dataset, "responses")
    prompts = read_table(dataset, "prompts")
    rmap = IdMap(responses.column("response_id").combine_chunks())
    ridx = rmap.lookup(pa.array(list(response_ids), pa.string()), what="response_id")
    pmap = IdMap(prompts.column("prompt_id").combine_chunks())
    pidx = pmap.lookup(responses.column("prompt_id").combine_chunks().take(pa.array(ridx)), "prompt_id")
    p_text = prompts.column("text").combine_chunks().take(pa.array(pidx)).to_pylist()
    r_text = responses.column("text").combine_chunks().take(pa.array(ridx)).to_pylist()
    return p_text, r_text


@dataclass
class TokenTable:
    """Token ids of distinct response texts: ``ids[i]`` is the [L_i] int64 sequence of response
    ``index.ids[i]`` (prompt + response, L_i <= max_length)."""

    index: IdMap
    ids: list[torch.Tensor]
    pad_id: int

    def rows(self, response_ids: Sequence[str]) -> np.ndarray:
        return self.index.lookup(pa.array(list(response_ids), pa.string()), what="response_id")


def tokenize_responses(
    dataset: str | os.PathLike, response_ids: Sequence[str], tokenizer, max_length: int | None = None,
    encoding: TextEncoding | None = None,
) -> TokenTable:
    """Tokenize each distinct response once with `TextEncoding.encode` (``"Human: {prompt}"`` +
    ``" Assistant: {response}"``, the prompt cut first); ``encoding`` default: the standard
    template at ``max_length``."""
    if encoding is None:
        if max_length is None:
            raise ValueError("tokenize_responses needs max_length or encoding")
        encoding = TextEncoding(max_length=max_length)
    unique = list(dict.fromkeys(response_ids))
    p_text, r_text = response_texts(dataset, unique)
    pad = pad_id_of(tokenizer)
    ids = encoding.encode(tokenizer, p_text, r_text)
    return TokenTable(index=IdMap(unique), ids=ids, pad_id=pad)


@dataclass
class UserTable:
    """User embeddings [U, d] (float32) with their ids; row i is user ``index.ids[i]``."""

    index: IdMap
    emb: torch.Tensor
    source: np.ndarray  # [U] "gnn" | "adapt": where each row came from

    def rows(self, user_ids: Sequence[str], what: str = "user_id") -> np.ndarray:
        """Rows of ``user_ids``; KeyError naming the first user without an embedding."""
        return self.index.lookup(pa.array(list(user_ids), pa.string()), what=what)


def load_user_table(gnn_dir: str | os.PathLike | None, adapt_dir: str | os.PathLike | None = None) -> UserTable:
    """Seen users from ``gnn_dir/users.parquet`` plus unseen users from ``adapt_dir/users.parquet``.

    Raises:
        ValueError: dimension mismatch between the two files, or a user in both.
    """
    ids, embs, source = [], [], []
    for folder, tag in ((gnn_dir, "gnn"), (adapt_dir, "adapt")):
        if folder is None:
            continue
        uid, emb = read_user_embeddings(folder)
        if embs and emb.shape[1] != embs[0].shape[1]:
            raise ValueError(
                f"{users_path(folder)}: embedding dim {emb.shape[1]} differs from"
                f" gnn_dir's {embs[0].shape[1]}"
            )
        ids.append(uid)
        embs.append(emb)
        source += [tag] * len(uid)
    if not ids:
        raise ValueError("load_user_table needs gnn_dir or adapt_dir")
    all_ids = pa.concat_arrays(ids)
    try:
        index = IdMap(all_ids)
    except ValueError:
        raise ValueError(f"a user appears in both {gnn_dir}/users.parquet and {adapt_dir}/users.parquet") from None
    return UserTable(index=index, emb=torch.from_numpy(np.concatenate(embs)), source=np.asarray(source))


class PairDataset(Dataset):
    """Index-only view of pairs: item i = (user row, chosen token row, rejected token row).

    Args:
        user_rows: [N] rows into the user table (GNN embeddings or a learnable table).
        chosen_rows, rejected_rows: [N] rows into a `TokenTable`.
    """

    def __init__(self, user_rows: np.ndarray, chosen_rows: np.ndarray, rejected_rows: np.ndarray):
        if not (len(user_rows) == len(chosen_rows) == len(rejected_rows)):
            raise ValueError("user_rows, chosen_rows and rejected_rows must have the same length")
        self.user_rows = torch.as_tensor(np.asarray(user_rows, dtype=np.int64))
        self.chosen_rows = torch.as_tensor(np.asarray(chosen_rows, dtype=np.int64))
        self.rejected_rows = torch.as_tensor(np.asarray(rejected_rows, dtype=np.int64))

    @classmethod
    def from_pairs(cls, pairs: PairTable, users: IdMap, tokens: TokenTable) -> "PairDataset":
        return cls(
            users.lookup(pa.array(list(pairs.user_id), pa.string()), what="user_id (no embedding for it)"),
            tokens.rows(pairs.chosen_id), tokens.rows(pairs.rejected_id),
        )

    def __len__(self) -> int:
        return len(self.user_rows)

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        return int(self.user_rows[i]), int(self.chosen_rows[i]), int(self.rejected_rows[i])


def collate_pairs(items: list[tuple[int, int, int]], tokens: TokenTable) -> dict[str, torch.Tensor]:
    """Stack B pairs into one right-padded batch of 2B sequences, chosen first then rejected.

    Returns:
        input_ids [2B, L] long, attention_mask [2B, L] long, user_index [2B] long (row i and
        row B+i belong to the same user).
    """
    users = torch.tensor([it[0] for it in items], dtype=torch.long)
    rows = [it[1] for it in items] + [it[2] for it in items]
    input_ids, mask = pad_right([tokens.ids[r] for r in rows], tokens.pad_id)
    return {"input_ids": input_ids, "attention_mask": mask, "user_index": torch.cat([users, users])}
