"""Benchmark: scoring throughput of the MoLE reward model on a batch mixing many users.

    nice python jobs/bench_reward.py                                   # MiniLM and tiny Llama, CPU
    python jobs/bench_reward.py backbones=[tiny-llama] repeats=5      # quick
    python jobs/bench_reward.py --device cuda --dtype bf16 backbones=[random-gemma-2b]   # GPU box

Per backbone, the same inputs (``pairs`` pairs = 2 x pairs sequences of ``seq_len`` tokens, one
user per pair, users routed to all M experts round-robin) are scored under ``torch.inference_mode``
by these variants, interleaved round-robin over ``repeats`` so machine noise hits all alike:

- ``no_lora``: the frozen backbone + head;
- ``lora``: one plain LoRA of the MoLE's rank on the same targets, same fused path (shared only);
- ``mole_mixed``: CoPL's MoLE (shared + M experts), stacked masked-dense, users on all M experts
  (``impl="auto"``'s choice on GPUs);
- ``mole_one_expert``: the same with every user on expert 0 (the other routing extreme);
- ``mole_layer_gates``: one gate per adapted layer (official code's layout), masked, mixed users;
- ``mole_gathered``: gather each sequence's blocks + bmm (Punica/S-LoRA style), mixed users
  (``impl="auto"``'s choice on CPUs);
- ``mole_loop``: a Python loop over experts per layer (peft mixed batches, MixLoRA), mixed.

Prints the median seconds per batch, pairs/s, and the ratios against ``lora`` (target for
``mole_mixed``: >= 0.85) and ``lora`` against ``no_lora``; writes ``output_dir/metrics.json``.
The gate's weights are set so that user b goes to expert ``b mod M`` (a deterministic routing that
still runs the real gate MLP); adapter B matrices are random (non-zero), as after training.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from pydantic import Field  # noqa: E402

from copl_ray.config import JobConfig, parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.reward.mole import MoLELinear  # noqa: E402
from copl_ray.reward.model import PersonalRewardModel, RewardModelConfig  # noqa: E402

VARIANTS = ["no_lora", "lora", "mole_mixed", "mole_one_expert", "mole_layer_gates", "mole_gathered", "mole_loop"]


class BenchRewardConfig(JobConfig):
    """jobs/bench_reward.py: pairs/s of MoLE vs plain LoRA vs no LoRA vs a loop over experts."""

    backbones: list[str] = Field(default_factory=lambda: ["minilm", "tiny-llama"])
    pairs: int = Field(32, ge=1, description="pairs per batch (2x sequences), one user per pair")
    seq_len: int = Field(128, ge=4)
    num_experts: int = Field(8, ge=1)
    rank: int = Field(8, ge=1)
    target_modules: list[str] | str | None = None
    variants: list[str] = Field(default_factory=lambda: list(VARIANTS))
    repeats: int = Field(20, ge=1)
    warmup: int = Field(2, ge=0)
    device: str = "cpu"
    dtype: str = Field("float32", description="float32 | bfloat16 (bf16) | float16")
    threads: int | None = Field(None, description="torch.set_num_threads (default: torch's)")
    layer_bench: bool = Field(True, description="also time one adapted linear alone")
    seed: int = 0
    output_dir: str = "runs/bench_reward"


def _route_round_robin(gate, num_experts: int) -> None:
    """Gate weights making logits = the user embedding's first M coordinates (ReLU passes them)."""
    with torch.no_grad():
        first, last = gate.mlp[0], gate.mlp[2]
        first.weight.zero_(), first.bias.zero_(), last.weight.zero_(), last.bias.zero_()
        first.weight[:num_experts, :num_experts] = torch.eye(num_experts)
        last.weight[:, :num_experts] = torch.eye(num_experts)


