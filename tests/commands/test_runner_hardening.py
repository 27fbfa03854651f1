"""Issue 14, 1b and 5c: output masked over the stream; every process of a run ends with it.

Masking: an exhaustive loop (every secret length 1..64, the secret at every offset around the read
boundary, multi-byte characters split across reads) on the stream pipeline, and a few cases
through a real subprocess, the real record store and a real Dagster run. Processes: real
``setsid`` / double-fork escapes under a timeout, a clean exit and a SIGKILLed worker + reaper.
"""

import contextlib
import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from orchestration.commands import actions, reaper, runner, store
from orchestration.commands import models as m
from orchestration.commands.jobs import run_command_now_job
from orchestration.commands.masking import MASK, MIN_ANYWHERE, MaskedLines, StreamMasker, mask_text
from orchestration.commands.pool import CommandPool
from orchestration.commands.resources import CommandRunnerResource
from orchestration.commands.timeutil import utcnow
from resources.record_store import RecordStoreResource, make_engine
from tests.commands.helpers import running_row, seed
from tests.job_cli import REPO, dagster_home, job_env, job_execute_cmd
from tests.support.wait import wait_until

# Secret characters: ASCII letters/digits plus 2-, 3- and 4-byte UTF-8 characters, none of which
# occur in the filler (spaces, dots, newlines), so any survivor is the secret's own.
ALPHABET = "Kq7é€Zx𝄞Rm2ßw9Ω"
FILLER = "..  .\n. ."
REAL_READ = 64 * 1024  # the runner's read size in production


def _secret(length: int, shift: int = 0) -> str:
    return "".join(ALPHABET[(i * 4 + shift) % len(ALPHABET)] for i in range(length))


def _leaks(secret: str, text: str) -> list[str]:
    """Every piece of ``secret`` of length >= 4 found in ``text`` (any longer piece contains one);
    the whole secret when it is shorter than that."""
    n = min(MIN_ANYWHERE, len(secret))
    return sorted({secret[i : i + n] for i in range(len(secret) - n + 1)} & _grams(text, n))


