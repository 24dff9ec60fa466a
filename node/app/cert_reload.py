"""A running node takes a renewed certificate from its certificate file, without a restart.

A child VSM's certificate is short-lived: its parent writes a fresh one into the child's
data dir while it runs (`node/children/manager.py`). Any node outside dev mode watches
its certificate file (`trust.certificate_file`, else `<data_dir>/node.cert`) once a
second; when it changes, the new certificate is checked (`trust.renewed_identity`: same
authority, key, zone, depth and roles; a child's from the same parent) and, if good,
becomes the node's: its status, the HELLOs it sends from then on (each admitted peer
gets one at once) and the certificates it delegates to its own children. A certificate
that fails is refused with a clear log line; the node keeps the one it has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from vsmcp.mesh.certs import certificate_from_pem
from vsmcp.mesh.errors import CertificateError
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.app.trust import NodeIdentity, TrustError, renewed_identity
from vsmcp.node.vsm.loop_service import LoopService

log = logging.getLogger(__name__)

LOOP_NAME: Final = "cert-reload"
CHECK_INTERVAL_S: Final = 1.0
MAX_CERT_FILE_BYTES: Final = 64 * 1024


class CertificateReloader(LoopService):
    """Watches one certificate file; hands each good renewal to `on_renewed`."""

    loop_name = LOOP_NAME

    def __init__(
        self,
        loops: LoopSupervisor,
        path: Path,
        identity: Callable[[], NodeIdentity],
        on_renewed: Callable[[NodeIdentity], None],
    ) -> None:
        super().__init__(loops)
        self._path = path
        self._identity = identity
        self._on_renewed = on_renewed
        self._seen = self._stamp()
        self.renewed = 0
        self.refused = 0
        self.last_error: str | None = None

    def _stamp(self) -> tuple[int, ...] | None:
        """What tells a changed file: a rename over it (a new inode, a new ctime) shows
        even when the new one has the old one's size and mtime (a copy preserving it, a
        coarse clock)."""
        try:
            st = self._path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            self.check()

    def check(self) -> bool:
        """Take the file's certificate if it changed and is good; True if taken."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        try:
            identity = self._read()
        except TrustError as e:
            self.refused += 1
            self.last_error = str(e)
            log.error("certificate %s not taken: %s", self._path, e)
            return False
        self.renewed += 1
        self.last_error = None
        log.info(
            "took the renewed certificate %s (expires at %d)",
            self._path,
            identity.certificate.expires_at_s,
        )
        self._on_renewed(identity)
        return True

    def _read(self) -> NodeIdentity:
        try:
            with self._path.open("rb") as f:
                text = f.read(MAX_CERT_FILE_BYTES + 1).decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TrustError(f"cannot read the renewed certificate: {e}") from e
        if len(text) > MAX_CERT_FILE_BYTES:
            raise TrustError(f"renewed certificate larger than {MAX_CERT_FILE_BYTES} bytes")
        try:
            signed = certificate_from_pem(text)
        except CertificateError as e:
            raise TrustError(f"renewed certificate unreadable: {e}") from e
        return renewed_identity(self._identity(), signed)

    def view(self) -> dict[str, Any]:
        return {"renewed": self.renewed, "refused": self.refused, "last_error": self.last_error}