def _build(variant: str, backbone: str, cfg: BenchRewardConfig, device) -> PersonalRewardModel:
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(cfg.dtype, cfg.dtype)
    common = dict(backbone=backbone, rank=cfg.rank, target_modules=cfg.target_modules, dtype=dtype,
                  user_dim=max(cfg.num_experts, 8), num_experts=cfg.num_experts)
    if variant in ("no_lora", "lora"):
        kw = dict(mode="lora")
    else:
        kw = dict(mode="mole", gate_scope="layer" if variant == "mole_layer_gates" else "model",
                  impl={"mole_gathered": "gathered", "mole_loop": "loop"}.get(variant, "masked"))
    torch.manual_seed(cfg.seed)
    model = PersonalRewardModel(RewardModelConfig(**common, **kw), with_tokenizer=False, device=device)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MoLELinear):
                m.lora_B.normal_(std=0.02)
                if m.gate is not None:
                    _route_round_robin(m.gate, cfg.num_experts)
        if model.gate is not None:
            _route_round_robin(model.gate, cfg.num_experts)
    if variant == "no_lora":
        _unwrap(model)
    return model.eval()


def _unwrap(model: PersonalRewardModel) -> None:
    """Put the frozen linears back in place of their MoLE wrappers: the bare backbone."""
    for name in model.adapted:
        parent, _, child = name.rpartition(".")
        holder = model.backbone.get_submodule(parent) if parent else model.backbone
        setattr(holder, child, getattr(holder, child).base)


def _inputs(model: PersonalRewardModel, cfg: BenchRewardConfig, variant: str, device):
    g = torch.Generator().manual_seed(cfg.seed)
    vocab = model.backbone.config.vocab_size
    n = 2 * cfg.pairs
    ids = torch.randint(5, vocab, (n, cfg.seq_len), generator=g)
    mask = torch.ones(n, cfg.seq_len, dtype=torch.long)
    user_dim = model.cfg.user_dim
    expert = torch.arange(cfg.pairs) % cfg.num_experts
    if variant == "mole_one_expert":
        expert = torch.zeros(cfg.pairs, dtype=torch.long)
    users = torch.nn.functional.one_hot(expert, user_dim).float() * 4.0
    users = torch.cat([users, users])  # chosen and rejected of pair b share user b
    return ids.to(device), mask.to(device), users.to(device)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_backbone(backbone: str, cfg: BenchRewardConfig) -> dict:
    device = torch.device(cfg.device)
    models = {v: _build(v, backbone, cfg, device) for v in cfg.variants}
    inputs = {v: _inputs(models[v], cfg, v, device) for v in cfg.variants}
    times: dict[str, list[float]] = {v: [] for v in cfg.variants}
    with torch.inference_mode():
        for v in cfg.variants:  # routing sanity: the mixed batch really uses every expert
            out = models[v](*inputs[v])
            if v in ("mole_mixed", "mole_gathered", "mole_loop"):
                used = out.expert_index.unique().numel()
                if used != min(cfg.num_experts, cfg.pairs):
                    raise RuntimeError(f"{v}: batch routed to {used} experts, expected all")
        for it in range(cfg.warmup + cfg.repeats):
            for v in cfg.variants:
                _sync(device)
                t0 = time.perf_counter()
                models[v](*inputs[v])
                _sync(device)
                if it >= cfg.warmup:
                    times[v].append(time.perf_counter() - t0)
    result = {}
    for v in cfg.variants:
        med = statistics.median(times[v])
        result[v] = {"median_s": med, "min_s": min(times[v]), "pairs_per_s": cfg.pairs / med}
    adapted = models[cfg.variants[-1]].adapted
    return {"variants": result, "ratios": _ratios(result), "adapted_modules": len(adapted)}


def _ratios(result: dict) -> dict:
    """Throughput ratios (time of the reference / time of the variant), on medians and on minima."""
    pairs = [(v, "lora") for v in result if v.startswith("mole")] + [("lora", "no_lora"),
                                                                     ("mole_mixed", "mole_loop")]
    out = {}
    for v, ref in pairs:
        if v in result and ref in result:
            out[f"{v}/{ref}"] = {stat: result[ref][f"{stat}_s"] / result[v][f"{stat}_s"]
                                 for stat in ("median", "min")}
    return out


