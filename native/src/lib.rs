//! vsmcp policy agent: the mesh's zone rules and mitigations (blocks, quarantines),
//! evaluated against call requests without asking a node. Built for wasm32 with Rust's
//! core/alloc/std only (no crates), so it runs under wasmtime and in a browser alike.
//!
//! ABI (no imports; all strings UTF-8 JSON in linear memory):
//! - `alloc(len) -> ptr`, `dealloc(ptr, len)`: buffers for the host to write into;
//! - `load_policies(ptr, len) -> status`: the policy set (`{"zones": [...], "blocks": [...]}`);
//! - `evaluate(ptr, len) -> status`: a batch (`{"now_ms": N, "requests": [...]}`);
//! - `output_ptr()`, `output_len()`: the answer of the last call (`{"decisions": [...]}`,
//!   or `{"error": "..."}` when the status is not 0);
//! - `abi_version() -> 1`.
//! The Python reference (`vsmcp.node.policyagent.reference`) defines the same decisions.

mod json;
mod policy;

use std::cell::RefCell;

use policy::PolicySet;

const ABI_VERSION: u32 = 1;
const STATUS_OK: i32 = 0;
const STATUS_ERROR: i32 = 1;

thread_local! {
    static POLICIES: RefCell<Option<PolicySet>> = RefCell::new(None);
    static OUTPUT: RefCell<Vec<u8>> = RefCell::new(Vec::new());
}

fn set_output(bytes: Vec<u8>) {
    OUTPUT.with(|o| *o.borrow_mut() = bytes);
}

fn error(message: &str) -> i32 {
    let mut out = String::from("{\"error\":");
    json::write_str(&mut out, message);
    out.push('}');
    set_output(out.into_bytes());
    STATUS_ERROR
}

/// # Safety
/// `ptr..ptr+len` must be memory this module handed out with `alloc(len)`.
unsafe fn input<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

#[no_mangle]
pub extern "C" fn abi_version() -> u32 {
    ABI_VERSION
}

#[no_mangle]
pub extern "C" fn alloc(len: usize) -> *mut u8 {
    let mut buffer: Vec<u8> = Vec::with_capacity(len.max(1));
    let ptr = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    ptr
}

/// # Safety
/// `ptr` must come from `alloc(len)` with the same `len`, and not be freed twice.
#[no_mangle]
pub unsafe extern "C" fn dealloc(ptr: *mut u8, len: usize) {
    drop(Vec::from_raw_parts(ptr, 0, len.max(1)));
}

#[no_mangle]
pub extern "C" fn output_ptr() -> *const u8 {
    OUTPUT.with(|o| o.borrow().as_ptr())
}

#[no_mangle]
pub extern "C" fn output_len() -> usize {
    OUTPUT.with(|o| o.borrow().len())
}

/// # Safety
/// See `input`.
#[no_mangle]
pub unsafe extern "C" fn load_policies(ptr: *const u8, len: usize) -> i32 {
    let parsed = json::parse(input(ptr, len)).and_then(|v| PolicySet::from_json(&v));
    match parsed {
        Ok(set) => {
            let summary = format!("{{\"zones\":{},\"blocks\":{}}}", set.zone_count(), set.block_count());
            POLICIES.with(|p| *p.borrow_mut() = Some(set));
            set_output(summary.into_bytes());
            STATUS_OK
        }
        Err(e) => error(&e),
    }
}

/// # Safety
/// See `input`.
#[no_mangle]
pub unsafe extern "C" fn evaluate(ptr: *const u8, len: usize) -> i32 {
    let batch = match json::parse(input(ptr, len)) {
        Ok(v) => v,
        Err(e) => return error(&e),
    };
    let answer = POLICIES.with(|p| match p.borrow().as_ref() {
        None => Err(String::from("no policy set loaded (call load_policies first)")),
        Some(set) => set.evaluate_batch(&batch),
    });
    match answer {
        Ok(out) => {
            set_output(out.into_bytes());
            STATUS_OK
        }
        Err(e) => error(&e),
    }
}
