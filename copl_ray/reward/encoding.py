"""How the reward model reads a (prompt, response): one function for training, evaluation and serving.

The text is the CoPL format (the official code's ``datagen_tldr.py``): ``"Human: {prompt}"`` and
``" Assistant: {response}"`` go to the tokenizer as a text pair truncated ``only_first``, so a long
prompt (a Reddit post) is cut, never the response the reward judges. Only a response that leaves
fewer than ``min_prompt_tokens`` prompt tokens is itself cut (``longest_first``).

`TextEncoding` is saved with the reward model (``reward_model.json``, format 2), so a served reward
reads the very token ids training and ``evaluate`` read for the same texts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TextEncoding", "pad_right", "pad_id_of"]


class TextEncoding(BaseModel):
    """Template and truncation of one reward model's input text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_template: str = Field("Human: {prompt}", description="first text of the pair; {prompt}")
    response_template: str = Field(" Assistant: {response}", description="second text; {response}")
    max_length: int = Field(128, description="tokens per sequence, special tokens included (>= 16)")
    min_prompt_tokens: int = Field(8, ge=0, description="a response is cut only below this many prompt tokens")

    def encode(self, tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> list[torch.Tensor]:
        """Token ids of each (prompt, response): a list of [L_i] int64 tensors, L_i <= max_length."""
        if self.max_length < 16:
            raise ValueError(f"max_length must be >= 16, got {self.max_length}")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        first = [self.prompt_template.format(prompt=p) for p in prompts]
        second = [self.response_template.format(response=r) for r in responses]
        if not first:
            return []
        r_len = np.array([len(x) for x in tokenizer(second, add_special_tokens=False)["input_ids"]])
        fits = r_len + tokenizer.num_special_tokens_to_add(pair=True) + self.min_prompt_tokens <= self.max_length
        ids: list = [None] * len(first)
        for mask, how in ((fits, "only_first"), (~fits, "longest_first")):
            rows = np.flatnonzero(mask)
            if rows.size == 0:
                continue
            enc = tokenizer([first[i] for i in rows], [second[i] for i in rows], truncation=how,
                            max_length=self.max_length, padding=False)
            for i, x in zip(rows, enc["input_ids"]):
                ids[i] = torch.tensor(x, dtype=torch.long)
        return ids


def pad_id_of(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither pad_token_id nor eos_token_id")
    return int(pad)


def pad_right(seqs: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[L_i] sequences -> input_ids [B, max L] long, attention_mask [B, max L] long (right padding,
    as `copl_ray.reward.data.collate_pairs` pads in training and evaluation)."""
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return input_ids, mask