def _grams(text: str, n: int) -> set[str]:
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def _filler(n: int) -> str:
    return (FILLER * (n // len(FILLER) + 1))[:n]


def _through_stream(text: str, secrets: list[str], read_size: int) -> list[str]:
    """``text`` as UTF-8 bytes in reads of ``read_size`` through the runner's stream pipeline."""
    raw = text.encode()
    stream = MaskedLines(secrets, max_line=read_size)
    lines = []
    for start in range(0, len(raw), read_size):
        lines += stream.feed(raw[start : start + read_size])
    return lines + stream.close()


# --- masking: the exhaustive loop on the stream pipeline ----------------------------------------


def test_every_secret_length_at_every_offset_around_the_read_boundary_is_masked():
    cases = 0
    for read_size in (64, 13):
        for length in range(1, 65):
            secret = _secret(length)
            size = len(secret.encode())
            boundary = read_size * (size // read_size + 1)  # past the secret
            for offset in range(boundary - size - 2, boundary + 3):  # every straddle, and around
                text = _filler(offset) + secret + _filler(read_size + 7)
                lines = _through_stream(text, [secret], read_size)
                out = "".join(lines)
                assert not _leaks(secret, out), (read_size, length, offset, out)
                # exactly whole-text masking: nothing else is touched, nothing is lost or doubled
                assert out == text.replace(secret, MASK), (read_size, length, offset)
                assert all(len(line) <= read_size for line in lines)
                cases += 1
    assert cases > 6000  # 2 read sizes x 64 lengths x every byte offset of a straddle


def test_a_secret_split_anywhere_between_two_feeds_is_masked_and_the_rest_is_kept():
    """The masker itself, text-level: every split point inside every secret length."""
    for length in range(1, 65):
        secret = _secret(length, shift=3)
        text = f"a {secret} b"
        for cut in range(len(text) + 1):
            masker = StreamMasker([secret])
            out = masker.feed(text[:cut]) + masker.feed(text[cut:]) + masker.flush()
            assert out == f"a {MASK} b", (length, cut, out)


def test_short_secrets_are_masked_as_whole_tokens_only():
    for secret in ("7", "ab", "x9Z"):
        out = "".join(_through_stream(f"PIN={secret}\n{secret} {secret}.", [secret], 2))
        assert out == f"PIN={MASK}\n{MASK} {MASK}.", out
        # inside a longer word it is not a secret's printing: left alone
        word = f"w{secret}w {secret}_"
        assert "".join(_through_stream(word, [secret], 2)) == word


def test_overlapping_and_adjacent_secrets_are_masked_whole_in_any_order():
    a, b = "abcdefgh", "efghijkl"  # overlap by 4: masking one first must not leave the other's end
    for secrets in ([a, b], [b, a]):
        for read_size in range(1, 14):
            out = "".join(_through_stream(f"<{a[:4]}{b}>{a}{b}|{b}{a}", secrets, read_size))
            assert out == f"<{MASK}>{MASK}{MASK}|{MASK}{MASK}", (secrets, read_size, out)


def test_a_partial_secret_at_the_end_of_the_stream_is_masked_from_four_characters():
    for length in range(5, 65):
        secret = _secret(length, shift=1)
        for keep in range(1, length):
            out = "".join(_through_stream("out: " + secret[:keep], [secret], 16))
            if keep >= MIN_ANYWHERE:
                assert out == "out: " + MASK, (length, keep)
            else:  # 1-3 leading characters of a secret: not a secret's printing (documented)
                assert out == "out: " + secret[:keep]


def test_the_tail_cap_never_reveals_part_of_a_secret():
    cap = 256
    for length in (4, 5, 19, 40, 64):
        secret = _secret(length, shift=2)
        for offset in range(cap - 80, cap + 80):
            for one_line in (True, False):
                filler = _filler(offset).replace("\n", " ") if one_line else _filler(offset)
                text = secret + filler + _filler(cap // 2)  # the cap cuts around the secret
                tail = runner.Tail(cap)
                for line in _through_stream(text, [secret], 64):
                    tail.add(line)
                assert not _leaks(secret, tail.text()), (length, offset, one_line)
                assert len(tail.text().encode()) <= cap


def test_messages_are_masked_whole():
    secret = _secret(19)
    assert mask_text(f"could not start: {secret}: no such file", [secret]) == (
        f"could not start: {MASK}: no such file"
    )
    assert runner.Masker([secret])(f"x{secret[:10]}") == f"x{MASK}"


# --- masking: real subprocesses, the real store, a real Dagster run ----------------------------


def _spec(command: str, timeout: float = 20, **kw) -> runner.CommandSpec:
    return runner.CommandSpec(1, "c", "staging", command, timeout, **kw)


@pytest.mark.parametrize("read_size", [64, None])  # None: the real 64 KiB
def test_printf_output_straddling_reads_is_masked_in_tails_and_streamed_lines(read_size):
    size = read_size or REAL_READ
    for secret in (_secret(19), _secret(64, shift=4), "hunter2-xyz-0123456"):
        secret_bytes = len(secret.encode())
        boundary = size * (secret_bytes // size + 1)  # a read boundary past the secret's size
        for offset in (boundary - secret_bytes + 1, boundary - secret_bytes // 2, boundary - 1):
            lines: list[tuple[str, str]] = []
            result = runner.run(
                _spec('printf "%${N}s%s%s\\n" "" "$S" "$PAD"; printf "%${N}s%s\\n" "" "$S" >&2',
                      variables={"N": str(offset), "S": secret, "PAD": "." * 70},
                      secrets=[secret]),
                on_line=lambda stream, line, into=lines: into.append((stream, line)),
                read_size=read_size,
            )  # fmt: skip
            assert result.status == m.SUCCEEDED, result
            seen = result.stdout_tail + result.stderr_tail + "".join(line for _, line in lines)
            assert not _leaks(secret, seen), (secret, offset)
            # the streamed pieces joined are the whole text masked (nothing lost or doubled)
            for stream, rest in (("stdout", "." * 70), ("stderr", "")):
                joined = "".join(line for name, line in lines if name == stream)
                assert joined == " " * offset + MASK + rest, (stream, secret, offset)


def test_the_store_the_run_log_and_the_metadata_never_hold_part_of_a_secret(
    store_url, engine, instance
):
    """A real Dagster run (run_command_now) whose command prints a secret across the 64 KiB read
    boundary: stdout_tail in command_run_events, every event-log entry (the streamed run-log lines,
    the step's output metadata) are checked for any 4-character piece of it."""
    # 19 characters, as in the issue; no 4-character piece of it can occur by chance in the
    # event log (not hex, not words: "sk-live-9f8e…" matched "e-9f" in a run id's uuid).
    secret = "sq-zqxw-QwZrTyUxPmK"
    offsets = [REAL_READ - k for k in (1, 5, 9, 14, 18)]
    seed(engine, {
        "environments": [{"name": "staging",
                          "variables": {"KEY": {"value": secret, "secret": True}}}],
        "commands": [{"name": "leaky", "command": " ; ".join(
            f'printf "%{n}s%s tail\\n" "" "$KEY"; printf "%{n}s%s\\n" "" "$KEY" >&2'
            for n in offsets)}],
    })  # fmt: skip
    result = run_command_now_job.execute_in_process(
        run_config={"ops": {"request_command_run": {"config": {
            "command": "leaky", "environment": "staging"}}}},
        instance=instance,
        resources={"record_store": RecordStoreResource(url=store_url, auto_upgrade=False),
                   "commands_runner": CommandRunnerResource(kill_grace_seconds=0.2)},
    )  # fmt: skip
    assert result.success
    run_id = result.output_for_node("request_command_run", "command_run_id")
    final = store.events_for(engine, run_id)[-1]
    assert final["kind"] == m.SUCCEEDED
    assert final["stdout_tail"].endswith(MASK + " tail\n")  # the 64 KiB tail holds the last line
    assert final["stderr_tail"].endswith(MASK + "\n")
    assert not _leaks(secret, final["stdout_tail"] + final["stderr_tail"])
    entries = instance.all_logs(result.run_id)
    logged = "\n".join(repr(e) for e in entries)
    assert "[stdout]" in logged and "stdout_tail" in logged  # the lines and the metadata are there
    assert logged.count(MASK) >= 2 * len(offsets)
    assert not _leaks(secret, logged)


def test_the_pool_masks_across_reads_into_the_real_store(engine):
    secret = _secret(33, shift=5)  # non-ASCII, 2-4 bytes per character
    seed(engine, {
        "environments": [{"name": "staging",
                          "variables": {"KEY": {"value": secret, "secret": True}}}],
        "commands": [{"name": "leaky", "command": 'for n in 1 9 17 30; do '
                      'printf "%${n}s%s|\\n" "" "$KEY"; done'}],
    })  # fmt: skip
    run_id = actions.request_run(engine, "leaky", "staging", status=m.QUEUED)
    pool = CommandPool(engine, "dagster-run-mask", read_size=16)
    handle = pool.ensure(run_id)
    outcome = handle.future.result(timeout=30)
    pool.shutdown(cancel=False)
    assert outcome.result.status == m.SUCCEEDED
    final = store.events_for(engine, run_id)[-1]
    assert final["stdout_tail"].count(MASK + "|") == 4
    streamed = []
    while not handle.lines.empty():
        streamed.append(handle.lines.get_nowait()[1])
    assert not _leaks(secret, final["stdout_tail"] + "".join(streamed))


# --- every process of a run ends with it --------------------------------------------------------


def _alive(pid: int) -> bool:
    """Running, not a zombie (a killed orphan may wait for a reaper that the container lacks)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _carrying(token: str) -> list[int]:
    """Processes whose environment holds the token (read here, not through the code under test)."""
    needle = f"COMMAND_RUN_TOKEN={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _wait_gone(pids: list[int], token: str | None = None, what: str = "processes") -> None:
    """Wait (generously) until none of ``pids`` is alive and no process carries ``token``."""
    wait_until(
        lambda: not any(_alive(p) for p in pids) and not (token and _carrying(token)),
        what=f"{what} to end",
    )


def _read_pids(files: list[Path]) -> list[int]:
    """The pids the escaped processes wrote, once every file holds one."""
    wait_until(
        lambda: all(f.exists() and f.read_text().strip() for f in files),
        what=f"the escaped processes to write {files}",
    )
    return [int(f.read_text()) for f in files]


def _environ(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "environ").read_bytes()
    except OSError:
        return b""


def _kill(pids: list[int], token: str | None = None) -> None:
    """Test clean-up: whatever survived (a failing run must not leave 300 s sleeps behind)."""
    for pid in pids + (_carrying(token) if token else []):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _escaping(tmp_path: Path, then: str) -> tuple[str, list[Path]]:
    """A command that leaves two processes outside its group, then runs ``then``: one ``setsid``
    in the background keeping the output pipes, one double fork (``setsid -f``) detached."""
    a, b = tmp_path / "setsid.pid", tmp_path / "double-fork.pid"
    command = (
        f"setsid sh -c 'echo $$ > {a}; exec sleep 300' & "
        f"setsid -f sh -c 'echo $$ > {b}; exec sleep 300' </dev/null >/dev/null 2>&1; "
        f"while [ ! -s {a} ] || [ ! -s {b} ]; do sleep 0.01; done; {then}"  # both have escaped
    )
    return command, [a, b]


@pytest.mark.parametrize(
    ("then", "status"),
    [("sleep 300", m.TIMED_OUT), ("trap '' TERM; sleep 300", m.TIMED_OUT), ("true", m.SUCCEEDED)],
)
def test_processes_that_left_the_group_end_with_the_run(tmp_path, then, status):
    command, pidfiles = _escaping(tmp_path, then)
    # the timeout (3 s) must leave a loaded machine room to start both escapes first; a command
    # that exits on its own gets all the time it needs
    spec = _spec(command, timeout=3 if status == m.TIMED_OUT else 60)
    pids: list[int] = []
    try:
        started = time.monotonic()
        result = runner.run(spec, grace_seconds=0.3)
        elapsed = time.monotonic() - started
        pids = _read_pids(pidfiles)
        assert result.status == status
        _wait_gone(pids, what=f"the escaped processes {pids}")
        _wait_gone([], spec.run_token, what="every process carrying the run's token")
        # not a speed target: the readers of a pipe an escaped process still holds would each
        # wait out a 5 s join (2 readers: 10 s more), which this bound tells apart
        assert elapsed < 10
    finally:
        _kill(pids, getattr(spec, "run_token", None))


def test_cancel_ends_processes_that_left_the_group(tmp_path):
    command, pidfiles = _escaping(tmp_path, "sleep 300")
    spec = _spec(command)
    pids: list[int] = []
    try:
        running = runner.RunningCommand(spec, grace_seconds=0.3)
        pids = _read_pids(pidfiles)
        running.cancel()
        assert running.wait().status == m.CANCELLED
        _wait_gone(pids, what=f"the escaped processes {pids}")
        _wait_gone([], spec.run_token, what="every process carrying the run's token")
    finally:
        _kill(pids, getattr(spec, "run_token", None))


def test_only_the_exact_token_is_ended():
    token = runner.run_token("0f0f0f0f-aaaa-bbbb-cccc-123456789abc", 7)
    base = {"PATH": os.environ["PATH"]}
    others = [
        subprocess.Popen(["sleep", "30"], env={**base, "COMMAND_RUN_TOKEN": value},
                         start_new_session=True)
        for value in (token + "0", token[:-1], "x" + token)
    ] + [subprocess.Popen(["sleep", "30"], env={**base, "COMMAND_RUN_ID": "7"},
                          start_new_session=True)]  # fmt: skip
    mine = subprocess.Popen(["sleep", "30"], env={**base, "COMMAND_RUN_TOKEN": token},
                            start_new_session=True)  # fmt: skip
    try:
        # Popen returns once exec has begun, before the kernel has set up the new environment
        # (an empty /proc/<pid>/environ for a moment): wait until every one shows its own
        wait_until(
            lambda: all(_environ(p.pid) for p in others) and _carrying(token) == [mine.pid],
            what="the sleeps to show their environments",
        )
        ended = runner.end_processes(None, token, 0.5)
        assert ended.escaped == 1 and not ended.killed
        assert mine.wait(timeout=5) == -signal.SIGTERM
        assert all(p.poll() is None for p in others)
    finally:
        for p in [*others, mine]:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_the_reaper_ends_processes_that_left_the_group_of_a_sigkilled_worker(
    sqlite_store_url, tmp_path, monkeypatch
):
    """A real `dagster job execute` worker runs a command that escapes its group twice; the worker
    is SIGKILLed, run monitoring's verdict is recorded, one sensor-tick reap ends all of it."""
    url = sqlite_store_url
    engine = make_engine(url)
    command, pidfiles = _escaping(tmp_path, "sleep 300")
    seed(
        engine,
        {
            "environments": [{"name": "staging"}],
            "commands": [{"name": "escapes", "command": command, "timeout_seconds": 600}],
        },
    )
    home = dagster_home(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(
        "ops:\n  request_command_run:\n    config: {command: escapes, environment: staging}\n"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    dg.DagsterInstance.get().dispose()
    worker = subprocess.Popen(
        job_execute_cmd("run_command_now", config), cwd=REPO,
        env=job_env(home, {"RECORD_STORE_URL": url}),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pids: list[int] = []
    token = ""
    try:
        try:
            row = wait_until(
                lambda: running_row(engine), timeout=120, what="the command running with a pgid",
                alive=lambda: worker.poll() is None,
            )  # fmt: skip
            pids = _read_pids(pidfiles)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
        assert all(_alive(p) for p in pids)  # they outlived the worker
        with dg.DagsterInstance.get() as instance:
            instance.report_run_failed(instance.get_run_by_id(row["dagster_run_id"]))
            stale = utcnow() - reaper.STALE_AFTER - timedelta(seconds=1)
            with engine.begin() as conn:
                conn.execute(m.command_runs.update().where(m.command_runs.c.id == row["id"])
                             .values(heartbeat_at=stale))  # fmt: skip
            (reaped,) = reaper.reap(instance, engine, utcnow(), kill_grace_seconds=1.0)
        _wait_gone(pids, what=f"the escaped processes {pids} (after the reaper)")
        token = runner.run_token(row["dagster_run_id"], row["id"])
        assert reaped.command_run_id == row["id"] and reaped.status == m.LOST
        assert f"orphaned process group {row['pgid']} terminated" in reaped.orphans
        assert "2 process(es) that left the group (same COMMAND_RUN_TOKEN) terminated" in (
            reaped.orphans
        )
        assert not _carrying(token)
        assert store.events_for(engine, row["id"])[-1]["message"] == reaped.orphans
    finally:
        _kill(pids, token)


# --- masking on bytes: a cut inside a character, legacy encodings (FX1) -------------------------

# 2-, 3- and 4-byte UTF-8 characters, alone and mixed with ASCII.
MULTIBYTE_SECRETS = [
    "pässwört€\U0001d11e-123_Z",
    "ключ-доступа",
    "秘密の鍵です",
    "\U0001f511\U0001f5dd\U0001f510\U0001f512",
    "ab€€€cd",
    "éééééé",
]
LEGACY_SECRETS = [("pässwört-Ä1", "latin-1"), ("pass€word‰", "cp1252"), ("ßüöä", "latin-1")]


def _byte_leaks(form: bytes, out: str) -> list[bytes]:
    """Every 4-byte piece of ``form`` found in the UTF-8 bytes of ``out``."""
    data = out.encode("utf-8")
    return [form[i : i + 4] for i in range(len(form) - 3) if form[i : i + 4] in data]


def _bytes_through_stream(raw: bytes, secrets: list[str], read_size: int) -> str:
    stream = MaskedLines(secrets, max_line=1 << 16)
    lines = []
    for start in range(0, len(raw), read_size):
        lines += stream.feed(raw[start : start + read_size])
    return "".join(lines + stream.close())


def test_a_secret_cut_at_every_byte_at_the_end_of_the_stream_leaves_nothing():
    """A command killed mid-secret: the stream ends at any byte of the secret's encoding, inside a
    2/3/4-byte character too; no 4+ character piece, no 4+ byte piece survives."""
    for secret in MULTIBYTE_SECRETS:
        form = secret.encode()
        for cut in range(1, len(form) + 1):
            for read_size in (1, 3, 16, REAL_READ):
                out = _bytes_through_stream(b"out: " + form[:cut], [secret], read_size)
                assert not _leaks(secret, out) and not _byte_leaks(form, out), (secret, cut, out)
                assert out.startswith("out: ")
                if cut >= MIN_ANYWHERE:
                    assert out == "out: " + MASK, (secret, cut, read_size)


def test_a_secret_printed_in_a_legacy_encoding_is_masked_whole_and_cut():
    """Latin-1 / cp1252 bytes of a secret (a legacy tool), whole mid-stream and cut at EOF; and a
    secret those cannot encode whole, printed with ``?`` for what they lack."""
    cases = [(s, s.encode(codec), True) for s, codec in LEGACY_SECRETS]
    emoji = "pässwört€\U0001d11e-123_Z"  # mangled: "?" and "EUR" are not the secret's bytes
    cases.append((emoji, "pässwört€?-123_Z".encode("cp1252"), False))
    cases.append((emoji, "pässwörtEUR?-123_Z".encode("latin-1"), False))  # iconv //TRANSLIT
    for secret, form, exact in cases:
        out = _bytes_through_stream(b"a " + form + b" end\n", [secret], 5)
        assert not _leaks(secret, out) and not (exact and _byte_leaks(form, out)), (secret, out)
        for cut in range(1, len(form) + 1):
            out = _bytes_through_stream(b"out: " + form[:cut], [secret], 7)
            assert not _leaks(secret, out), (secret, cut, out)
            assert not (exact and _byte_leaks(form, out)), (secret, cut, out)


def _printf_bytes(data: bytes) -> str:
    return "printf '" + "".join(f"\\{b:03o}" for b in data) + "'"  # POSIX: octal


def test_a_command_killed_mid_character_or_printing_latin1_leaves_nothing():
    """Real subprocesses: printf of the secret's bytes cut inside a character, then killed by the
    timeout; and the Latin-1 bytes of a secret. Run log, tails and message hold no piece."""
    secret = "pässwört€\U0001d11e-123_Z"
    form = secret.encode()
    latin = "pässwört-Ä1"
    for printed, secrets, cmd_tail in (
        (form[: form.index("€".encode()) + 2], [secret], "; sleep 30"),  # 9 chars + 2 of 3 bytes
        (form[:-1], [secret], "; sleep 30"),  # inside no character: 1 byte short
        (form[:-6], [secret], "; sleep 30"),  # inside the 4-byte character
        (latin.encode("latin-1") + b"\n", [latin], ""),
    ):
        lines: list[str] = []
        result = runner.run(
            _spec(_printf_bytes(printed) + cmd_tail, timeout=3, secrets=secrets),  # printf first
            on_line=lambda _stream, line, into=lines: into.append(line),
            grace_seconds=0.5,
        )
        seen = "".join(lines) + result.stdout_tail + result.stderr_tail + result.message
        for s in secrets:
            assert not _leaks(s, seen), (printed, seen)
        assert MASK in seen


# --- control characters and invalid UTF-8 in output: stored, readable, the run ends ----------

CONTROL_BYTES = [*range(0x20), 0x7F]
INVALID_UTF8 = [b"\xff", b"\xc3", b"\xe2\x82", b"\xf0\x9d\x84", b"\xed\xa0\x80", b"\x80\xbf"]
_UNSTORABLE = {chr(b) for b in CONTROL_BYTES} - {"\t", "\n", "\r"}


def _storable(text: str) -> bool:
    """No NUL/C0/DEL (but tab, newline, the CR of a CRLF), no lone surrogate."""
    if any(ch in _UNSTORABLE or 0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return False
    return all(text[i + 1 : i + 2] == "\n" for i, ch in enumerate(text) if ch == "\r")


def _escaped(byte: int) -> str:
    return chr(byte) if byte in (0x09, 0x0A) else f"\\x{byte:02x}"


def test_every_control_byte_and_invalid_utf8_at_every_position_is_escaped_after_masking():
    """Each byte 0x00-0x1F and 0x7F, and invalid UTF-8, at the start, middle and end of a line and
    at every offset around the read boundary: what comes out is storable and shows the byte; a
    secret next to it is still masked whole."""
    secret = "sk-Zq7-secret"
    for bad in [bytes([b]) for b in CONTROL_BYTES] + INVALID_UTF8:
        for read_size in (1, 7, 16):
            for offset in range(read_size * 2 + 1):
                raw = b"." * offset + bad + b"mid" + bad + secret.encode() + bad + b"\n" + bad
                out = _bytes_through_stream(raw, [secret], read_size)
                assert _storable(out), (bad, read_size, offset, out)
                assert not _leaks(secret, out) and MASK in out, (bad, offset, out)
                if len(bad) == 1 and bad[0] in CONTROL_BYTES and bad[0] != 0x0D:
                    assert out.count(_escaped(bad[0])) >= 4, (bad, out)
                elif len(bad) == 1 and bad[0] == 0x0D:  # a CR that is not a CRLF
                    assert "\\x0d" in out, out
                else:
                    assert "\ufffd" in out, (bad, out)
    assert MaskedLines([], 16).feed(b"a\r\nb\n") == ["a\r\n", "b\n"]  # CRLF stays a line end


def test_messages_are_masked_then_escaped():
    """A message (an exception's text) holding control characters: masked whole, then escaped."""
    masked = runner.Masker(["sekret-1"])("a\x00sekret-1\x1b[2J\x7f\udcfe")
    assert masked == "a\\x00****\\x1b[2J\\x7f\\xfe" and _storable(masked)


def _control_command() -> str:
    """printf of every control byte and invalid UTF-8 sequence, at a line's start, middle and end,
    padded so that many straddle a 16-byte read."""
    parts = [bytes([b]) for b in CONTROL_BYTES] + INVALID_UTF8
    data = b"".join(p + b"start" + p + b"-" * (i % 13) + p + b"\n" for i, p in enumerate(parts))
    return _printf_bytes(data) + "; " + _printf_bytes(data) + " >&2; echo done"


def test_control_bytes_in_output_end_the_run_succeeded_with_readable_tails(engine):
    """The probe's ``printf 'found: a\\0b\\n'`` generalised, through the pool into the real store
    (PostgreSQL refused NUL: the run stayed ``running``)."""
    seed(engine, {"environments": [{"name": "staging"}],
                  "commands": [{"name": "bin", "command": _control_command()}]})  # fmt: skip
    run_id = actions.request_run(engine, "bin", "staging", status=m.QUEUED)
    pool = CommandPool(engine, "dagster-run-nul", read_size=16)
    outcome = pool.ensure(run_id).future.result(timeout=60)
    pool.shutdown(cancel=False)
    assert outcome.result.status == m.SUCCEEDED
    assert store.get_run(engine, run_id)["status"] == m.SUCCEEDED
    final = store.events_for(engine, run_id)[-1]
    assert final["kind"] == m.SUCCEEDED and not final["message"]
    for tail in (final["stdout_tail"], final["stderr_tail"]):
        assert _storable(tail)
        for b in CONTROL_BYTES:
            assert _escaped(b) in tail, b
        assert "\ufffd" in tail
    assert final["stdout_tail"].endswith("done\n")


def test_a_dagster_run_with_nul_output_succeeds_and_logs_readable_lines(
    store_url, engine, instance
):
    command = "printf 'found: a\\0b\\n'; echo done"
    seed(engine, {"environments": [{"name": "staging"}],
                  "commands": [{"name": "nul", "command": command}]})  # fmt: skip
    result = run_command_now_job.execute_in_process(
        run_config={"ops": {"request_command_run": {"config": {
            "command": "nul", "environment": "staging"}}}},
        instance=instance,
        resources={"record_store": RecordStoreResource(url=store_url, auto_upgrade=False),
                   "commands_runner": CommandRunnerResource(kill_grace_seconds=0.2)},
        raise_on_error=False,
    )  # fmt: skip
    assert result.success
    run_id = result.output_for_node("request_command_run", "command_run_id")
    assert store.get_run(engine, run_id)["status"] == m.SUCCEEDED
    assert store.events_for(engine, run_id)[-1]["stdout_tail"] == "found: a\\x00b\ndone\n"
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert "[stdout] found: a\\x00b" in messages
    assert all(_storable(text) for text in messages)


@pytest.mark.parametrize("exit_code", [2**64, -(2**63) - 1])  # past INTEGER on both backends
def test_a_result_the_store_refuses_is_recorded_minimal_never_left_running(
    engine, exit_code, caplog
):
    """A real value the store refuses (an exit code INTEGER cannot hold; PostgreSQL: "integer out
    of range", SQLite: too large): the run still ends with its status, one warning line."""
    seed(engine, {"environments": [{"name": "staging"}],
                  "commands": [{"name": "c", "command": "true"}]})  # fmt: skip
    run_id = actions.request_run(engine, "c", "staging", status=m.QUEUED)
    assert store.claim_start(engine, run_id, "dagster-run-refused")
    now = utcnow()
    result = runner.CommandResult(
        m.FAILED, exit_code, now, now, 0.5, "out\x00put\n", "err\n", f"exited with code {exit_code}"
    )
    with caplog.at_level("WARNING", logger="orchestration.commands.store"):
        assert store.finish(engine, run_id, result)
    row = store.get_run(engine, run_id)
    assert row["status"] == m.FAILED and row["exit_code"] is None
    final = store.events_for(engine, run_id)[-1]
    assert final["kind"] == m.FAILED and final["stdout_tail"] in ("", None)
    assert store.NOT_STORED in final["message"] and str(exit_code) in final["message"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"command run {run_id}" in warnings[0], warnings
    assert not store.finish(engine, run_id, result)  # finished: a second result changes nothing


def test_finish_escapes_a_result_built_outside_the_runner(engine):
    seed(engine, {"environments": [{"name": "staging"}],
                  "commands": [{"name": "c", "command": "true"}]})  # fmt: skip
    run_id = actions.request_run(engine, "c", "staging", status=m.QUEUED)
    assert store.claim_start(engine, run_id, "dagster-run-built")
    now = utcnow()
    raw = "".join(chr(b) for b in CONTROL_BYTES) + "\udcff\ud800"
    assert store.finish(engine, run_id, runner.CommandResult(m.SUCCEEDED, 0, now, now, 0.1,
                                                             raw, raw, raw))  # fmt: skip
    final = store.events_for(engine, run_id)[-1]
    assert final["kind"] == m.SUCCEEDED
    for key in ("stdout_tail", "stderr_tail", "message"):
        assert _storable(final[key]) and "\\x00" in final[key] and "\\xff" in final[key], key
