"""Optimization-free adaptation of unseen users (paper Section 4.3), its baselines (Table 5),
onboarding of new users into the dataset, and active survey selection.

Serving loads `GNNArtifacts` once and calls `adapt_one` per request; jobs call `adapt_batch`.
"""

from copl_ray.adapt.artifacts import GNNArtifacts, load_gnn_artifacts
from copl_ray.adapt.core import (RESOLUTIONS, AdaptInputError, AdaptParams, AdaptResult, BatchAdaptResult,
                                 adapt_batch, adapt_one)

__all__ = ["GNNArtifacts", "load_gnn_artifacts", "AdaptParams", "AdaptResult", "BatchAdaptResult",
           "AdaptInputError", "RESOLUTIONS", "adapt_one", "adapt_batch"]
