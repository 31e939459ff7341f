"""Plain-LoRA adapters in peft's standard format (``adapter_config.json`` + ``adapter_model.safetensors``).

A ``lora``-mode `PersonalRewardModel` is one LoRA per adapted linear, so its adapters are exactly a
peft LoRA: ``PeftModel.from_pretrained(AutoModel.from_pretrained(backbone), dir)`` reproduces the
adapted backbone. The reward head is not part of peft's format; it stays in ``adapters.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["save_peft_adapter", "peft_state_dict"]


def peft_state_dict(model) -> dict:
    """{``base_model.model.<module>.lora_A.weight`` [r, d_in], ``...lora_B.weight`` [d_out, r]}."""
    if model.cfg.mode != "lora":
        raise ValueError(f"only mode='lora' adapters have a peft form, got mode={model.cfg.mode!r}")
    out = {}
    for name in model.adapted:
        layer = model.backbone.get_submodule(name)
        out[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A.detach().cpu().contiguous()
        out[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B.detach().cpu().contiguous()
    return out


def save_peft_adapter(model, directory: str | os.PathLike) -> Path:
    from peft import LoraConfig
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    src = model.backbone_source
    LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none",
               target_modules=list(model.adapted),
               base_model_name_or_path=src["name"] if src["kind"] == "local" else None,
               ).save_pretrained(str(out))
    save_file(peft_state_dict(model), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out
