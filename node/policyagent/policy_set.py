"""The signed policy set a node serves (`GET /api/policy-agent/policies`).

`{"set": "<JSON text>", "signature": "<base64 Ed25519 of the text's UTF-8 bytes>",
"node": "<node id>"}`: the text is what the agent loads as is (`{"format": 1, "node",
"public_key", "issued_at_ms", "valid_until_ms", "zones", "blocks": [{"key", "policy", "issuer",
"target_kind", "target", "issued_at_ms", "expires_at_ms"}]}`), the mitigations this node
enforces (after its own checks: signatures, issuers, quorums, protected targets), so
whoever holds it decides as the node would. The node's id is its public key, so
`verify_policy_set` needs nothing but the document (and the node id expected, if any).
A set is good for `POLICY_SET_VALID_MS` after it was issued (`valid_until_ms`): a block
lifted since must not stay enforced by whoever keeps an old signed set; the route
answers `Cache-Control: no-store`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from vsmcp.mesh.identity import node_id_from_public_key, verify_detached
from vsmcp.node.policyagent.errors import BadPolicySet
from vsmcp.node.vsm.immune.blocklist import Block

FORMAT: Final = 1
MAX_SET_BYTES: Final = 4 * 1024 * 1024
POLICY_SET_VALID_MS: Final = 5 * 60 * 1000
# A set issued this far in the verifier's future is still taken (clocks differ).
CLOCK_SKEW_MS: Final = 60 * 1000


def policy_set(
    blocks: Iterable[Block], zones: Sequence[str], public_key: bytes, now_ms: int
) -> dict[str, Any]:
    """The set of live mitigations in `blocks` (what a node's gate enforces now)."""
    return {
        "format": FORMAT,
        "node": node_id_from_public_key(public_key),
        "public_key": public_key.hex(),
        "issued_at_ms": now_ms,
        "valid_until_ms": now_ms + POLICY_SET_VALID_MS,
        "zones": list(zones),
        "blocks": [
            {
                "key": b.key,
                "policy": b.policy_id,
                "issuer": b.issuer,
                "target_kind": b.target_kind,
                "target": b.target,
                "issued_at_ms": b.issued_at_ms,
                "expires_at_ms": b.expires_at_ms,
            }
            for b in blocks
            if b.expires_at_ms > now_ms
        ],
    }


def sign_policy_set(doc: Mapping[str, Any], sign: Callable[[bytes], bytes]) -> dict[str, Any]:
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    return {
        "set": text,
        "signature": base64.b64encode(sign(text.encode())).decode("ascii"),
        "node": doc["node"],
    }


def verify_policy_set(
    signed: Mapping[str, Any], node_id: str | None = None, *, now_ms: int | None = None
) -> dict[str, Any]:
    """The set in `signed` once its signature verifies by the key it names (and that key
    is `node_id`'s, when given) and, when `now_ms` is given, it is valid then (issued,
    not past `valid_until_ms`); `BadPolicySet` otherwise."""
    text, signature = signed.get("set"), signed.get("signature")
    if not isinstance(text, str) or not isinstance(signature, str):
        raise BadPolicySet("a signed policy set has 'set' and 'signature' strings")
    if len(text) > MAX_SET_BYTES:
        raise BadPolicySet(f"the policy set is over {MAX_SET_BYTES} bytes")
    try:
        doc = json.loads(text)
        public_key = bytes.fromhex(doc["public_key"])
        raw_signature = base64.b64decode(signature, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise BadPolicySet(f"the policy set does not decode: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BadPolicySet(f"not a policy set of format {FORMAT}")
    if not verify_detached(public_key, text.encode(), raw_signature):
        raise BadPolicySet("the policy set's signature does not verify")
    try:
        signer = node_id_from_public_key(public_key)
    except ValueError as e:
        raise BadPolicySet(str(e)) from None
    if signer != doc.get("node") or (node_id is not None and signer != node_id):
        raise BadPolicySet(f"the policy set is signed by {signer}, not by the node expected")
    if now_ms is not None:
        _check_valid(doc, now_ms)
    return doc


def _check_valid(doc: Mapping[str, Any], now_ms: int) -> None:
    issued, until = doc.get("issued_at_ms"), doc.get("valid_until_ms")
    if not isinstance(issued, int) or not isinstance(until, int):
        raise BadPolicySet("the policy set has no 'issued_at_ms' and 'valid_until_ms'")
    if until - issued > POLICY_SET_VALID_MS:
        raise BadPolicySet(f"the policy set claims validity over {POLICY_SET_VALID_MS} ms")
    if now_ms >= until:
        raise BadPolicySet(f"the policy set expired at {until} (now {now_ms}): fetch a new one")
    if issued > now_ms + CLOCK_SKEW_MS:
        raise BadPolicySet(f"the policy set is issued at {issued}, in the future (now {now_ms})")
