"""What an operator reads of a run: every event's message and every error's full text."""

from __future__ import annotations

import dagster as dg


def run_text(result: dg.ExecuteInProcessResult) -> str:
    """Every message and error text of a run, as an operator would read them in the UI."""
    parts = []
    for event in result.all_events:
        parts.append(event.message or "")
        error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            parts.append(error.to_string())
    return "\n".join(parts)
