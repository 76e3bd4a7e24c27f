"""Reading a CLI's JSON summary from its stdout, whatever Ray printed around it."""

from __future__ import annotations

import json


def last_json(text: str) -> dict:
    """The last line of ``text`` that is a JSON object: our CLIs end with one, but a Ray driver may
    write its own lines (e.g. "raylet has lagging heartbeats" on a busy machine) after it."""
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, text[-3000:]
    return json.loads(lines[-1])
