"""node.store."""
