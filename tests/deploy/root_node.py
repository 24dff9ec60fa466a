"""vsmcpd started from a throwaway root the way its installed unit would start it."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from tests.deploy.rootfs import in_root
from tests.integration.harness import NodeProcess

UNIT_PATH = "etc/systemd/system/vsmcpd.service"


def read_unit(path: Path) -> configparser.SectionProxy:
    """The [Service] section of a unit file (repeated keys: the last one, as ours has none)."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(path)
    return unit["Service"]


class RootNode(NodeProcess):
    """The unit's ExecStart= as its User=, with its Environment=, chrooted into `root`.

    No systemd runs in the root, so this stands in for it: same command line, same user,
    same environment (nothing else), the host's network.
    """

    def __init__(self, root: Path, log_dir: Path) -> None:
        self.root = root
        self.service = read_unit(root / UNIT_PATH)
        self.unit_env = dict(
            item.split("=", 1) for item in shlex.split(self.service.get("Environment", ""))
        )
        data_dir = self.unit_env.get("VSMCP_NODE_DATA_DIR", "/var/lib/vsmcp")
        self.log_dir = log_dir
        super().__init__(root / data_dir.lstrip("/"), dev=False)

    @property
    def user(self) -> str:
        return self.service["User"]

    def command(self) -> list[str]:
        env = {**self.unit_env, "PYTHONUNBUFFERED": "1"}
        argv = shlex.split(self.service["ExecStart"])
        return in_root(self.root, argv, user=self.user, env=env)

    @property
    def log_path(self) -> Path:
        return self.log_dir / "vsmcpd-in-root.log"
