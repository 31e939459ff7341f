"""Random-weight causal LMs built from a config, saved with a local tokenizer (nothing is downloaded).

The tokenizer is the bundled MiniLM's (30,522 WordPiece tokens), given an end-of-sequence token
([SEP]), no ``token_type_ids`` (``generate()`` rejects them) and a plain chat template, so both
backends can use the chat path. ``head_dim`` is 64: vLLM's CPU attention refuses 16.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["SIZES", "write_random_causal_lm"]

_BASE = dict(vocab_size=30522, pad_token_id=0, bos_token_id=101, eos_token_id=102, tie_word_embeddings=False)
SIZES = {
    # ~4.5M parameters (mostly the embeddings): CPU tests.
    "tiny": dict(_BASE, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=64, max_position_embeddings=1024),
    # ~150M parameters: the GPU throughput check.
    "small": dict(_BASE, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=4, head_dim=64, max_position_embeddings=2048),
}
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def write_random_causal_lm(path: str | os.PathLike, size: str = "tiny", seed: int = 0) -> Path:
    """Build a random Llama of ``size`` (``SIZES``) under ``seed`` and save it with its tokenizer
    into ``path``; an existing complete save is kept (same size and seed give the same weights)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from copl_ray.reward.backbones import minilm_path

    path = Path(path)
    if (path / "config.json").is_file() and (path / "tokenizer_config.json").is_file():
        return path
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    config = LlamaConfig(**SIZES[size])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    tmp = path.with_name(f".{path.name}.tmp")
    for stale in (tmp, path):  # a save cut short earlier
        if stale.exists():
            shutil.rmtree(stale)
    model.save_pretrained(tmp)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.model_input_names = ["input_ids", "attention_mask"]
    tok.eos_token = "[SEP]"
    tok.bos_token = "[CLS]"
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    os.replace(tmp, path)
    return path