def bench_layer(backbone: str, cfg: BenchRewardConfig) -> dict:
    """One adapted linear of the backbone's shape alone, [2P, T, d] input: the adapter's own cost."""
    from copl_ray.reward.gate import expert_mask, UserGate
    from copl_ray.reward.mole import RoutingContext

    device = torch.device(cfg.device)
    model = _build("mole_mixed", backbone, cfg, device)
    name = model.adapted[0]
    base = model.backbone.get_submodule(name).base
    dtype = base.weight.dtype
    n = 2 * cfg.pairs
    x = torch.randn(n, cfg.seq_len, base.in_features, device=device, dtype=dtype)
    users = torch.nn.functional.one_hot(torch.arange(n) % cfg.num_experts, max(cfg.num_experts, 8)).float() * 4
    gate = UserGate(users.shape[1], cfg.num_experts, cfg.seq_len)
    _route_round_robin(gate, cfg.num_experts)
    gate = gate.to(device=device, dtype=dtype)
    layers = {}
    for variant, experts, impl in (("lora", 0, "masked"), ("mole_mixed", cfg.num_experts, "masked"),
                                   ("mole_gathered", cfg.num_experts, "gathered"),
                                   ("mole_loop", cfg.num_experts, "loop")):
        ctx = RoutingContext()
        lay = MoLELinear(base, cfg.rank, experts, 16.0, True, ctx, impl=impl).to(device)
        if experts:
            ctx.gate = gate(users.to(device))
            ctx.mask = expert_mask(ctx.gate.weights, n, cfg.rank, True, lay.scale, dtype, device)
        layers[variant] = lay
    layers["no_lora"] = base
    reps = max(10, 5 * cfg.repeats)
    times: dict[str, list[float]] = {v: [] for v in layers}
    with torch.inference_mode():
        for it in range(cfg.warmup + reps):
            for v, lay in layers.items():
                _sync(device)
                t0 = time.perf_counter()
                lay(x)
                _sync(device)
                if it >= cfg.warmup:
                    times[v].append(time.perf_counter() - t0)
    result = {v: {"median_s": statistics.median(t), "min_s": min(t), "pairs_per_s": cfg.pairs / statistics.median(t)}
              for v, t in times.items()}
    return {"module": name, "shape": [n, cfg.seq_len, base.in_features, base.out_features],
            "variants": result, "ratios": _ratios(result)}


def _translate_flags(argv: list[str]) -> list[str]:
    """Accept ``--device cuda --dtype bf16`` as well as ``device=cuda dtype=bf16``."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and a != "--config" and "=" not in a and i + 1 < len(argv):
            out.append(f"{a[2:].replace('-', '_')}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_job_args(BenchRewardConfig, _translate_flags(argv))
    unknown = set(cfg.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"error: unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    metrics = {"pairs": cfg.pairs, "seq_len": cfg.seq_len, "num_experts": cfg.num_experts, "rank": cfg.rank,
               "device": cfg.device, "dtype": cfg.dtype, "threads": torch.get_num_threads(),
               "torch": torch.__version__, "backbones": {}}
    for backbone in cfg.backbones:
        res = bench_backbone(backbone, cfg)
        metrics["backbones"][backbone] = res
        print(f"\n{backbone}: {cfg.pairs} pairs x 2 x {cfg.seq_len} tokens, M={cfg.num_experts}, r={cfg.rank}, "
              f"{res['adapted_modules']} adapted linears, {cfg.device}/{cfg.dtype}, "
              f"{torch.get_num_threads()} threads, median of {cfg.repeats}")
        for v, r in res["variants"].items():
            print(f"  {v:18s} {r['median_s'] * 1e3:9.1f} ms/batch  {r['pairs_per_s']:9.1f} pairs/s")
        for k, r in res["ratios"].items():
            print(f"  {k:26s} {r['median']:6.3f} (medians)  {r['min']:6.3f} (minima)  throughput ratio")
        if cfg.layer_bench:
            lay = bench_layer(backbone, cfg)
            res["layer"] = lay
            print(f"  one adapted linear alone ({lay['module']}, x {lay['shape'][:3]} -> {lay['shape'][3]}):")
            for v, r in lay["variants"].items():
                print(f"    {v:16s} {r['median_s'] * 1e3:9.3f} ms")
            for k, r in lay["ratios"].items():
                print(f"    {k:24s} {r['median']:6.3f} (medians)  {r['min']:6.3f} (minima)")
    write_resolved_config(cfg, cfg.output_dir)
    write_metrics(metrics, cfg.output_dir)
    return metrics


if __name__ == "__main__":
    main()
