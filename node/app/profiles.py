"""Node profiles: `[node] profile` (or `vsmcpd --profile`) picks defaults for a kind of host.

- `default`: the full node.
- `edge`: small hosts. WASM tools only: Python plugins, entry-point plugins and mounted
  servers are refused (exit 2 naming the key: they would run the host's own code, which
  an edge host does not vouch for), and smaller buffers and pools. The defaults below
  apply under whatever the file, the environment and the flags set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from vsmcp.node.errors import ConfigError

if TYPE_CHECKING:
    from vsmcp.node.app.config import Config

PROFILES: Final = ("default", "edge")

EDGE_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "tools": {"entry_points": False, "max_concurrency": 4, "max_queue": 16},
    "http": {"max_connections": 64, "max_connections_per_client": 32},
    "envelope": {"replay_max_senders": 1024},
    "audit": {"batch_size": 256, "queue_size": 4096},
    "vsm": {"event_buffer": 4096},
    "mcp": {"max_sessions": 32, "max_sessions_per_caller": 8, "max_listeners": 8},
    "limits": {"max_buckets": 1000},
    "edge": {"threads": 1},
}


def apply_profile_defaults(raw: dict[str, Any]) -> None:
    """Fill in the profile's defaults where `raw` (file < env < flags) sets nothing."""
    node = raw.get("node")
    profile = node.get("profile") if isinstance(node, dict) else None
    if profile != "edge":
        return
    for section, defaults in EDGE_DEFAULTS.items():
        table = raw.setdefault(section, {})
        if isinstance(table, dict):  # not a table: the conversion names the key
            for key, value in defaults.items():
                table.setdefault(key, value)


def check_profile(config: Config) -> None:
    profile = config.node.profile
    if profile not in PROFILES:
        raise ConfigError("node.profile", f"must be one of {', '.join(PROFILES)}")
    if profile != "edge":
        return
    tools = config.tools
    refused = [
        ("tools.plugins", bool(tools.plugins), "Python plugins"),
        ("tools.entry_points", tools.entry_points, "entry-point plugins"),
        ("tools.mounts", bool(tools.mounts), "mounted MCP servers"),
    ]
    for key, present, what in refused:
        if present:
            raise ConfigError(
                key, f"the edge profile (node.profile) runs WASM tools only, not {what}"
            )
