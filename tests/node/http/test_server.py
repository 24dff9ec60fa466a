"""node.http.server: answers of a node whose HTTP server is up before the rest of it.

The node starts HTTP before the mesh (the mesh advertises the bound port) and so before
its immune system: for that while (≈1.2 s with mDNS, the probe), `GET /api/policies`
has nothing to show. It must say so (503, retry), not fail with a 500.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from vsmcp.node.app.config import load_config
from vsmcp.node.app.node import Node
from vsmcp.node.http.server import HttpServer


async def test_policies_before_the_immune_system_is_up_is_a_503_to_retry(tmp_path: Path) -> None:
    config = load_config(environ={}, overrides={"node.data_dir": str(tmp_path), "node.dev": True})
    server = HttpServer(Node(config), "127.0.0.1", 0)  # the node itself not started
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{server.port}/api/policies") as response,
        ):
            body = json.loads(await response.text())
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert "not started" in body["error"]
    finally:
        await server.stop()
