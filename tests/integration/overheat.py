"""The Show's edge pattern, "temp > 90 and cpu > 80 on the same device within 10 s", as
a pattern file's list (two sequences, one per order, grouped by device), for the MQTT
bridge's tests and benchmark."""

from __future__ import annotations

from typing import Any

HOT = {
    "all": [
        {"field": "metric", "op": "eq", "value": "temp"},
        {"field": "value", "op": "gt", "value": 90},
    ]
}
BUSY = {
    "all": [
        {"field": "metric", "op": "eq", "value": "cpu"},
        {"field": "value", "op": "gt", "value": 80},
    ]
}


def overheat_patterns(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`hot-then-busy` and `busy-then-hot`, each with `actions`."""

    def sequence(name: str, first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "telemetry",
            "where": first,
            "group_by": "device",
            "then": {"kind": "telemetry", "where": then, "within_s": 10},
            "actions": actions,
        }

    return [sequence("hot-then-busy", HOT, BUSY), sequence("busy-then-hot", BUSY, HOT)]
