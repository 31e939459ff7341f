"""copl_ray: CoPL personalized reward models (graph, GNN user embeddings, MoLE reward model) on Ray."""

__version__ = "0.1.0"
