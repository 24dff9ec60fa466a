"""node.http."""
