"""`[vsm.immune]`: the immune system's switches and thresholds (validated by the node's
config loader, which names the key of a bad value)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vsmcp.node.tools.config import doc


class ImmuneConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: Annotated[
        bool,
        doc(
            "run the built-in immune patterns and issue mitigation policies; off: policies "
            "from other nodes are still enforced"
        ),
    ] = True
    block_ttl_s: Annotated[float, doc("how long a block of an origin or a node lasts, s")] = 600.0
    quarantine_ttl_s: Annotated[
        float, doc("how long a tool stays quarantined where it is served, s")
    ] = 120.0
    max_blocks_per_minute: Annotated[
        int, doc("mitigation policies this node may issue per minute; more are refused, counted")
    ] = 10
    observation_ttl_s: Annotated[
        float, doc("how long an observation of a misbehaving peer counts toward a quorum, s")
    ] = 60.0
    denial_count: Annotated[
        int, doc("zone denials of one origin within denial_window_s that block it")
    ] = 10
    denial_window_s: Annotated[float, doc("window of denial_count, s")] = 10.0
    storm_count: Annotated[
        int,
        doc(
            "unknown-tool calls, or calls with invalid arguments, of one origin within "
            "storm_window_s that block it"
        ),
    ] = 20
    storm_window_s: Annotated[float, doc("window of storm_count, s")] = 10.0
    bad_envelope_count: Annotated[
        int,
        doc(
            "envelopes with a bad signature, replayed, malformed or from a mismatched sender "
            "from one peer within bad_envelope_window_s that make this node observe it"
        ),
    ] = 5
    bad_envelope_window_s: Annotated[float, doc("window of bad_envelope_count, s")] = 10.0
    tool_error_count: Annotated[
        int,
        doc("failed calls of one tool served here within tool_error_window_s that quarantine it"),
    ] = 50
    tool_error_window_s: Annotated[float, doc("window of tool_error_count, s")] = 10.0
