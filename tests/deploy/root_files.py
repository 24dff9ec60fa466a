"""Owners and modes of files in a throwaway root, names resolved in the root's own
/etc/passwd and /etc/group (the host may have no vsmcp user, or another uid for it)."""

from __future__ import annotations

from pathlib import Path


def _names(path: Path) -> dict[int, str]:
    entries = (line.split(":") for line in path.read_text().splitlines() if line)
    return {int(fields[2]): fields[0] for fields in entries}


def owner_and_mode(root: Path, path: str) -> tuple[str, str, str]:
    """(user, group, octal mode) of `path` inside `root`."""
    st = (root / path.lstrip("/")).lstat()
    users = _names(root / "etc/passwd")
    groups = _names(root / "etc/group")
    return users[st.st_uid], groups[st.st_gid], oct(st.st_mode & 0o7777)


def passwd_entry(root: Path, user: str) -> list[str]:
    """The root's /etc/passwd fields of `user`."""
    for line in (root / "etc/passwd").read_text().splitlines():
        if line.startswith(f"{user}:"):
            return line.split(":")
    raise AssertionError(f"no user {user} in {root}/etc/passwd")


# What both deployments (the Ansible role, the cloud-init user-data) must leave.
EXPECTED_OWNERS_AND_MODES = {
    "/var/lib/vsmcp": ("vsmcp", "vsmcp", "0o700"),
    "/var/lib/vsmcp/node.key": ("vsmcp", "vsmcp", "0o600"),
    "/var/lib/vsmcp/node.cert": ("vsmcp", "vsmcp", "0o600"),
    "/etc/vsmcp": ("root", "vsmcp", "0o750"),
    "/etc/vsmcp/vsmcp.toml": ("root", "vsmcp", "0o640"),
    "/etc/systemd/system/vsmcpd.service": ("root", "root", "0o644"),
}


def assert_installed(root: Path) -> None:
    """The system user, the files with their owners and modes, the unit enabled."""
    vsmcp = passwd_entry(root, "vsmcp")
    assert vsmcp[6] == "/usr/sbin/nologin"
    assert int(vsmcp[2]) < 1000  # a system user
    for path, expected in EXPECTED_OWNERS_AND_MODES.items():
        assert owner_and_mode(root, path) == expected, path
    assert (root / "usr/local/bin/vsmcpd").readlink() == Path("/opt/vsmcp/venv/bin/vsmcpd")
    assert (root / "opt/vsmcp/venv/bin/vsmcpd").is_file()
    wants = root / "etc/systemd/system/multi-user.target.wants/vsmcpd.service"
    assert wants.readlink() == Path("/etc/systemd/system/vsmcpd.service")
