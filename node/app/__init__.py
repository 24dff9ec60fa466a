"""node.app."""
