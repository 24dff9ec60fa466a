from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import NodeProcess

LOG_TAIL_CHARS = 6000


@pytest.fixture
def nodes(request: pytest.FixtureRequest) -> Iterator[list[NodeProcess]]:
    """Collects started nodes; stops every one at the end and prints their logs on failure."""
    started: list[NodeProcess] = []
    yield started
    report = getattr(request.node, "rep_call", None)
    failed = report is not None and report.failed
    for node in started:
        node.stop()
        if failed:
            print(f"--- log of {node.data_dir} ---\n{node.log_text()[-LOG_TAIL_CHARS:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
