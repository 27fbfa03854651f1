"""The one error shape for refusals: shown plainly in the UI, never retried.

A ``dagster.Failure`` puts its message in the UI instead of a traceback; ``allow_retries=False``
tells every step RetryPolicy that another attempt cannot help (a refused environment, a bad slot,
a broken migration). Every such refusal derives from here, so that rule lives in one place.
"""

import dagster as dg


class FinalFailure(dg.Failure):
    """A failure no retry can fix; ``str()`` is the message, keyword arguments become metadata."""

    def __init__(self, message: str, **metadata: object) -> None:
        super().__init__(description=message, metadata=metadata or None, allow_retries=False)
        self.message = message

    def __str__(self) -> str:
        return self.message
