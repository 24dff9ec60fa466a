"""`[vsm.audits]`: System 3*'s sporadic audits (docs/regulation.md, "S3* audits").
Validated by the node's config loader, which names the key of a bad value."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vsmcp.node.tools.config import PositiveFloat, PositiveInt, doc


class AuditsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: Annotated[bool, doc("probe units at random times; off: vsm.probe still answers")] = (
        True
    )
    min_interval_s: Annotated[PositiveFloat, doc("shortest time between two audit rounds")] = 20.0
    max_interval_s: Annotated[
        PositiveFloat, doc("longest time between two audit rounds (uniformly random between)")
    ] = 60.0
    timeout_s: Annotated[PositiveFloat, doc("a probe running longer than this failed")] = 5.0
    failures_to_quarantine: Annotated[
        PositiveInt,
        doc("consecutive failed audits of a tool that quarantine its unit (one may be bad luck)"),
    ] = 2
    quarantine_s: Annotated[
        PositiveFloat, doc("how long a unit whose probes failed stays quarantined")
    ] = 60.0
    pain_intensity: Annotated[
        Annotated[float, msgspec.Meta(ge=0, le=1)],
        doc("intensity of the pain a failed audit raises on the algedonic channel"),
    ] = 0.5
    peer_sample: Annotated[
        Annotated[int, msgspec.Meta(ge=0)],
        doc("peers' tools probed (through their vsm.probe) per audit round"),
    ] = 1
    max_probes_per_minute: Annotated[
        PositiveInt,
        doc("vsm.probe calls this node answers per minute; more are refused (rate_limited)"),
    ] = 120
