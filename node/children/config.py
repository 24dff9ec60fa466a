"""Config of child VSMs: `[[children]]` (started with the node) and `[recursion]` (the
System 5 guard on how deep and wide the tree of children may grow).

The limits are a table of their own, not `[children]`: TOML cannot have both a table
and an array of tables named `children`.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

import msgspec

from vsmcp.mesh.certs import DEFAULT_MAX_DEPTH
from vsmcp.node.tools.config import doc

CHILD_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
# What a parent tells its child (its pid: the child's parent watch) and where a child's
# pid is written (the stale-children sweep at start). Here, not in children/process: the
# node reads them at start, and only a node that spawns a child needs the process code.
PARENT_PID_ENV: Final = "VSMCP_PARENT_PID"
PID_FILE_NAME: Final = "child.pid"
# A delegated certificate deeper than this is refused by every verifier (mesh/certs.py).
MAX_DEPTH_LIMIT: Final = DEFAULT_MAX_DEPTH


class ChildEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[
        str, doc("the child's name: its data dir is <data_dir>/children/<name> (letters, digits)")
    ]
    config: Annotated[str, doc('the child\'s own TOML config; "": defaults')] = ""
    zone: Annotated[str, doc('the zone of its delegated certificate; "": this node\'s zone')] = ""


class RecursionSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_depth: Annotated[
        int,
        doc(
            "deepest child VSM allowed in the tree (this node's certificate depth + 1 must "
            f"not pass it; at most {MAX_DEPTH_LIMIT}); children inherit it"
        ),
    ] = 2
    max_children: Annotated[int, doc("child VSMs this node runs at once")] = 4
    max_descendants: Annotated[
        int,
        doc(
            "children, grandchildren... below this node in all; each child inherits an "
            "equal share of what is left"
        ),
    ] = 16
    spawn_zone: Annotated[
        str,
        doc(
            "zone a caller needs to spawn or stop children (vsm.spawn_child, POST "
            "/api/children); the data dir's owner (vsmcp spawn --data-dir) always may"
        ),
    ] = "restricted"
    child_certificate_s: Annotated[
        int,
        doc(
            "lifetime of the delegated certificate this node issues a child, in seconds "
            "(within its own); renewed at half of it while the child runs; children inherit it"
        ),
    ] = 24 * 3600
