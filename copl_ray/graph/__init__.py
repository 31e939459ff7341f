"""The signed user-response bipartite graph, its id maps and its construction with Ray Data."""

from copl_ray.graph.id_map import IdMap
from copl_ray.graph.signed_graph import SignedGraph

__all__ = ["IdMap", "SignedGraph"]
