"""node.peers."""
