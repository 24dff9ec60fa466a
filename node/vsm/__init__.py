"""The node's viable-system parts that need no transport: the event stream and the
pattern engine. Nothing here imports `node.http`, `node.mcp` or mesh transport."""
