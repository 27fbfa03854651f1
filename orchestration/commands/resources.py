"""``commands_runner``: how a batch run executes its commands (parallelism, kill grace, caps)."""

import dagster as dg
from pydantic import Field, PrivateAttr

from orchestration.commands.pool import HEARTBEAT_SECONDS, CommandPool
from orchestration.commands.runner import DEFAULT_TAIL_BYTES


class CommandRunnerResource(dg.ConfigurableResource):
    """Holds one ``CommandPool`` per run; killing what is still running when the run stops."""

    max_parallel: int = Field(default=32, ge=1, le=512, description="Commands running at once.")
    kill_grace_seconds: float = Field(
        default=5.0, ge=0, description="After a timeout's SIGTERM, wait this long before SIGKILL."
    )
    tail_bytes: int = Field(
        default=DEFAULT_TAIL_BYTES, ge=1024, description="stdout/stderr tail kept per command."
    )
    stream_lines: int = Field(
        default=1000, ge=0, description="Output lines per command streamed to the run log."
    )

    heartbeat_seconds: float = Field(
        default=HEARTBEAT_SECONDS,
        gt=0,
        description="How often running commands are marked alive (the reaper's liveness signal).",
    )

    _pool: CommandPool | None = PrivateAttr(default=None)

    def pool(self, engine, dagster_run_id: str | None) -> CommandPool:
        if self._pool is None:
            self._pool = CommandPool(
                engine,
                dagster_run_id,
                max_parallel=self.max_parallel,
                grace_seconds=self.kill_grace_seconds,
                tail_bytes=self.tail_bytes,
                heartbeat_seconds=self.heartbeat_seconds,
            )
        return self._pool

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel=True)
            self._pool = None
