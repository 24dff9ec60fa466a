//! The decision: a live mitigation covering the caller's origin, the origin an entry node
//! named, the client's address, the entry node or the tool denies (the node's gate,
//! `ImmuneService.check_call`); then the zone rule (`zone_allows`): a caller may call a
//! tool whose zone ranks at or below its own, an unknown zone is a denial.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::json::{self, Value};

const MAX_ZONES: usize = 64;

struct Block {
    key: String,
    policy: String,
    expires_at_ms: f64,
}

const KINDS: [&str; 3] = ["origin", "node", "tool"];
const ORIGIN: usize = 0;
const NODE: usize = 1;
const TOOL: usize = 2;

pub struct PolicySet {
    ranks: HashMap<String, usize>,
    /// Per target kind (KINDS' order), the blocks of each target: looked up by `&str`.
    blocks: [HashMap<String, Vec<Block>>; 3],
    block_count: usize,
}

struct Request<'a> {
    origin: &'a str,
    entry_origin: Option<&'a str>,
    client_addr: Option<&'a str>,
    entry_node: Option<&'a str>,
    tool: &'a str,
    caller_zone: &'a str,
    tool_zone: &'a str,
}

enum Decision<'a> {
    Allowed,
    Mitigation(&'a Block, &'static str),
    Zone(&'static str),
}

impl PolicySet {
    pub fn from_json(v: &Value) -> Result<PolicySet, String> {
        let mut ranks = HashMap::new();
        let zones = v.req_arr("zones")?;
        if zones.is_empty() || zones.len() > MAX_ZONES {
            return Err(format!("'zones' must list 1..{} zones", MAX_ZONES));
        }
        for (rank, zone) in zones.iter().enumerate() {
            match zone {
                Value::Str(name) => {
                    if ranks.insert(name.to_string(), rank).is_some() {
                        return Err(format!("zone {} is listed twice", name));
                    }
                }
                _ => return Err(String::from("'zones' must be a list of strings")),
            }
        }
        let mut blocks: [HashMap<String, Vec<Block>>; 3] = Default::default();
        let items = v.req_arr("blocks")?;
        for item in items {
            let kind = item.req_str("target_kind")?;
            let index = match KINDS.iter().position(|k| *k == kind) {
                Some(index) => index,
                None => return Err(format!("unknown target_kind {}", kind)),
            };
            let raw = item.req_str("target")?;
            let target = if kind == "origin" { canonical_origin(raw) } else { raw.to_string() };
            let block = Block {
                key: item.req_str("key")?.to_string(),
                policy: item.req_str("policy")?.to_string(),
                expires_at_ms: item.req_num("expires_at_ms")?,
            };
            blocks[index].entry(target).or_default().push(block);
        }
        Ok(PolicySet { ranks, blocks, block_count: items.len() })
    }

    pub fn zone_count(&self) -> usize {
        self.ranks.len()
    }

    pub fn block_count(&self) -> usize {
        self.block_count
    }

    /// The live block of this target expiring last (the smallest key among equals).
    fn find(&self, kind: usize, target: &str, now_ms: f64) -> Option<&Block> {
        let held = self.blocks[kind].get(target)?;
        let mut best: Option<&Block> = None;
        for b in held.iter().filter(|b| b.expires_at_ms > now_ms) {
            best = match best {
                Some(cur)
                    if cur.expires_at_ms > b.expires_at_ms
                        || (cur.expires_at_ms == b.expires_at_ms && cur.key <= b.key) =>
                {
                    Some(cur)
                }
                _ => Some(b),
            };
        }
        best
    }

    fn decide(&self, r: &Request, now_ms: f64) -> Decision<'_> {
        if self.block_count > 0 {
            // The entry node's loopback or stdio caller is not ours, whatever is blocked.
            let named = r.entry_origin.filter(|o| !is_node_local(o));
            let address = r.client_addr.map(|a| canonical_origin(&format!("addr:{}", a)));
            let candidates: [(usize, Option<&str>, &'static str); 5] = [
                (ORIGIN, Some(r.origin), "caller"),
                (ORIGIN, named, "caller"),
                (ORIGIN, address.as_deref(), "caller"),
                (NODE, r.entry_node, "entry node"),
                (TOOL, Some(r.tool), "tool"),
            ];
            for (kind, target, what) in candidates.iter() {
                if let Some(target) = target {
                    if let Some(block) = self.find(*kind, target, now_ms) {
                        return Decision::Mitigation(block, what);
                    }
                }
            }
        }
        match (self.ranks.get(r.caller_zone), self.ranks.get(r.tool_zone)) {
            (None, _) => Decision::Zone("unknown_caller_zone"),
            (_, None) => Decision::Zone("unknown_tool_zone"),
            (Some(caller), Some(tool)) if tool > caller => Decision::Zone("below_tool_zone"),
            _ => Decision::Allowed,
        }
    }

