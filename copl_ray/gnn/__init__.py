"""CoPL's signed GNN (paper Section 4.1): layers, model + loss, baselines, neighbour sampling, training.

Import from the submodules (``copl_ray.gnn.model``, ``.layers``, ``.sampler``, ``.baselines``,
``.train``); this package file stays import-light so Ray workers load only what they use.
"""
