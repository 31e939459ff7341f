"""PersonalRewardModel on real backbones (bundled MiniLM, tiny random Llama/Gemma): invariants."""

from __future__ import annotations

import json

import pytest
import torch

from copl_ray.reward.backbones import load_backbone
from copl_ray.reward.losses import btl_loss
from copl_ray.reward.mole import MoLELinear
from copl_ray.reward.model import (
    PersonalRewardModel, RewardModelConfig, load_reward_model, save_reward_model, score,
)

DU = 8
TEXTS = ["Human: what is a cat? Assistant: a small feline.", "Human: hi Assistant: hello there, friend",
         "Human: 2+2? Assistant: 4", "Human: tell me a joke Assistant: no",
         "Human: why? Assistant: because the sky is blue and the grass is green.", "Human: ok Assistant: ok"]


def _model(backbone="tiny-llama", **kw) -> PersonalRewardModel:
    torch.manual_seed(0)
    kw.setdefault("user_dim", DU)
    return PersonalRewardModel(RewardModelConfig(backbone=backbone, **kw))


def _batch(model, n=len(TEXTS)):
    enc = model.tokenizer(TEXTS[:n], padding=True, return_tensors="pt")
    g = torch.Generator().manual_seed(1)
    return enc["input_ids"], enc["attention_mask"], 3 * torch.randn(n, DU, generator=g)


