"""CoPL's personalized reward model: a frozen HF backbone, MoLE adapters, a user gate, a reward head.

``r_phi(x, e_u) = head(pool(backbone_{W_0 + Delta W_u}(x)))`` (paper Sec. 4.2, Eq. 6-10):

- **backbone**: any HF model (`copl_ray.reward.backbones`), frozen (``requires_grad=False``) and
  never written; its target linears are wrapped by `MoLELinear` (default q_proj/v_proj as in the
  official code, ``query``/``value`` for BERT; any list, or ``"all-linear"``).
- **pooling**: decoders read the last non-pad token (left or right padding); encoders read the
  masked mean of the last hidden states (``pooling="auto"``). MiniLM's pooler is not trained for
  this and all-MiniLM-L6-v2 was trained with mean pooling, so mean it is; ``"cls"`` is available.
- **head**: ``Linear(hidden, 1)``.
- **modes**: ``"mole"`` (CoPL: shared LoRA + M experts, rank 8, one gate), ``"lora"`` (plain LoRA,
  shared block only, default rank 64: Uniform RM / G-Oracle), ``"user_token"`` (w/o MoLE ablation:
  the user embedding is projected by a Linear to one extra input embedding prepended to the
  sequence, plus a rank-64 LoRA).
- **gate scope**: ``gate_scope="model"`` (default here) routes once per forward with one gate for
  all adapted layers; ``"layer"`` gives every adapted linear its own gate, as the official code
  does (one gate per adapted layer; paper Fig. 6 shows per-layer allocations).

Departures (stated): the gate weight multiplies an expert once (Eq. 8 as written; the official
code applies it twice); the default gate scope is one gate per model (``"layer"`` reproduces the
official layout); no LoRA dropout; alpha = 16 at every rank (the paper gives no alpha); the
reward head is a separate Linear rather than gemma's sequence-classification head (same
function); plain LoRA uses this module's layer with M = 0 (so Uniform RM and CoPL share one code
path) and is exported in peft's format rather than trained through peft.

Saved layout (`save_reward_model`)::

    reward_model.json       format_version, RewardModelConfig, backbone reference, fingerprint,
                            text encoding (template + max_length; format 2, absent in format 1)
    adapters.safetensors    every tensor outside the frozen backbone (adapters, gates, head, ...)
    peft/                   lora mode only: adapter_config.json + adapter_model.safetensors
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from copl_ray.reward.backbones import default_targets, is_encoder, load_backbone, load_tokenizer
from copl_ray.reward.encoding import TextEncoding, pad_id_of, pad_right
from copl_ray.reward.gate import UserGate, expert_mask
from copl_ray.reward.losses import load_balancing_loss
from copl_ray.reward.mole import MoLELinear, RoutingContext

__all__ = ["RewardModelConfig", "RewardOutput", "PersonalRewardModel", "build_tokenizer",
           "save_reward_model", "load_reward_model", "score", "score_responses", "FORMAT_VERSION"]

# 2: reward_model.json carries the text encoding ("encoding"); 1 (no encoding) still loads.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
DEFAULT_RANK = {"mole": 8, "lora": 64, "user_token": 64}


class RewardModelConfig(BaseModel):
    """Architecture of a `PersonalRewardModel` (paper App. D.2 defaults)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("minilm", description="minilm | tiny-llama | tiny-gemma | random-gemma-2b | local dir")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="module-name suffixes to adapt; None = per-architecture q/v default")
    mode: Literal["mole", "lora", "user_token"] = "mole"
    num_experts: int = Field(8, ge=1)
    rank: int | None = Field(None, ge=1, description="LoRA rank; None = 8 for mole, 64 for lora/user_token")
    alpha: float = Field(16.0, gt=0, description="LoRA scale is alpha / rank")
    shared_expert: bool = True
    top_k: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)
    gate_hidden: int = Field(256, ge=1)
    gate_scope: Literal["model", "layer"] = "model"
    user_dim: int | None = Field(None, ge=1, description="width of the GNN user embedding")
    pooling: Literal["auto", "last", "mean", "cls"] = "auto"
    load_balancing: bool = Field(False, description="report the Switch load-balancing loss as aux_loss")
    impl: Literal["auto", "masked", "gathered", "loop"] = Field(
        "auto", description="mixed-user batch kernel: auto = masked on GPU, gathered on CPU")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    backbone_seed: int = Field(0, description="seed of random (tiny) backbones")

    @model_validator(mode="after")
    def _check(self) -> "RewardModelConfig":
        if self.mode in ("mole", "user_token") and self.user_dim is None:
            raise ValueError(f"user_dim is required for mode={self.mode!r}")
        if self.mode == "mole" and self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.mode != "mole" and not self.shared_expert:
            raise ValueError(f"mode={self.mode!r} is a plain LoRA: shared_expert must be true")
        return self

    @property
    def lora_rank(self) -> int:
        return self.rank if self.rank is not None else DEFAULT_RANK[self.mode]


