"""The runner on real subprocesses and signals."""

import os

from orchestration.commands import runner
from orchestration.commands.models import FAILED, SUCCEEDED, TIMED_OUT
from tests.support.wait import wait_until


def _spec(command: str, timeout: float = 10, **kw) -> runner.CommandSpec:
    return runner.CommandSpec(1, "c", "staging", command, timeout, **kw)


def test_injection_strings_in_variables_stay_inert(tmp_path):
    marker = tmp_path / "pwned"
    evil = {
        "A": f"$(touch {marker})",
        "B": f"; touch {marker}",
        "C": f"`touch {marker}`",
        "D": f"' && touch {marker} && '",
    }
    result = runner.run(_spec('echo "$A|$B|$C|$D"; echo $A $B', variables=evil))
    assert result.status == SUCCEEDED
    assert not marker.exists()
    first = result.stdout_tail.splitlines()[0]
    assert first == "|".join(evil.values())


def test_parent_secrets_are_not_inherited_but_variables_are(monkeypatch):
    monkeypatch.setenv("CA_ROOT_API_KEY", "parent-secret")
    result = runner.run(_spec("env", variables={"MINE": "yes"}))
    assert "MINE=yes" in result.stdout_tail
    assert "COMMAND_ENVIRONMENT=staging" in result.stdout_tail
    assert "parent-secret" not in result.stdout_tail


def test_secrets_are_masked_in_output_tails_and_streamed_lines():
    lines = []
    result = runner.run(
        _spec('echo "token=$TOKEN"; echo "err $TOKEN" >&2; exit 4',
              variables={"TOKEN": "hunter2-xyz"}, secrets=["hunter2-xyz"]),
        on_line=lambda stream, line: lines.append((stream, line)),
    )  # fmt: skip
    assert result.status == FAILED and result.exit_code == 4
    assert result.stdout_tail == "token=****\n"
    assert result.stderr_tail == "err ****\n"
    assert ("stdout", "token=****") in lines
    assert "hunter2" not in repr(lines) + result.stdout_tail + result.stderr_tail


def test_output_tail_is_capped_and_keeps_the_end():
    result = runner.run(
        _spec("i=0; while [ $i -lt 3000 ]; do echo line-$i-padding-padding; i=$((i+1)); done"),
        tail_bytes=4096,
    )
    assert result.status == SUCCEEDED
    assert len(result.stdout_tail.encode()) <= 4096
    assert result.stdout_tail.endswith("line-2999-padding-padding\n")
    assert "line-0-" not in result.stdout_tail


def _alive(pid: int) -> bool:
    """Running, not a zombie (a killed orphan may wait for a reaper that the container lacks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_timeout_kills_the_whole_tree_even_a_child_ignoring_term(tmp_path):
    """The shell waits until its TERM-ignoring child has written its pid before the timeout can
    matter to it (3 s: room for a loaded machine to start both), then both ignore SIGTERM."""
    pidfile = tmp_path / "child.pid"
    command = (
        f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; while :; do sleep 0.1; done' & "
        f"while [ ! -s {pidfile} ]; do sleep 0.01; done; trap '' TERM; wait"
    )
    result = runner.run(_spec(command, timeout=3), grace_seconds=0.3)
    assert result.status == TIMED_OUT
    assert "timed out after 3s" in result.message
    child = int(pidfile.read_text())
    wait_until(lambda: not _alive(child), what="the TERM-ignoring grandchild to be killed")


def test_cancel_stops_a_running_command():
    running = runner.RunningCommand(_spec("sleep 120", timeout=600), grace_seconds=0.2)
    running.cancel()
    result = running.wait()
    assert result.status == "cancelled"
    assert result.duration_seconds < 60  # ended by the cancel, not by its 120 s sleep


def test_a_program_that_cannot_start_is_a_failed_result(tmp_path):
    result = runner.run(_spec("x", use_shell=True, working_dir=str(tmp_path / "missing")))
    assert result.status == FAILED and "could not start" in result.message


def test_values_execve_refuses_are_a_failed_result_not_a_stuck_run():
    """A NUL byte (stored before the catalog schema refused it) must end the run as failed."""
    secret = "s3cr3t-value-\x00-tail"
    cases = [
        _spec("echo a\x00b"),
        _spec("echo\x00 a", use_shell=False),
        _spec("true", variables={"A": "x\x00y"}),
        _spec("true", variables={"TOKEN": secret}, secrets=[secret]),
    ]
    for spec in cases:
        result = runner.run(spec)
        assert result.status == FAILED and "could not start" in result.message, spec
        assert "s3cr3t" not in result.message + result.stderr_tail
