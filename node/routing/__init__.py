"""node.routing."""