    pub fn evaluate_batch(&self, batch: &Value) -> Result<String, String> {
        let now_ms = batch.req_num("now_ms")?;
        let requests = batch.req_arr("requests")?;
        let mut out = String::with_capacity(24 + requests.len() * 96);
        out.push_str("{\"decisions\":[");
        for (i, item) in requests.iter().enumerate() {
            let request = Request {
                origin: item.req_str("origin").map_err(|e| at(i, e))?,
                entry_origin: item.opt_str("entry_origin").map_err(|e| at(i, e))?,
                client_addr: item.opt_str("client_addr").map_err(|e| at(i, e))?,
                entry_node: item.opt_str("entry_node").map_err(|e| at(i, e))?,
                tool: item.req_str("tool").map_err(|e| at(i, e))?,
                caller_zone: item.req_str("caller_zone").map_err(|e| at(i, e))?,
                tool_zone: item.req_str("tool_zone").map_err(|e| at(i, e))?,
            };
            if i > 0 {
                out.push(',');
            }
            write_decision(&mut out, &self.decide(&request, now_ms));
        }
        out.push_str("]}");
        Ok(out)
    }
}

fn at(i: usize, e: String) -> String {
    format!("requests[{}]: {}", i, e)
}

fn write_decision(out: &mut String, d: &Decision) {
    let (allowed, by, policy, key, expires, reason) = match d {
        Decision::Allowed => (true, None, None, None, None, None),
        Decision::Mitigation(b, what) => (
            false,
            Some("mitigation"),
            Some(b.policy.as_str()),
            Some(b.key.as_str()),
            Some(b.expires_at_ms),
            Some(*what),
        ),
        Decision::Zone(reason) => (false, Some("zone"), None, None, None, Some(*reason)),
    };
    out.push_str(if allowed { "{\"allowed\":true,\"by\":" } else { "{\"allowed\":false,\"by\":" });
    json::write_opt_str(out, by);
    out.push_str(",\"policy\":");
    json::write_opt_str(out, policy);
    out.push_str(",\"key\":");
    json::write_opt_str(out, key);
    out.push_str(",\"expires_at_ms\":");
    match expires {
        Some(n) => json::write_num(out, n),
        None => out.push_str("null"),
    }
    out.push_str(",\"reason\":");
    json::write_opt_str(out, reason);
    out.push('}');
}

/// The address an `addr:` origin names (an IPv4-mapped IPv6 one as IPv4; a `%zone` dropped).
fn address(origin: &str) -> Option<IpAddr> {
    let text = origin.strip_prefix("addr:")?;
    let text = text.split('%').next().unwrap_or("");
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => match v6.segments() {
            [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(IpAddr::V4(Ipv4Addr::new(
                (hi >> 8) as u8,
                hi as u8,
                (lo >> 8) as u8,
                lo as u8,
            ))),
            _ => Some(IpAddr::V6(v6)),
        },
        v4 => Some(v4),
    }
}

/// One spelling per origin: an address written compressed, lower case (RFC 5952, as
/// Python's `ipaddress` writes it).
pub fn canonical_origin(origin: &str) -> String {
    match address(origin) {
        None => origin.to_string(),
        Some(IpAddr::V4(v4)) => format!("addr:{}", v4),
        Some(IpAddr::V6(v6)) => format!("addr:{}", compressed(&v6)),
    }
}

fn compressed(v6: &Ipv6Addr) -> String {
    let seg = v6.segments();
    // The longest run of zero hextets (the first among equals), if longer than one.
    let (mut best_start, mut best_len) = (0usize, 0usize);
    let mut i = 0;
    while i < 8 {
        if seg[i] == 0 {
            let start = i;
            while i < 8 && seg[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                best_start = start;
                best_len = i - start;
            }
        } else {
            i += 1;
        }
    }
    let hex = |s: &[u16]| s.iter().map(|h| format!("{:x}", h)).collect::<Vec<_>>().join(":");
    if best_len > 1 {
        format!("{}::{}", hex(&seg[..best_start]), hex(&seg[best_start + best_len..]))
    } else {
        hex(&seg)
    }
}

/// `http:loopback`, `stdio`, a loopback `addr:`: a different caller on every node.
fn is_node_local(origin: &str) -> bool {
    if origin == "http:loopback" || origin == "stdio" {
        return true;
    }
    match address(origin) {
        Some(IpAddr::V4(v4)) => v4.is_loopback(),
        Some(IpAddr::V6(v6)) => v6.is_loopback(),
        None => false,
    }
}
