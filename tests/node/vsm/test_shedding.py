"""Load shedding by priority class at the entry."""

from __future__ import annotations

import pytest

from vsmcp.node.vsm.events import Denial
from vsmcp.node.vsm.shedding import LoadShedder
from vsmcp.node.vsm.stream import EventStream


def test_sheds_classes_at_or_below_the_level_with_a_denial_event() -> None:
    stream = EventStream()
    seen = stream.subscribe("seen", lambda batch: None)
    shedder = LoadShedder(stream)
    assert not shedder.refuses("low", origin="o", zone="public", tool="t")
    shedder.set_level("normal")
    assert shedder.refuses("low", origin="o", zone="public", tool="t")
    assert shedder.refuses("normal", origin="http:a", zone="ops", tool="echo")
    assert not shedder.refuses("high", origin="o", zone="public", tool="t")
    assert not shedder.refuses("critical", origin="o", zone="public", tool="t")
    assert shedder.shed == 2
    last = seen.buffer[-1]
    assert isinstance(last, Denial)
    assert (last.limit, last.origin, last.zone, last.blocked) == ("shed", "http:a", "ops", "echo")
    shedder.set_level(None)
    assert not shedder.refuses("low", origin="o", zone="public", tool="t")
    with pytest.raises(ValueError):
        shedder.set_level("urgent")


def test_critical_is_never_shed_whatever_the_level() -> None:
    shedder = LoadShedder()
    shedder.set_level("critical")
    assert shedder.refuses("high", origin="o", zone="public", tool="t")
    assert not shedder.refuses("critical", origin="o", zone="public", tool="t")
