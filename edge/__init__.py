"""WebAssembly runtime (wasmtime) for sandboxed tools: a WASI preview 1 module is a tool.

`manifest` reads a tool's TOML manifest (no wasmtime needed); `runtime` compiles and
runs modules under per-tool limits. wasmtime is an optional dependency (the `wasm`
extra), imported only when a WASM tool is loaded. This package knows nothing of the
node: `vsmcp.node.tools.wasm` makes a loaded tool a supervised System 1 unit.
"""
