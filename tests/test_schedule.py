"""The cosine warm-up schedule both trainers use (paper App. D.2: GNN warm-up 0.1, reward model 0.03)."""

import pytest
import torch

from copl_ray.schedule import cosine_with_warmup


@pytest.mark.parametrize("warmup_ratio, warmup_steps", [(0.1, 10), (0.03, 3)])
def test_cosine_schedule_warms_up_then_decays_to_zero(warmup_ratio, warmup_steps):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, total_steps=100, warmup_ratio=warmup_ratio)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    w = warmup_steps
    assert lrs[0] == pytest.approx(1 / w) and lrs[w - 1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[: w - 1], lrs[1:w]))
    assert all(a >= b for a, b in zip(lrs[w:], lrs[w + 1:])) and lrs[-1] < 0.01


def test_no_warmup_starts_at_full_rate():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    cosine_with_warmup(opt, total_steps=10, warmup_ratio=0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0)
