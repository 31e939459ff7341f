"""Active survey selection: asks the pairs on which the weighted neighbours disagree."""

from __future__ import annotations

import numpy as np
import torch

from copl_ray.adapt.survey import disagreement_scores, select_next_pairs
from tests.adapt_helpers import hand_artifacts


def test_disagreement_is_weighted_variance():
    e = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [1.0, 0.0]])
    w = torch.tensor([0.5, 0.3, 0.2])
    delta = torch.tensor([[1.0, 0.0], [0.0, 1.0]])   # pair 0 splits the users, pair 1 nobody cares
    s = disagreement_scores(e, w, delta)
    p = torch.sigmoid(e @ delta.T)
    ref = (w[:, None] * (p - (w @ p)) ** 2).sum(0)
    torch.testing.assert_close(s, ref)
    assert s[0] > 0.05 and s[1] == 0


def test_selector_picks_divisive_pairs_and_skips_asked_and_unreachable():
    art = hand_artifacts(dim=2)
    art.e_user[:] = torch.tensor([[1.0, 0.0]] * 3 + [[-1.0, 0.0]] * 3)  # two camps on axis 0
    art.e_resp[:] = 0
    art.e_resp[0] = torch.tensor([3.0, 0.0])     # (r0, r4): the camps disagree
    art.e_resp[2] = torch.tensor([0.0, 3.0])     # (r2, r6): everyone agrees
    cand_a, cand_b = np.array([2, 0, 5]), np.array([6, 4, 7])  # (r5, r7): nobody chose either
    first = select_next_pairs(art, {"chosen_id": [], "rejected_id": []}, cand_a, cand_b, n=3)
    assert first.tolist() == [1, 0]                # divisive first; unreachable pair never
    asked = np.array([False, True, False])
    nxt = select_next_pairs(art, {"chosen_id": ["r0"], "rejected_id": ["r1"]}, cand_a, cand_b, n=1, asked=asked)
    assert nxt.tolist() == [0]
