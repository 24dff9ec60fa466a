"""The offers codec: what an announcement may carry, and URI template matching."""

from __future__ import annotations

import pytest

from vsmcp.node.tools.errors import ProviderError
from vsmcp.node.tools.model import ToolSpec
from vsmcp.node.tools.offers import (
    MAX_OFFERS_PER_KIND,
    OFFERS_KEY,
    Offers,
    merged,
    offer_request,
    offers_of,
    offers_spec,
    result_of,
    template_matches,
)


@pytest.mark.parametrize(
    ("template", "uri", "matches"),
    [
        ("colour://{name}", "colour://red", True),
        ("colour://{name}", "colour://red/dark", False),
        ("colour://{name}", "colour://", False),
        ("file:///{+path}", "file:///a/b/c.txt", True),
        ("users://{id}/posts/{post}", "users://7/posts/12", True),
        ("users://{id}/posts/{post}", "users://7/comments/12", False),
        ("search://items{?q,limit}", "search://items?q=x&limit=3", True),
        ("search://items{?q,limit}", "search://items", True),
        ("a.b://{x}", "aXb://1", False),  # literal parts are not patterns
    ],
)
def test_template_matches(template: str, uri: str, matches: bool) -> None:
    assert template_matches(template, uri) is matches


def test_an_offers_spec_announces_what_offers_of_reads_back() -> None:
    offers = Offers(
        resources=({"uri": "data://a", "name": "a"},),
        templates=({"uriTemplate": "c://{n}", "name": "c"},),
        prompts=({"name": "p", "arguments": []},),
    )
    spec = offers_spec("mount.docs", offers, "ops", "mounted")
    assert spec.name == "vsm.mcp.mount.docs" and spec.zone == "ops"
    assert offers_of(spec) == offers


def test_a_malformed_announcement_keeps_only_well_formed_entries() -> None:
    schema = {
        OFFERS_KEY: {
            "resources": [{"uri": "data://ok"}, {"uri": 3}, "junk", {"name": "no uri"}],
            "resourceTemplates": {"not": "a list"},
            "prompts": [{"name": "p"} for _ in range(MAX_OFFERS_PER_KIND + 10)],
        }
    }
    offers = offers_of(ToolSpec(name="vsm.mcp.x", input_schema=schema))
    assert offers is not None
    assert offers.resources == ({"uri": "data://ok"},)
    assert offers.templates == ()
    assert len(offers.prompts) == MAX_OFFERS_PER_KIND
    assert offers_of(ToolSpec(name="other", input_schema=schema)) is None
    assert offers_of(ToolSpec(name="vsm.mcp.y", input_schema={OFFERS_KEY: []})) is None


def test_merged_lists_the_first_provider_of_each_key() -> None:
    first = Offers(resources=({"uri": "u", "name": "first"},))
    second = Offers(resources=({"uri": "u", "name": "second"}, {"uri": "v", "name": "v"}))
    assert [r["name"] for r in merged("resources", "uri", [first, second])] == ["first", "v"]


def test_requests_and_results_are_checked() -> None:
    assert offer_request({"method": "prompts/get", "params": {"name": "p"}}) == (
        "prompts/get",
        {"name": "p"},
    )
    with pytest.raises(ProviderError):
        offer_request({"method": "tools/call", "params": {}})
    with pytest.raises(ProviderError):
        result_of("vsm.mcp.x", {"content": [], "isError": True})
    assert result_of("vsm.mcp.x", {"content": [], "structuredContent": {"a": 1}}) == {"a": 1}
