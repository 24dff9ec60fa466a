"""The pattern engine (the design's "GoldRush"): declarative patterns over the event
stream, compiled to per-kind matchers, with bounded window state and hot swap."""

from vsmcp.node.vsm.patterns.actions import ActionDispatcher, Match, MatchSink, emit_handler
from vsmcp.node.vsm.patterns.compile import PatternEngine, SwapReport
from vsmcp.node.vsm.patterns.model import (
    Pattern,
    load_pattern_dir,
    load_pattern_file,
    parse_patterns,
)

__all__ = [
    "ActionDispatcher",
    "Match",
    "MatchSink",
    "Pattern",
    "PatternEngine",
    "SwapReport",
    "emit_handler",
    "load_pattern_dir",
    "load_pattern_file",
    "parse_patterns",
]
