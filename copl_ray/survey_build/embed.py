"""Sentence embeddings of responses with the bundled all-MiniLM-L6-v2 (mean pooling, unit norm),
as a Ray Data UDF (``MiniLMEmbedder``)."""

from __future__ import annotations

import numpy as np

__all__ = ["MiniLMEmbedder"]


class MiniLMEmbedder:
    """Ray Data UDF: ``{"response": [B] str, ...}`` -> the batch plus ``embedding`` [B, 384] float32."""

    def __init__(self, max_length: int = 256, threads: int = 1):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from copl_ray.reward.backbones import minilm_path

        torch.set_num_threads(threads)
        self.tok = AutoTokenizer.from_pretrained(minilm_path())
        self.model = AutoModel.from_pretrained(minilm_path()).eval()
        self.max_length = max_length

    def embed(self, texts: list[str]) -> np.ndarray:
        """[B, 384] float32 unit vectors of ``texts`` [B]."""
        import torch

        enc = self.tok(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(mean, dim=-1).numpy().astype(np.float32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(batch)
        out["embedding"] = self.embed([str(t) for t in batch["response"]])
        return out

