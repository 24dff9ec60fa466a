"""Throwaway Debian roots for deployment tests: built once with debootstrap, copied per test.

A root is a bookworm `minbase` with python3, python3-venv, systemd (for `systemctl enable`
offline) and cloud-init, plus ansible-core in /opt/ansible. Building takes about two
minutes, so the finished root is cached under a path keyed by `ROOTFS_VERSION` (bump it
when what goes into the root changes) and reused while it is complete.

Commands run in a root through `unshare --mount` + `chroot`: /proc and /dev are mounted in
a private mount namespace that vanishes with the command, so nothing is left mounted. The
network is the host's: a node started in the root answers on the host's loopback.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import REPO_ROOT
from tests.skips import skip_or_fail

ROOTFS_VERSION = "1"
SUITE = "bookworm"
# python3-cffi-backend: debootstrap does not resolve the virtual packages cryptography
# (a cloud-init dependency) needs from it.
ROOT_PACKAGES = ("python3", "python3-venv", "systemd", "cloud-init", "python3-cffi-backend")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE_DIR = Path(os.environ.get("VSMCP_TEST_CACHE", "/var/cache/vsmcp-tests"))
COMPLETE_MARKER = ".vsmcp-rootfs-complete"
# Where the root's own ansible-playbook lives (the control node is the root itself).
ROOT_ANSIBLE = "/opt/ansible"
DEPLOY_REQUIREMENTS = REPO_ROOT / "requirements-deploy.txt"
BUILD_TIMEOUT_S = 1200


def require_root_tools() -> None:
    """Skip/fail unless this process can build and enter a throwaway root."""
    if sys.platform != "linux" or os.geteuid() != 0:
        skip_or_fail("a throwaway root needs Linux and root (debootstrap, chroot, mounts)")
    for tool in ("debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} is not installed (apt-get install debootstrap)")


def debian_mirror() -> str:
    """The Debian mirror apt is configured with here (deb822 or one-line sources)."""
    override = os.environ.get("VSMCP_DEBIAN_MIRROR")
    if override:
        return override
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for path in sources:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = match.group(1)
            if uri.rstrip("/").endswith("/debian"):  # not -security, not third-party repos
                return uri
    return DEFAULT_MIRROR


def requirement(name: str) -> str:
    """The pinned requirement for `name` in requirements-deploy.txt (one source of versions)."""
    for line in DEPLOY_REQUIREMENTS.read_text().splitlines():
        spec = line.split("#")[0].strip()
        if re.match(rf"{re.escape(name)}\b", spec):
            return spec
    raise AssertionError(f"{name} is not in {DEPLOY_REQUIREMENTS}")


def run(argv: list[str], *, timeout_s: float = BUILD_TIMEOUT_S) -> str:
    """Run a command, failing with its output when it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-4000:]}"
        )
    return proc.stdout


ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def in_root(
    root: Path,
    argv: list[str],
    *,
    user: str | None = None,
    env: dict[str, str] | None = None,
    as_a_machine: bool = False,
) -> list[str]:
    """The command line that runs `argv` inside `root` with /proc and /dev mounted.

    The command gets a clean environment (`env` and a PATH), as a service or a boot would:
    nothing of the test's (PYTHONPATH, virtualenv) leaks into the root. `as_a_machine`
    also gives it its own host name and network (no interface up): for a boot's tools
    (cloud-init sets the host name), which must not touch the host's.
    """
    namespaces = ["--uts", "--net"] if as_a_machine else []
    userspec = [f"--userspec={user}:{user}"] if user else []
    clean = ["/usr/bin/env", "-i", f"PATH={ROOT_PATH}", "LANG=C.UTF-8", "HOME=/root"]
    clean += [f"{k}={v}" for k, v in (env or {}).items()]
    script = (
        'root="$1"; shift; mount -t proc proc "$root/proc" && '
        'mount --bind /dev "$root/dev" && exec chroot "$@"'
    )
    return ["unshare", "--mount", *namespaces, "--", "sh", "-c", script, "sh", str(root), *userspec,
            str(root), *clean, *argv]  # fmt: skip


def download_wheels(dest: Path, *requirements: str) -> None:
    """Binary wheels of `requirements` and their dependencies for this CPython (cp311)."""
    run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
         "--dest", str(dest), *requirements])  # fmt: skip


def wheelhouse_of_checkout(dest: Path) -> Path:
    """vsmcp built from this checkout plus its dependencies' wheels, for offline installs."""
    dest.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest),
         str(REPO_ROOT)])  # fmt: skip
    (wheel,) = dest.glob("vsmcp-*.whl")
    deps_key = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    deps = CACHE_DIR / f"wheels-{deps_key}"
    if not (deps / COMPLETE_MARKER).exists():
        building = deps.with_name(f"{deps.name}.{os.getpid()}")
        download_wheels(building, str(wheel))
        (building / COMPLETE_MARKER).touch()
        _publish(building, deps)
    for dep in deps.glob("*.whl"):
        if not dep.name.startswith("vsmcp-"):
            shutil.copy2(dep, dest / dep.name)
    return wheel


def cached_root() -> Path:
    """The finished base root, built now if the cache has none."""
    root = CACHE_DIR / f"rootfs-{ROOTFS_VERSION}"
    if (root / COMPLETE_MARKER).exists():
        return root
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    building = root.with_name(f"{root.name}.{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        # In its own mount namespace: the /proc debootstrap mounts in the root cannot
        # outlive it, so removing a failed build never meets a mounted /proc.
        run(["unshare", "--mount", "debootstrap", "--variant=minbase",
             f"--include={','.join(ROOT_PACKAGES)}", SUITE, str(building),
             debian_mirror()])  # fmt: skip
        _install_ansible(building)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    (building / COMPLETE_MARKER).touch()
    _publish(building, root)
    return root


def _install_ansible(root: Path) -> None:
    wheels = root / "var/cache/ansible-wheels"
    download_wheels(wheels, requirement("ansible-core"))
    run(in_root(root, ["python3", "-m", "venv", ROOT_ANSIBLE]))
    run(in_root(root, [f"{ROOT_ANSIBLE}/bin/pip", "install", "-q", "--no-index",
                       "--find-links", "/var/cache/ansible-wheels",
                       requirement("ansible-core")]))  # fmt: skip
    shutil.rmtree(wheels)


def _publish(building: Path, final: Path) -> None:
    """Move a finished build into place; another session's finished build wins a race."""
    try:
        building.rename(final)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)


def copy_root(base: Path, dest: Path) -> Path:
    """A throwaway copy of the base root (hard links would share the files' inodes)."""
    run(["cp", "-a", "--reflink=auto", str(base), str(dest)])
    return dest
