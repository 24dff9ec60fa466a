"""System 5's response rules (`[[vsm.responses]]`): which signal gets which response.

A rule matches a signal that reached System 5 (above `vsm.algedonic_threshold`) when the
signal's intensity is at least `when`, its valence matches and its source matches the
`source` glob. `do` says what happens:

- `tighten_limit`: scale the node's rate limits and units' concurrency by `factor` for
  `duration_s`, then restore them;
- `shed`: refuse calls of priority class `priority` or lower at the entry for `duration_s`;
- `quarantine_unit`: quarantine the S1 unit `target` (default: the signal's source) for
  `duration_s` through the supervisor;
- `block_origin`: ask the immune system (the node's `Mitigator`) to block the origin
  `target` (default: the signal's source) for `duration_s`;
- `alert`: log at WARNING and publish an event (the MQTT bridge sends it to `vsmcp/alerts`,
  the Telegram bridge or `vsm.alert_telegram_chat` to a chat).

Keys that do nothing for a rule's `do` are refused, so every accepted key has an effect.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec

from vsmcp.node.errors import ConfigError
from vsmcp.node.vsm.algedonic import Signal
from vsmcp.node.vsm.priority import PRIORITY_CLASSES

ResponseAction = Literal["tighten_limit", "shed", "quarantine_unit", "block_origin", "alert"]
RESPONSE_ACTIONS: tuple[str, ...] = (
    "tighten_limit",
    "shed",
    "quarantine_unit",
    "block_origin",
    "alert",
)
DEFAULT_FACTOR = 0.5
DEFAULT_DURATION_S = 60.0
DEFAULT_SHED_PRIORITY = "low"
MAX_DURATION_S = 86_400.0
MAX_RULES = 100

# Which optional keys each response uses (any other optional key set is refused).
_USES: dict[str, frozenset[str]] = {
    "tighten_limit": frozenset({"factor", "duration_s"}),
    "shed": frozenset({"priority", "duration_s"}),
    "quarantine_unit": frozenset({"target", "duration_s"}),
    "block_origin": frozenset({"target", "duration_s"}),
    "alert": frozenset(),
}
_OPTIONAL = ("factor", "priority", "target", "duration_s")


def _doc(description: str) -> msgspec.Meta:
    return msgspec.Meta(description=description)


class ResponseRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One rule of System 5 (see the module doc)."""

    name: Annotated[str, _doc("unique name of the rule (events, audit, /api/vsm)")]
    do: Annotated[
        ResponseAction,
        _doc("what the rule does (docs/vsm.md)"),
    ]
    when: Annotated[
        float,
        _doc(
            "least intensity in [0, 1] of a signal the rule answers (rules only see "
            "signals above vsm.algedonic_threshold)"
        ),
    ] = 0.0
    valence: Annotated[
        Literal["pain", "pleasure", "any"], _doc("valence the rule answers: pain, pleasure, any")
    ] = "pain"
    source: Annotated[str, _doc("glob the signal's source must match (pattern:*, http:ops, *)")] = (
        "*"
    )
    duration_s: Annotated[
        float | None,
        _doc("how long the response lasts, in seconds; unset: 60 (not for alert)"),
    ] = None
    factor: Annotated[
        float | None,
        _doc("tighten_limit: scale of the rate limits and concurrency, in (0, 1]; unset: 0.5"),
    ] = None
    priority: Annotated[
        str | None,
        _doc("shed: refuse calls of this priority class or lower (low, normal, high); unset: low"),
    ] = None
    target: Annotated[
        str | None,
        _doc(
            "quarantine_unit: the unit; block_origin: the origin (http:<token>, addr:<ip>); "
            "unset: the signal's source"
        ),
    ] = None

    def matches(self, signal: Signal) -> bool:
        return (
            signal.intensity >= self.when
            and self.valence in ("any", signal.valence)
            and fnmatch.fnmatchcase(signal.source, self.source)
        )

    @property
    def seconds(self) -> float:
        return DEFAULT_DURATION_S if self.duration_s is None else self.duration_s

    @property
    def scale(self) -> float:
        return DEFAULT_FACTOR if self.factor is None else self.factor

    @property
    def shed_priority(self) -> str:
        return DEFAULT_SHED_PRIORITY if self.priority is None else self.priority


def default_rules() -> list[ResponseRule]:
    """Strong pain tightens the node's limits to half for a minute."""
    return [ResponseRule(name="pain-tighten", do="tighten_limit", factor=0.5, duration_s=60.0)]


def validate_rules(rules: Sequence[ResponseRule], key: str = "vsm.responses") -> None:
    """Raise `ConfigError` naming `vsm.responses[i].<field>` for the first bad value."""
    if len(rules) > MAX_RULES:
        raise ConfigError(key, f"at most {MAX_RULES} rules")
    names: dict[str, int] = {}
    for i, rule in enumerate(rules):
        at = f"{key}[{i}]"
        if not rule.name.strip() or len(rule.name) > 64:
            raise ConfigError(f"{at}.name", "1 to 64 characters")
        if rule.name in names:
            raise ConfigError(f"{at}.name", f"'{rule.name}' is also {key}[{names[rule.name]}]")
        names[rule.name] = i
        if not (math.isfinite(rule.when) and 0.0 <= rule.when <= 1.0):
            raise ConfigError(f"{at}.when", f"{rule.when} is not in [0, 1]")
        uses = _USES[rule.do]
        for field in _OPTIONAL:
            if getattr(rule, field) is not None and field not in uses:
                raise ConfigError(f"{at}.{field}", f"does nothing for do = {rule.do}")
        _check_values(rule, at)


def _check_values(rule: ResponseRule, at: str) -> None:
    if rule.duration_s is not None and not 0 < rule.duration_s <= MAX_DURATION_S:
        raise ConfigError(f"{at}.duration_s", f"{rule.duration_s} is not in (0, {MAX_DURATION_S}]")
    if rule.factor is not None and not 0 < rule.factor <= 1:
        raise ConfigError(f"{at}.factor", f"{rule.factor} is not in (0, 1]")
    if rule.priority is not None and rule.priority not in PRIORITY_CLASSES[:-1]:
        raise ConfigError(
            f"{at}.priority", "must be low, normal or high (critical calls are never shed)"
        )
    if rule.target is not None and not rule.target.strip():
        raise ConfigError(f"{at}.target", "must not be empty (leave it unset for the source)")