@dataclass
class RewardOutput:
    """rewards [B] float32; gate_probs [B, M] ([B, L, M] per layer) or None; expert_index [B]
    ([B, L] per layer, [..., k] for top-k) or None; aux_loss scalar (0 unless load_balancing)."""

    rewards: torch.Tensor
    gate_probs: torch.Tensor | None
    expert_index: torch.Tensor | None
    aux_loss: torch.Tensor


def build_tokenizer(cfg: RewardModelConfig):
    return load_tokenizer(cfg.backbone)


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


class PersonalRewardModel(nn.Module):
    """``(input_ids, attention_mask, user_emb) -> RewardOutput``; see the module docstring.

    Shapes:
        input_ids [B, T] long, attention_mask [B, T] (1 = token), user_emb [B, d_u] or None
        (``lora`` mode ignores it) -> rewards [B].
    """

    def __init__(self, cfg: RewardModelConfig, with_tokenizer: bool = True,
                 device: str | torch.device | None = None):
        super().__init__()
        self.cfg = cfg
        bb = load_backbone(cfg.backbone, cfg.dtype, cfg.backbone_seed, with_tokenizer, device)
        self.backbone, self.tokenizer, self.backbone_source = bb.model, bb.tokenizer, bb.source
        config = self.backbone.config
        if getattr(config, "use_cache", False):
            config.use_cache = False  # a reward is one forward: no KV cache to build or keep
        self.encoder = is_encoder(config)
        self.pooling = cfg.pooling if cfg.pooling != "auto" else ("mean" if self.encoder else "last")
        self._frozen_names = {n for n, _ in self.backbone.named_parameters()}
        self.routing = RoutingContext()
        # How texts become input ids: set by training (saved with the model) or by loading a
        # format-2 file; None for a format-1 file (the caller then names the max_length).
        self.encoding: TextEncoding | None = None
        hidden = config.hidden_size
        dtype = next(self.backbone.parameters()).dtype

        mole = cfg.mode == "mole"
        experts = cfg.num_experts if mole else 0
        self.gate = None
        if mole and cfg.gate_scope == "model":
            self.gate = UserGate(cfg.user_dim, experts, cfg.gate_hidden, cfg.top_k, cfg.temperature).to(dtype)
        self.user_proj = nn.Linear(cfg.user_dim, hidden, dtype=dtype) if cfg.mode == "user_token" else None
        self.adapted = self._wrap_targets(experts, dtype)
        self.head = nn.Linear(hidden, 1, dtype=dtype)
        nn.init.zeros_(self.head.bias)
        if device is not None:
            self.to(device)
        if cfg.gradient_checkpointing:
            # Non-reentrant: recomputation must see the gate's graph (a tensor from outside the layer).
            enable = getattr(self.backbone, "activation_checkpointing_enable", None)
            if enable is not None:  # transformers >= 5.x name; the old one is a deprecated alias
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _wrap_targets(self, experts: int, dtype) -> list[str]:
        cfg = self.cfg
        linears = [(n, m) for n, m in self.backbone.named_modules() if isinstance(m, nn.Linear)]
        if cfg.target_modules == "all-linear":
            chosen = linears
        else:
            targets = cfg.target_modules or default_targets(self.backbone.config)
            chosen = [(n, m) for n, m in linears if _matches(n, targets)]
            if not chosen:
                names = sorted({n.rsplit(".", 1)[-1] for n, _ in linears})
                raise ValueError(f"target_modules {targets} match no linear of backbone {cfg.backbone!r} "
                                 f"(its linear names: {names})")
        for name, lin in chosen:
            gate = None
            if experts and cfg.gate_scope == "layer":
                gate = UserGate(cfg.user_dim, experts, cfg.gate_hidden, cfg.top_k, cfg.temperature).to(dtype)
            wrapped = MoLELinear(lin, cfg.lora_rank, experts, cfg.alpha, cfg.shared_expert, self.routing,
                                 gate=gate, impl=cfg.impl)
            parent, _, child = name.rpartition(".")
            setattr(self.backbone.get_submodule(parent) if parent else self.backbone, child, wrapped)
        return [n for n, _ in chosen]

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                user_emb: torch.Tensor | None = None) -> RewardOutput:
        cfg, ctx = self.cfg, self.routing
        bsz = input_ids.shape[0]
        ctx.reset()
        if cfg.mode != "lora":
            if user_emb is None:
                raise ValueError(f"mode={cfg.mode!r} needs user_emb [B, {cfg.user_dim}]")
            if user_emb.shape != (bsz, cfg.user_dim):
                raise ValueError(f"user_emb must be [{bsz}, {cfg.user_dim}], got {list(user_emb.shape)}")
        dtype = self.head.weight.dtype
        if self.gate is not None:
            ctx.gate = self.gate(user_emb)
            ctx.mask = expert_mask(ctx.gate.weights, bsz, cfg.lora_rank, cfg.shared_expert,
                                   cfg.alpha / cfg.lora_rank, dtype, input_ids.device)
        elif cfg.mode == "mole":
            ctx.user_emb = user_emb

        kwargs = {"attention_mask": attention_mask}
        if self.user_proj is not None:
            embeds = self.backbone.get_input_embeddings()(input_ids)
            token = self.user_proj(user_emb.to(dtype)).unsqueeze(1)                    # [B, 1, H]
            kwargs["inputs_embeds"] = torch.cat([token.to(embeds.dtype), embeds], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(bsz, 1), attention_mask], dim=1)
            kwargs["attention_mask"] = attention_mask
        else:
            kwargs["input_ids"] = input_ids
        hidden = self.backbone(**kwargs).last_hidden_state                           # [B, T, H]
        # sum over the head's single output: a fresh [B] tensor, not a view (FSDP2 warns that an
        # in-place op on a returned view would skip its pre-backward hook)
        rewards = self.head(self._pool(hidden, attention_mask)).float().sum(-1)

        probs = index = None
        if cfg.mode == "mole":
            if self.gate is not None:
                probs, index = ctx.gate.probs, ctx.gate.index                          # [B, M], [B, k]
            else:
                gates = ctx.layer_gates[: len(self.adapted)]
                probs = torch.stack([g.probs for g in gates], dim=1)                  # [B, L, M]
                index = torch.stack([g.index for g in gates], dim=1)                  # [B, L, k]
            if cfg.top_k == 1:
                index = index.squeeze(-1).clone()
        aux = rewards.new_zeros(())
        if cfg.load_balancing and probs is not None:
            aux = load_balancing_loss(probs, index)
        return RewardOutput(rewards=rewards, gate_probs=probs, expert_index=index, aux_loss=aux)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, H], mask [B, T] -> [B, H]."""
        if self.pooling == "mean":
            m = mask.to(hidden.dtype).unsqueeze(-1)
            return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        if self.pooling == "cls":
            return hidden[:, 1 if self.user_proj is not None else 0]
        # Last position holding a token: right padding -> length - 1, left padding -> T - 1.
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * (mask > 0)).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    # ------------------------------------------------------------------ state

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything except the frozen backbone: adapters, gate(s), user projection, head."""
        frozen = {_canonical(n) for n in self._frozen_names}
        return {n: p.detach() for n, p in self.named_parameters()
                if not (n.startswith("backbone.") and _canonical(n[len("backbone."):]) in frozen)}

    def backbone_state_fingerprint(self) -> str:
        """sha256 over the frozen backbone's parameter names, dtypes, shapes and bytes."""
        h = hashlib.sha256()
        frozen = {_canonical(n) for n in self._frozen_names}
        for name, p in sorted(self.backbone.named_parameters()):
            if _canonical(name) not in frozen:
                continue
            t = p.detach().cpu().contiguous()
            h.update(f"{_canonical(name)}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()


def _canonical(name: str) -> str:
    """Backbone parameter name with the MoLE wrapper removed (``q_proj.base.weight`` -> ``q_proj.weight``)."""
    return name.replace(".base.", ".")


# ---------------------------------------------------------------------- save / load / score

_ADAPTERS, _META = "adapters.safetensors", "reward_model.json"


def save_reward_model(model: PersonalRewardModel, directory: str | os.PathLike,
                      encoding: TextEncoding | None = None) -> Path:
    """Write adapters + gate(s) + head as safetensors and ``reward_model.json``; never the backbone.

    ``encoding`` (default: ``model.encoding``) is the template and truncation the model was trained
    with; it is stored so every reader encodes texts the same way.

    The backbone is stored as a reference: its name or local path, and for random (tiny) backbones
    their config and seed, from which `load_backbone` re-creates them bit for bit; the fingerprint
    of bundled and random backbones is stored and checked on load (local checkpoints are too big to
    hash on every save). ``lora`` mode also writes ``peft/`` in peft's adapter format.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {n: t.cpu().contiguous() for n, t in model.adapter_state_dict().items()}
    save_file(state, str(out / _ADAPTERS))
    source = dict(model.backbone_source)
    meta = {"format_version": FORMAT_VERSION, "config": model.cfg.model_dump(mode="json"),
            "backbone": source, "adapted_modules": model.adapted,
            "backbone_fingerprint": model.backbone_state_fingerprint() if source["kind"] != "local" else None}
    encoding = encoding or model.encoding
    if encoding is not None:
        meta["encoding"] = encoding.model_dump(mode="json")
    (out / _META).write_text(json.dumps(meta, indent=1))
    if model.cfg.mode == "lora":
        from copl_ray.reward.peft_io import save_peft_adapter

        save_peft_adapter(model, out / "peft")
    return out


def load_reward_model(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> PersonalRewardModel:
    """Rebuild a `save_reward_model` directory: backbone from its reference, then the adapters."""
    from safetensors.torch import load_file

    d = Path(directory)
    meta_path = d / _META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: not a save_reward_model directory")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") not in READABLE_FORMATS:
        raise ValueError(f"{meta_path}: format_version {meta.get('format_version')!r}, expected one of "
                         f"{READABLE_FORMATS}")
    model = PersonalRewardModel(RewardModelConfig.model_validate(meta["config"]))
    if meta.get("encoding") is not None:
        model.encoding = TextEncoding.model_validate(meta["encoding"])
    expected_fp = meta.get("backbone_fingerprint")
    if expected_fp is not None and model.backbone_state_fingerprint() != expected_fp:
        raise ValueError(f"{meta_path}: backbone {meta['config']['backbone']!r} rebuilt here differs from "
                         "the one the adapters were trained on (fingerprint mismatch)")
    state = load_file(str(d / _ADAPTERS))
    expected = set(model.adapter_state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{d / _ADAPTERS}: missing tensors {missing[:5]}, unexpected tensors {extra[:5]}")
    model.load_state_dict(state, strict=False)
    return model.to(map_location)


def score(model: PersonalRewardModel, tokenizer, texts: list[str], user_emb: torch.Tensor | None,
          max_length: int = 512) -> torch.Tensor:
    """Rewards [B] (float32, CPU) of ``texts`` for users ``user_emb`` [B, d_u], one batched pass."""
    if user_emb is not None and len(texts) != user_emb.shape[0]:
        raise ValueError(f"{len(texts)} texts but user_emb has {user_emb.shape[0]} rows")
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = model(enc["input_ids"].to(device), enc["attention_mask"].to(device),
                    None if user_emb is None else user_emb.to(device))
    model.train(was_training)
    return out.rewards.cpu()


def score_responses(model: PersonalRewardModel, prompts: list[str], responses: list[str],
                    user_emb: torch.Tensor | None, encoding: TextEncoding | None = None) -> torch.Tensor:
    """Rewards [B] (float32, CPU) of (prompt, response) pairs for users ``user_emb`` [B, d_u], read
    exactly as training read them (``encoding``, default ``model.encoding``), one batched pass."""
    encoding = encoding or model.encoding
    if encoding is None:
        raise ValueError("the model carries no text encoding (format-1 file): pass encoding=")
    if user_emb is not None and len(responses) != user_emb.shape[0]:
        raise ValueError(f"{len(responses)} responses but user_emb has {user_emb.shape[0]} rows")
    if not responses:
        return torch.empty(0)
    ids, mask = pad_right(encoding.encode(model.tokenizer, prompts, responses), pad_id_of(model.tokenizer))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = model(ids.to(device), mask.to(device), None if user_emb is None else user_emb.to(device))
    model.train(was_training)
    return out.rewards.float().cpu()
