"""Networks: the e3nn vector network that predicts frames, and the ordinary backbones."""

from .neighbors import farthest_point_sampling, fully_connected_graph, knn_graph
from .vector_net import EquivariantVectorNetwork

__all__ = ["EquivariantVectorNetwork", "farthest_point_sampling", "fully_connected_graph", "knn_graph"]
