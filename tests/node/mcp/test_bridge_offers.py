"""`vsmcp mcp-stdio`'s offers tools: the node's lists, however long, announced whole."""

from __future__ import annotations

from vsmcp.node.mcp.bridge_offers import offers_specs
from vsmcp.node.tools.offers import MAX_OFFERS_PER_KIND, Offers, merged, offers_of


def test_lists_longer_than_one_offers_tool_holds_are_split_and_merge_back_in_order() -> None:
    resources = tuple({"uri": f"r://{i}", "name": f"r{i}"} for i in range(MAX_OFFERS_PER_KIND + 3))
    prompts = ({"name": "hello"},)
    offers = Offers(resources=resources, prompts=prompts)
    specs = offers_specs(offers)
    assert [s.name for s in specs] == ["vsm.mcp.node", "vsm.mcp.node.1"]
    announced = [o for o in (offers_of(s) for s in specs) if o is not None]
    assert merged("resources", "uri", announced) == list(resources)
    assert merged("prompts", "name", announced) == list(prompts)
    assert merged("templates", "uriTemplate", announced) == []
