"""Hypothesis strategies of policy sets and requests for the policy agent's tests:
targets drawn from small pools (so blocks and requests meet), addresses in every spelling
the node canonicalizes, expiries close together (ties and expired blocks)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

ZONE_NAMES = ("public", "ops", "restricted", "lab", "ζώνη")
NODES = ("12D3KooWnodeA", "12D3KooWnodeB", "n3")
TOOLS = ("echo", "sum", "wasm.echo", "ops.restart")
NAMED_ORIGINS = ("http:alice", "http:bob", "http:loopback", "stdio", "mesh:12D3KooWnodeA")
NOW_MS = 1_800_000_000_000

# Text that JSON carries both ways (no lone surrogates: Rust strings cannot hold them).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def address(draw: st.DrawFn) -> str:
    """An IP address as a client or a rule may write it."""
    ip = draw(st.ip_addresses())
    spelling = draw(st.sampled_from(("compressed", "exploded", "upper", "mapped", "scoped")))
    if spelling == "exploded":
        return str(ip.exploded)
    if spelling == "upper":
        return str(ip).upper()
    if spelling == "mapped" and ip.version == 4:
        return f"::ffff:{ip}"
    if spelling == "scoped" and ip.version == 6:
        return f"{ip}%eth0"
    return str(ip)


addresses = st.one_of(
    address(),
    st.sampled_from(("127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.9", "::ffff:10.0.0.9")),
)
origins = st.one_of(st.sampled_from(NAMED_ORIGINS), addresses.map("addr:{}".format), text)
nodes = st.one_of(st.sampled_from(NODES), text)
tools = st.one_of(st.sampled_from(TOOLS), text)
expiries = st.integers(NOW_MS - 1, NOW_MS + 2)


@st.composite
def blocks(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(("origin", "node", "tool")))
    pool = {"origin": origins, "node": nodes, "tool": tools}[kind]
    # Mostly a few targets, so that several blocks of one target compete.
    target = draw(st.one_of(st.sampled_from(("http:alice", "n3", "echo")), pool))
    policy = f"{kind}:{target}"
    issuer = draw(st.sampled_from(NODES))
    return {
        "key": f"{issuer}/{policy}/{draw(st.integers(0, 3))}",
        "policy": policy,
        "issuer": issuer,
        "target_kind": kind,
        "target": target,
        "issued_at_ms": NOW_MS - 1000,
        "expires_at_ms": draw(expiries),
    }


@st.composite
def policy_sets(draw: st.DrawFn) -> dict[str, Any]:
    zones = draw(st.lists(st.sampled_from(ZONE_NAMES), min_size=1, max_size=4, unique=True))
    return {"format": 1, "zones": zones, "blocks": draw(st.lists(blocks(), max_size=16))}


def optional(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.just(""), strategy)


zones = st.sampled_from((*ZONE_NAMES, "unknown"))


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    request: dict[str, Any] = {
        "origin": draw(origins),
        "tool": draw(tools),
        "caller_zone": draw(zones),
        "tool_zone": draw(zones),
    }
    for key, values in (
        ("entry_origin", origins),
        ("client_addr", addresses),
        ("entry_node", nodes),
    ):
        value = draw(optional(values))
        if value is not None or draw(st.booleans()):
            request[key] = value  # absent and null alike
    return request
