"""`[vsm.gray]`: gray failures caught by callers (docs/regulation.md, "Gray failures").
Validated by the node's config loader, which names the key of a bad value."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vsmcp.node.tools.config import PositiveFloat, PositiveInt, doc


class GrayConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: Annotated[
        bool, doc("observe calls to each provider and route around degraded ones")
    ] = True
    objective_s: Annotated[
        PositiveFloat,
        doc(
            "latency objective of a remote call: a call still running past it (since it "
            "was sent or its last progress), or ended by a timeout or failure, counts as "
            "bad; a success within it does not, however slow. Long-running tools need "
            "their own (objectives)"
        ),
    ] = 10.0
    objectives: Annotated[
        dict[str, PositiveFloat], doc("objective_s per tool name, overriding objective_s")
    ] = msgspec.field(default_factory=dict)
    window_s: Annotated[PositiveFloat, doc("window of the outcomes a verdict looks at, s")] = 10.0
    min_bad: Annotated[
        PositiveInt,
        doc(
            "bad calls in a row to one provider's tool that degrade it (or this many "
            "within window_s, when they are bad_ratio of its calls)"
        ),
    ] = 2
    bad_ratio: Annotated[
        Annotated[float, msgspec.Meta(gt=0, le=1)],
        doc("share of bad calls within window_s that degrades it (with min_bad)"),
    ] = 0.5
    probe_interval_s: Annotated[
        PositiveFloat, doc("how often a degraded provider's tool is probed (vsm.probe)")
    ] = 1.0
    recover_probes: Annotated[
        PositiveInt, doc("consecutive good probes that bring a degraded provider back")
    ] = 2
    hold_s: Annotated[
        PositiveFloat,
        doc(
            "a degraded tool whose provider declares no probe gets real traffic again "
            "after this long (and is degraded again if it still fails)"
        ),
    ] = 30.0
    observation_ttl_s: Annotated[
        PositiveFloat,
        doc("how long a signed observation counts toward the mesh-wide quorum, s"),
    ] = 30.0
    max_observations: Annotated[
        PositiveInt, doc("signed observations this node holds published at once")
    ] = 32
    max_observations_per_minute: Annotated[
        PositiveInt, doc("signed observations this node may publish per minute")
    ] = 20
