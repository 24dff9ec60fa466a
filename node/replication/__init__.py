"""node.replication."""
