"""WebAssembly runtime for sandboxed plugin tools (not yet implemented)."""
