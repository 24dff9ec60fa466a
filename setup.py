"""Packages: the top-level folders install under the one import root `vsmcp`.

`node/`, `mesh/`, `crdt/` and `edge/` stay where the design card puts them; installed, they
are `vsmcp.node`, `vsmcp.mesh`, … (PyPI has distributions named node, mesh, crdt and edge,
so top-level modules with those names would break a shared environment). The `vsmcp/`
folder holds the root package and, for tools that read the tree directly (mypy, a checkout
on PYTHONPATH), symlinks to the four folders.
"""

from setuptools import find_packages, setup

ROOTS = ("node", "mesh", "crdt", "edge")

setup(
    packages=["vsmcp", *(f"vsmcp.{p}" for p in find_packages(include=[f"{r}*" for r in ROOTS]))],
    package_dir={"vsmcp": "vsmcp", **{f"vsmcp.{r}": r for r in ROOTS}},
)
