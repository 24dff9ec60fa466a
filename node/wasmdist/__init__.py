"""Signed WASM module distribution (docs/wasm.md, "Signed distribution"): manifests
signed by the authority or a `publisher` node replicate in the policies CRDT (kind
`wasm_module`); the bytes travel over the mesh, hash-checked, to nodes that run them."""