def _perturb_adapters(model, std=0.2):
    """Non-zero B matrices and a gate that mixes users, as after some training."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MoLELinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * std)
                if m.gate is not None:
                    m.gate.mlp[2].weight.mul_(10)
        if model.gate is not None:
            model.gate.mlp[2].weight.mul_(10)


@pytest.mark.parametrize("backbone,mode", [("tiny-llama", "mole"), ("tiny-gemma", "mole"),
                                           ("minilm", "mole"), ("tiny-llama", "lora")])
def test_zero_init_equals_frozen_backbone_through_the_head(backbone, mode):
    model = _model(backbone, mode=mode)
    ids, mask, users = _batch(model)
    fresh = load_backbone(backbone, seed=0, with_tokenizer=False).model
    with torch.no_grad():
        hidden = fresh(input_ids=ids, attention_mask=mask).last_hidden_state
        want = model.head(model._pool(hidden, mask)).squeeze(-1)
        got = model(ids, mask, users).rewards
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_pooling_reads_last_token_under_left_and_right_padding():
    model = _model("tiny-llama")
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    torch.testing.assert_close(model._pool(hidden, right), hidden[[0, 1], [1, 3]])
    torch.testing.assert_close(model._pool(hidden, left), hidden[[0, 1], [3, 3]])
    assert _model("minilm").pooling == "mean"


def test_training_moves_adapters_gate_head_but_not_the_backbone():
    model = _model("tiny-llama")
    before_fp = model.backbone_state_fingerprint()
    frozen = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ids, mask, users = _batch(model)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    half = ids.shape[0] // 2
    gate_grads = []
    for _ in range(3):
        out = model(ids, mask, users)
        loss = btl_loss(out.rewards[:half], out.rewards[half:])
        opt.zero_grad()
        loss.backward()
        gate_grads.append(sum(p.grad.abs().sum().item() for p in model.gate.parameters()))
        opt.step()
    assert gate_grads[0] == 0 and gate_grads[-1] > 0  # B = 0 at init; then the gate learns (Eq. 10)
    assert model.backbone_state_fingerprint() == before_fp
    for n, p in model.backbone.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]) and p.grad is None, n
    changed = {n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])}
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert any(n.startswith("gate.") for n in changed) and "head.weight" in changed


@pytest.mark.parametrize("backbone,scope", [("tiny-llama", "model"), ("tiny-llama", "layer"),
                                            ("minilm", "model"), ("tiny-gemma", "layer")])
def test_mixed_user_batch_equals_one_user_at_a_time(backbone, scope):
    model = _model(backbone, gate_scope=scope)
    _perturb_adapters(model)
    ids, mask, users = _batch(model)
    with torch.no_grad():
        out = model(ids, mask, users)
        singles = torch.cat([model(ids[i:i + 1], mask[i:i + 1], users[i:i + 1]).rewards
                             for i in range(ids.shape[0])])
    index = out.expert_index if scope == "model" else out.expert_index[:, 0]
    assert index.unique().numel() > 1, "the batch must actually mix experts"
    torch.testing.assert_close(out.rewards, singles, atol=1e-5, rtol=1e-5)
    # and users matter: the same texts scored for other users give other rewards
    with torch.no_grad():
        other = model(ids, mask, users.flip(0)).rewards
    assert not torch.allclose(other, out.rewards)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        model = _model("tiny-llama", gate_scope="layer", gradient_checkpointing=ckpt)
        _perturb_adapters(model)
        model.train()
        ids, mask, users = _batch(model)
        out = model(ids, mask, users)
        n_gates = len(model.routing.layer_gates)
        btl_loss(out.rewards[:3], out.rewards[3:]).backward()
        # with checkpointing the layers (and their gates) really ran again during backward
        assert len(model.routing.layer_gates) == (2 * n_gates if ckpt else n_gates)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("kw", [dict(gate_scope="layer", top_k=2), dict(mode="lora", rank=4),
                                dict(mode="user_token", backbone="tiny-gemma")])
def test_save_load_roundtrip_without_backbone_weights(tmp_path, kw):
    kw = dict(kw)
    model = _model(kw.pop("backbone", "tiny-llama"), **kw)
    _perturb_adapters(model)
    with torch.no_grad():
        model.head.weight.normal_()
    ids, mask, users = _batch(model)
    with torch.no_grad():
        want = model(ids, mask, users)
    save_reward_model(model, tmp_path / "rm")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "rm" / "adapters.safetensors"))
    assert not any(k.endswith("base.weight") or "embed" in k for k in saved)
    assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in model.trainable_parameters())
    loaded = load_reward_model(tmp_path / "rm")
    with torch.no_grad():
        got = loaded(ids, mask, users)
    assert torch.equal(got.rewards, want.rewards)
    if want.expert_index is not None:
        assert got.expert_index.shape == want.expert_index.shape == (ids.shape[0], len(model.adapted), 2)
        assert torch.equal(got.expert_index, want.expert_index)


def test_load_refuses_a_different_backbone_or_missing_tensors(tmp_path):
    save_reward_model(_model("tiny-llama"), tmp_path / "rm")
    meta_path = tmp_path / "rm" / "reward_model.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["backbone_seed"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="fingerprint"):
        load_reward_model(tmp_path / "rm")
    save_reward_model(_model("tiny-llama", gate_scope="layer"), tmp_path / "rm2")
    save_reward_model(_model("tiny-llama"), tmp_path / "rm3")
    (tmp_path / "rm2" / "adapters.safetensors").replace(tmp_path / "rm3" / "adapters.safetensors")
    with pytest.raises(ValueError, match="adapters.safetensors: missing tensors"):
        load_reward_model(tmp_path / "rm3")


def test_plain_lora_saves_in_peft_format_that_peft_loads(tmp_path):
    from peft import PeftModel

    model = _model("tiny-llama", mode="lora", rank=4)
    _perturb_adapters(model)
    save_reward_model(model, tmp_path / "rm")
    ids, mask, _ = _batch(model)
    peft_model = PeftModel.from_pretrained(load_backbone("tiny-llama", with_tokenizer=False).model,
                                           str(tmp_path / "rm" / "peft"))
    with torch.no_grad():
        ours = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state
        bare = load_backbone("tiny-llama", with_tokenizer=False).model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(bare.last_hidden_state, ours)  # the adapters do something


def test_score_and_config_errors():
    model = _model("tiny-llama")
    _perturb_adapters(model)
    ids, mask, users = _batch(model)
    with torch.no_grad():
        want = model(ids, mask, users).rewards
    torch.testing.assert_close(score(model, model.tokenizer, TEXTS, users), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="user_dim is required"):
        RewardModelConfig(mode="mole")
    with pytest.raises(ValueError, match=r"match no linear .*q_proj"):
        _model("tiny-llama", target_modules=["query"])
    with pytest.raises(ValueError, match="needs user_emb"):
        model(ids, mask, None)
    allm = _model("tiny-llama", target_modules="all-linear", num_experts=2)
    assert len(allm.adapted) == 2 * 7  # q, k, v, o, gate, up, down per layer


def test_load_balancing_aux_loss_only_when_enabled():
    ids, mask, users = _batch(_model("tiny-llama"))
    off = _model("tiny-llama")(ids, mask, users).aux_loss
    on = _model("tiny-llama", load_balancing=True)(ids, mask, users)
    assert off.item() == 0.0 and on.aux_loss.item() >= 1.0 - 1e-6
    on.aux_loss.backward()  # reaches the gate
