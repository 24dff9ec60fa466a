"""The MCP gateway: JSON-RPC protocol core, Streamable HTTP (aiohttp) and stdio."""
