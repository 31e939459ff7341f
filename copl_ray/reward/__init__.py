"""Personalized reward model (CoPL Sec. 4.2): MoLE adapters, user gate, losses, training harness.

The model API lives in `copl_ray.reward.model` (imported lazily: importing this package does not
load transformers).
"""
