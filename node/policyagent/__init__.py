"""The policy agent: the mesh's zone rules and mitigations, decided without asking a node.

`reference` is the decision in pure Python (what the node's gate and zone rule decide);
`native/` (Rust, built to `policy_agent.wasm`, shipped here as package data) is the same
decision in WebAssembly, for an edge host (`agent.WasmPolicyAgent`, wasmtime) or a
browser; `policy_set` builds and signs the set a node serves. docs/wasm.md.
"""
