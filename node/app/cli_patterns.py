"""`vsmcp patterns test`: a dry run of patterns over recorded events.

    vsmcp patterns test FILE_OR_DIR --events RECORDED.jsonl [--json]

Loads the patterns (a TOML/JSON file, or a directory of them) exactly as a node would,
feeds the recorded events (one JSON event per line, as `node.vsm.events.encode_event`
writes them) through the compiled engine, prints each match as it happens (its actions
are listed, never run), then the counts per pattern and the window state. Windows run
on the events' own timestamps, so a recording gives the same matches every time.

Exit codes: 0 done (matches or not); 2 a pattern or an event line was refused (the
message names the file, the pattern or line, and why).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from vsmcp.node.vsm.errors import EventsFileError
from vsmcp.node.vsm.events import (
    MAX_EVENT_LINE_BYTES,
    NODE_CATALOG,
    encode_event,
    read_events_jsonl,
)
from vsmcp.node.vsm.patterns import Match, PatternEngine
from vsmcp.node.vsm.patterns.model import load_pattern_dir, load_pattern_file

EXIT_OK = 0
BATCH_EVENTS = 1_024


def _lines(f: IO[bytes]) -> Iterator[bytes]:
    """Lines of at most MAX_EVENT_LINE_BYTES (+1, so a longer one is seen and refused)."""
    while line := f.readline(MAX_EVENT_LINE_BYTES + 1):
        yield line


def _action_types(match: Match) -> list[str]:
    return [str(a.__struct_config__.tag) for a in match.actions]


def cmd_patterns_test(args: argparse.Namespace) -> int:
    source = Path(args.patterns)
    patterns = (
        load_pattern_dir(source, NODE_CATALOG)
        if source.is_dir()
        else load_pattern_file(source, NODE_CATALOG)
    )
    as_json: bool = args.json

    def show(match: Match) -> None:
        if as_json:
            event = json.loads(encode_event(match.event))
            line = {"pattern": match.pattern, "group": match.group, "count": match.count}
            print(json.dumps({**line, "actions": _action_types(match), "event": event}))
        else:
            group = "" if match.group is None else f" group={match.group!r}"
            kind = NODE_CATALOG.by_class[type(match.event)].name
            print(
                f"{match.event.ts:.6f} {match.pattern}{group} count={match.count} "
                f"kind={kind} actions={','.join(_action_types(match)) or '-'}"
            )

    engine = PatternEngine(show, NODE_CATALOG, patterns)
    events_path = Path(args.events)
    try:
        with events_path.open("rb") as f:
            batch = []
            for event in read_events_jsonl(_lines(f), str(events_path)):
                batch.append(event)
                if len(batch) >= BATCH_EVENTS:
                    engine.process_batch(batch)
                    batch = []
            engine.process_batch(batch)
    except OSError as e:
        raise EventsFileError(str(events_path), 0, f"cannot read: {e.strerror or e}") from e
    _summary(engine, len(patterns), as_json)
    return EXIT_OK


def _summary(engine: PatternEngine, pattern_count: int, as_json: bool) -> None:
    summary: dict[str, Any] = {
        "events": engine.events,
        "bad_events": engine.bad_events,
        "patterns": pattern_count,
        "matches": engine.match_counts(),
        "windows": engine.window_stats(),
    }
    if as_json:
        print(json.dumps({"summary": summary}))
        return
    print(f"-- {summary['events']} events, {pattern_count} patterns")
    for name, count in summary["matches"].items():
        window = summary["windows"].get(name)
        extra = f"  (groups {window['groups']}, evictions {window['evictions']})" if window else ""
        print(f"{count:>10}  {name}{extra}")
    if engine.bad_events:
        print(f"{engine.bad_events} events had a field of the wrong type and were skipped")


def add_pattern_commands(sub: Any) -> None:
    """Add `patterns test` to `vsmcp`'s subparsers."""
    patterns = sub.add_parser("patterns", help="the event pattern engine").add_subparsers(
        dest="patterns_command", required=True
    )
    t = patterns.add_parser("test", help="dry-run patterns over recorded events (JSONL)")
    t.add_argument("patterns", metavar="FILE", help="a pattern file (TOML/JSON) or directory")
    t.add_argument("--events", required=True, metavar="RECORDED.jsonl")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.set_defaults(func=cmd_patterns_test)


if __name__ == "__main__":
    from vsmcp.node.app.cli import main

    sys.exit(main(["patterns", *sys.argv[1:]]))
