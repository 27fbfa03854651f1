"""Reading what a run reported: the one step-metadata helper of the suite."""

from __future__ import annotations

from typing import Any


def step_metadata(result: Any, step: str | None = None) -> dict[str, Any]:
    """The output metadata of ``step`` (or of the run's only output) as plain values.

    ``result`` is an ``ExecuteInProcessResult``. With ``step`` left out the run must have exactly
    one step output, so a test cannot read the wrong step's numbers by accident.
    """
    outputs = [
        e
        for e in result.all_events
        if e.event_type_value == "STEP_OUTPUT" and (step is None or e.step_key == step)
    ]
    if step is None and len(outputs) != 1:
        keys = [e.step_key for e in outputs]
        raise AssertionError(f"expected exactly one step output, got {len(outputs)}: {keys}")
    if not outputs:
        raise AssertionError(f"no output metadata for step {step!r}")
    return {k: v.value for k, v in outputs[0].event_specific_data.metadata.items()}
