"""A real Prometheus server (Debian's `prometheus` package) for integration tests.

Started on a free loopback port with its own config and TSDB under the test's tmp dir,
never the packaged systemd service; its log goes to `<dir>/prometheus.log`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.polling import wait_for
from tests.skips import skip_or_fail

BINARY = "prometheus"
START_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_prometheus() -> str:
    """The path of the prometheus binary, or skip/fail naming the package."""
    path = shutil.which(BINARY) or shutil.which(BINARY, path="/usr/bin")
    if path is None:
        skip_or_fail("prometheus is not installed (apt-get install prometheus)")
    return path


class PrometheusServer:
    def __init__(self, directory: Path, targets: list[str], *, scrape_interval_s: int = 2):
        self.directory = directory
        self.targets = targets
        self.scrape_interval_s = scrape_interval_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "prometheus.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write_config(self) -> Path:
        config = self.directory / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write it.
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": f"{self.scrape_interval_s}s",
                        "scrape_timeout": f"{self.scrape_interval_s}s",
                    },
                    "scrape_configs": [
                        {"job_name": "vsmcp", "static_configs": [{"targets": self.targets}]}
                    ],
                }
            )
        )
        return config

    def start(self) -> PrometheusServer:
        binary = require_prometheus()
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self.port = _free_port()
        command = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(
            self._ready, timeout_s=START_TIMEOUT_S, what=f"prometheus ready\n{self.log_text()}"
        )
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}\n{self.log_text()}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=HTTP_TIMEOUT_S) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of `promql` through the HTTP API: [{metric, value}]."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
