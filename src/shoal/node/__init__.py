"""The node: this process's presence on the network, with patterns by channel name.

``shoal.open_node`` and ``shoal.Node`` are the public names; the modules here are
private.
"""

from shoal.node._node import Node, NodeStatistics, PeerWatch, open_node

__all__ = ["Node", "NodeStatistics", "PeerWatch", "open_node"]
