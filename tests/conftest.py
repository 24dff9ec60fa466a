"""Shared test settings."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Fixtures shared across the tree (network namespaces for tests of what crosses a network).
pytest_plugins = ["tests.netns"]

# CI runs on 2 cores shared with real node processes: no per-example deadline.
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
