"""Issue #14, classes 1a and 4: the HTTP client never shows part of a secret and is bounded.

Secrets: the pure function is checked exhaustively (every secret length 1..64 at every offset
around the cut); real servers on 127.0.0.1 check that the same holds for what a person reads
(ApiError message, detail, metadata, retry log lines). Bounds: a trickling server, a 300 MB body
and a 200 that is not JSON, against the real client over loopback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import pytest

from resources.http_api import ApiClient, ApiError, RetrySettings
from tests.faulty_server import FaultyServer, flood, respond, trickle

# Secrets are drawn from letters found neither in "[REDACTED]", nor in the "… [N more characters]"
# marker, nor in the padding, so ANY surviving character of a secret is a leak we can see.
SECRET_ALPHABET = "BFGHIJKLMNOPQSUVWXYZ"
PAD = "-"
LIMIT = 500


def _secret(length: int, seed: int = 0) -> str:
    return "".join(SECRET_ALPHABET[(i * 7 + seed * 3 + length) % 20] for i in range(length))


def _fragments(secret: str, size: int = 4) -> set[str]:
    """Every substring of ``secret`` of ``size`` characters (the whole secret if shorter)."""
    if len(secret) <= size:
        return {secret}
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def _leaks(secret: str, texts: Iterable[str]) -> list[str]:
    return [f for text in texts for f in _fragments(secret) if f in text]


def _client(server: FaultyServer, secret: str, lines: list[str], **kwargs) -> ApiClient:
    return ApiClient(
        service="svc (test)",
        base_url=server.base_url,
        headers={"X-Key": secret},
        secrets=[secret],
        timeout_seconds=kwargs.pop("timeout_seconds", 5.0),
        retry=RetrySettings(
            max_attempts=kwargs.pop("max_attempts", 2),
            initial_backoff_seconds=0.01,
            max_backoff_seconds=0.05,
        ),
        on_retry=lines.append,
        **kwargs,
    )


def _readable(err: ApiError, lines: list[str]) -> list[str]:
    """Everything of a failure a person can read: message, detail, metadata, retry lines."""
    metadata = [str(v.value) if hasattr(v, "value") else str(v) for v in err.metadata.values()]
    return [str(err), err.message, err.detail or "", err.description or "", *metadata, *lines]


# --- 1a. Scrub the whole text, then cut; mask a partial secret the cut leaves -----------------


def test_redact_then_truncate_no_character_of_a_secret_survives_any_offset():
    """Every length 1..64, every offset from LIMIT-70 to LIMIT+5, alone and next to itself."""
    from resources.http_api import redact_then_truncate

    checked = 0
    for length in range(1, 65):
        secret = _secret(length)
        for offset in range(LIMIT - 70, LIMIT + 6):
            texts = [PAD * offset + secret + PAD * 40, PAD * offset + secret + secret + PAD * 3]
            echoed = secret[: max(1, length // 2)]  # a server echoing the key's first half
            if offset + len(echoed) >= LIMIT:  # ... reaching the cut (whole secrets only inside)
                texts.append(PAD * offset + echoed + PAD * 600)
            for text in texts:
                shown = redact_then_truncate(text, [secret], LIMIT)
                assert not set(shown) & set(secret), (length, offset, shown[-40:])
                assert len(shown) <= LIMIT + len("[REDACTED]… [99999 more characters]")
                checked += 1
    assert checked > 64 * 76 * 2


def test_redact_then_truncate_several_secrets_and_short_texts_kept_whole():
    from resources.http_api import REDACTED, redact_then_truncate

    short, long_ = _secret(6, 1), _secret(30, 2)
    for offset in range(LIMIT - 40, LIMIT + 2):
        shown = redact_then_truncate(PAD * offset + long_ + short + PAD * 50, [short, long_], LIMIT)
        assert not set(shown) & set(short + long_)
    # Nothing to cut: scrubbed, unchanged otherwise (no marker, ordinary text is not masked).
    assert redact_then_truncate(f"key {long_} refused", [long_]) == f"key {REDACTED} refused"
    assert redact_then_truncate("plain text", [long_]) == "plain text"


def test_detail_of_nested_json_with_quotes_and_backslashes_in_the_secret():
    """A nested detail is serialised after scrubbing its strings: escaping cannot hide the key."""
    from resources.http_api import detail_of

    for length in range(4, 65, 6):
        secret = 'a"b\\c/' + _secret(length)
        for pad in range(0, LIMIT + 10, 37):
            body = {"detail": {"errors": [{"pad": PAD * pad, "got": secret, secret: [secret]}]}}
            shown = detail_of(json.dumps(body).encode(), [secret])
            assert not _leaks(secret, [shown, json.dumps(shown)]), (length, pad, shown[-60:])


@pytest.mark.parametrize("offset", [LIMIT - 10, LIMIT - 4, LIMIT - 1, LIMIT, LIMIT + 3])
@pytest.mark.parametrize("length", [1, 4, 19, 64])
def test_422_detail_over_http_leaves_no_part_of_the_key(offset, length):
    """The issue's probe: padding, then the key, in a 422 detail, around the detail's cut."""
    secret = _secret(length, 5)
    text = PAD * offset + secret + PAD * 30
    with FaultyServer() as server:
        server.routes["/plain"] = respond(422, text.encode(), content_type="text/plain")
        server.routes["/json"] = respond(422, json.dumps({"detail": text}).encode())
        lines: list[str] = []
        with _client(server, secret, lines) as client:
            for path in ("/plain", "/json"):
                with pytest.raises(ApiError) as err:
                    client.post_json(path, {})
                assert err.value.status == 422
                assert not _leaks(secret, _readable(err.value, lines)), path
                assert not set(err.value.detail) & set(secret), path  # not even 1 character


@pytest.mark.parametrize("offset", [LIMIT - 8, LIMIT - 2, LIMIT + 1])
def test_503_retry_lines_and_final_error_leave_no_part_of_the_key(offset):
    secret = _secret(40, 9)
    body = json.dumps({"message": PAD * offset + secret}).encode()
    with FaultyServer() as server:
        server.routes["/flaky"] = respond(503, body)
        lines: list[str] = []
        client = _client(server, secret, lines, max_attempts=3)
        with client, pytest.raises(ApiError) as err:
            client.post_json("/flaky", {}, idempotency_key="k-1")
        assert len(lines) == 2 and "HTTP 503" in lines[0]
        assert not _leaks(secret, _readable(err.value, lines))
        assert not set(err.value.detail) & set(secret)
        # One Idempotency-Key for every attempt.
        assert [h.headers["idempotency-key"] for h in server.calls("/flaky")] == ["k-1"] * 3


# --- 4. Bounded in time ----------------------------------------------------------------------


def _trickling(head_too: bool) -> FaultyServer:
    server = FaultyServer()
    body = b'{"ok": true}' + b" " * 200
    server.routes["/slow"] = trickle(200, body, interval=0.25, head_too=head_too, limit_s=40)
    return server


@pytest.mark.parametrize("head_too", [False, True], ids=["body", "status-line-and-headers"])
def test_trickling_server_ends_at_the_default_deadline(head_too):
    """1 s timeout x 3 attempts: the default deadline is 3 s; a byte every 0.25 s never trips
    httpx's per-read timeout, so before the fix the call lasted as long as the server wanted."""
    with _trickling(head_too) as server:
        lines: list[str] = []
        with _client(server, "k" * 20, lines, timeout_seconds=1.0, max_attempts=3) as client:
            started = time.monotonic()
            with pytest.raises(ApiError) as err:
                client.get_json("/slow")
            elapsed = time.monotonic() - started
    assert elapsed < 3 + 2, elapsed
    message = str(err.value)
    assert "svc (test)" in message and "GET /slow" in message and "3s deadline" in message


def test_trickling_server_with_explicit_deadline_and_3s_timeout():
    """The issue's probe (3 s timeout, one byte at a time), with ``deadline_seconds=4``."""
    from resources.http_api import ApiDeadlineError

    with _trickling(head_too=False) as server:
        lines: list[str] = []
        with _client(server, "k" * 20, lines, timeout_seconds=3.0, deadline_seconds=4) as client:
            started = time.monotonic()
            with pytest.raises(ApiDeadlineError, match=r"svc \(test\): GET /slow .*4s deadline"):
                client.get_json("/slow")
            assert time.monotonic() - started < 4 + 2


def test_trickled_body_ends_at_the_deadline_with_a_caller_transport():
    """A caller's own transport has no deadline sockets: the body loop still checks the clock."""
    import httpx

    with _trickling(head_too=False) as server:
        lines: list[str] = []
        client = _client(
            server, "k" * 20, lines, deadline_seconds=2, transport=httpx.HTTPTransport()
        )
        started = time.monotonic()
        with client, pytest.raises(ApiError, match=r"GET /slow .*2s deadline.*reading the body"):
            client.get_json("/slow")
        assert time.monotonic() - started < 2 + 2


def test_retry_after_never_sleeps_past_the_deadline():
    with FaultyServer() as server:
        server.routes["/busy"] = respond(503, b"{}", headers={"Retry-After": "8"})
        lines: list[str] = []
        with _client(server, "k" * 20, lines, timeout_seconds=1.0, max_attempts=3) as client:
            started = time.monotonic()
            with pytest.raises(ApiError, match=r"POST /busy .*3s deadline.*HTTP 503"):
                client.post_json("/busy", {})
            assert time.monotonic() - started < 3
        assert len(server.calls("/busy")) == 1 and lines == []


def test_deadline_must_be_positive():
    with pytest.raises(ValueError, match="deadline_seconds must be positive"):
        ApiClient(service="s", base_url="http://127.0.0.1:9", headers={}, secrets=[],
                  deadline_seconds=0)  # fmt: skip


# --- 4. Bounded in size ------------------------------------------------------------------------

HUGE = 300 * 1024 * 1024


def _peak_rss_reset() -> None:
    """Reset VmHWM (Linux: writing 5 to clear_refs) so an earlier test's peak cannot hide ours."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.parametrize(
    ("status", "declare_length", "expected"),
    [
        (200, True, "8 MiB cap"),
        (200, False, "8 MiB cap"),
        (500, True, "HTTP 500"),
        (500, False, "HTTP 500"),
    ],
    ids=["200-declared", "200-streamed", "500-declared", "500-streamed"],
)
def test_300mb_body_is_not_read_into_memory(status, declare_length, expected):
    with FaultyServer() as server:
        server.routes["/big"] = flood(status, HUGE, declare_length=declare_length)
        lines: list[str] = []
        with _client(server, "k" * 20, lines, timeout_seconds=30.0) as client:
            _peak_rss_reset()
            before = _peak_rss_bytes()
            with pytest.raises(ApiError) as err:
                client.get_json("/big")
            grown = _peak_rss_bytes() - before
    assert grown < 50 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    message = str(err.value)
    assert expected in message and "svc (test)" in message and "GET /big" in message
    assert len(message) < 1200
    if status == 200:
        assert len(server.calls("/big")) == 1  # over the cap is final, not retried


def test_body_just_under_the_cap_is_read():
    with FaultyServer() as server:
        body = json.dumps({"pad": "x" * 1000}).encode()
        server.routes["/fits"] = respond(200, body)
        lines: list[str] = []
        with _client(server, "k" * 20, lines, max_body_bytes=len(body)) as client:
            assert client.get_json("/fits")["pad"] == "x" * 1000
        client = _client(server, "k" * 20, lines, max_body_bytes=len(body) - 1)
        with client, pytest.raises(ApiError, match=f"over the {len(body) - 1} bytes cap"):
            client.get_json("/fits")


# --- 4. A 2xx whose body is not JSON -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"<html><body>Proxy error KEY</body></html>", b"", b'{"orgs": [', b"\xff\xfe\x00KEY"],
    ids=["html", "empty", "cut-json", "not-utf8"],
)
def test_200_not_json_is_one_clear_final_error(body):
    from resources.http_api import ApiResponseError

    secret = _secret(24, 3)
    body = body.replace(b"KEY", secret.encode())
    with FaultyServer() as server:
        server.routes["/page"] = respond(200, body, content_type="text/html")
        lines: list[str] = []
        with _client(server, secret, lines, max_attempts=3) as client:
            with pytest.raises(ApiResponseError) as err:
                client.get_json("/page")
            # A caller that takes the response and decodes it itself gets the same error.
            with pytest.raises(ApiResponseError):
                client.request("POST", "/page", json={}).json()
        assert len(server.calls("/page")) == 2  # one per call: not retried
    message = str(err.value)
    assert "svc (test): GET /page returned HTTP 200" in message and "not JSON" in message
    assert "not retried" in message and err.value.allow_retries is False
    assert lines == [] and not _leaks(secret, _readable(err.value, lines))


# --- FY2 defect 2: compressed bodies are bounded by DECODED bytes, whatever the ratio ---------

# One subprocess per case: its peak RSS is its own, and an address-space limit makes a client
# that inflates the body whole fail with MemoryError instead of taking the machine to gigabytes.
_BOMB_SCRIPT = r"""
import gzip, json, resource, sys, zlib
sys.path.insert(0, sys.argv[1])
from tests.faulty_server import FaultyServer, respond
from resources.http_api import ApiClient, RetrySettings

layers, coding, status, lie = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
zeros = b"\0" * (1 << 20)
wbits = 31 if coding == "gzip" else 15
co = zlib.compressobj(9, zlib.DEFLATED, wbits)
body = b"".join(co.compress(zeros) for _ in range(256)) + co.flush()  # 256 MiB decoded
for _ in range(int(layers) - 1):
    body = gzip.compress(body, 9)
length = {"none": len(body), "short": len(body) // 2, "long": len(body) * 2}[lie]
head = {"Content-Encoding": ", ".join([coding] * int(layers)), "Content-Length": str(length)}
resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
with FaultyServer({"/bomb": respond(status, body, headers=head)}) as server:
    client = ApiClient(service="svc (test)", base_url=server.base_url, headers={}, secrets=[],
                       timeout_seconds=30, retry=RetrySettings(max_attempts=1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        client.get_json("/bomb")
        message = "no error"
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"grown_kib": grown, "message": message, "hits": len(server.hits)}))
"""


@pytest.mark.parametrize(
    ("layers", "coding", "status", "lie", "expected"),
    [
        (1, "gzip", 200, "none", "with a body that kept going, over the 8 MiB cap"),
        (1, "gzip", 500, "none", "failed after 1 attempts; last error: HTTP 500"),
        (2, "gzip", 200, "none", "stacks 2 codings (gzip, gzip); only one of gzip or deflate"),
        (2, "gzip", 500, "none", "(body not read: Content-Encoding stacks 2 codings (gzip, gzip)"),
        (3, "gzip", 200, "none", "stacks 3 codings"),
        (1, "deflate", 200, "none", "with a body that kept going, over the 8 MiB cap"),
        (1, "deflate", 503, "none", "last error: HTTP 503"),
        (1, "gzip", 200, "short", "with a body that kept going, over the 8 MiB cap"),
        (2, "gzip", 200, "long", "stacks 2 codings"),
        (1, "gzip", 502, "long", "last error: HTTP 502"),
    ],
    ids=[
        "gzip-200",
        "gzip-500",
        "gzip2-200",
        "gzip2-500",
        "gzip3-200",
        "deflate-200",
        "deflate-503",
        "gzip-length-short",
        "gzip2-length-long",
        "gzip-502-length-long",
    ],
)
def test_compressed_bomb_is_bounded_by_decoded_bytes(
    tmp_path, layers, coding, status, lie, expected
):
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "bomb.py"
    script.write_text(_BOMB_SCRIPT)
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, str(script), root, str(layers), coding, str(status), lie],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    message = result["message"]
    assert expected in message, message
    assert "svc (test)" in message and "GET /bomb" in message and "\n" not in message
    assert len(message) < 1200
    assert result["grown_kib"] < 64 * 1024, f"peak RSS grew by {result['grown_kib'] // 1024} MiB"
    assert result["hits"] == 1


def test_decoder_accepts_one_layer_and_identity():
    import gzip
    import zlib

    payload = json.dumps({"pad": "x" * 5000}).encode()
    raw_deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    bodies = {
        "gzip": gzip.compress(payload),
        "x-gzip": gzip.compress(payload),
        "deflate": zlib.compress(payload),
        "identity": payload,
        "identity, gzip": gzip.compress(payload),
        "": payload,
    }
    bodies_raw = raw_deflate.compress(payload) + raw_deflate.flush()
    with FaultyServer() as server:
        for i, (coding, body) in enumerate([*bodies.items(), ("deflate", bodies_raw)]):
            head = {"Content-Encoding": coding} if coding else {}
            server.routes[f"/ok{i}"] = respond(200, body, headers=head)
        server.routes["/br"] = respond(200, b"xx", headers={"Content-Encoding": "br"})
        cut = gzip.compress(payload)[:40]  # Content-Length says 40: the stream ends early
        server.routes["/cut"] = respond(200, cut, headers={"Content-Encoding": "gzip"})
        lines: list[str] = []
        with _client(server, "k" * 20, lines) as client:
            for i in range(len(bodies) + 1):
                assert client.get_json(f"/ok{i}") == {"pad": "x" * 5000}
            from resources.http_api import ApiResponseError

            with pytest.raises(ApiResponseError, match="Content-Encoding br is not accepted"):
                client.get_json("/br")
            with pytest.raises(ApiResponseError, match="body ends before its compressed stream"):
                client.get_json("/cut")
        assert server.hits[0].headers["accept-encoding"] == "gzip, deflate"


# --- FY2 defect 3: a secret echoed with escapes is unescaped before it is scrubbed -----------

ESC_KEYS = ["ca_root_Zx9/Qw3+Lm7/Hp2Kd8Vb", 'k"ey\\wi/th-quo"tes&amp%41', "pässwört-€-𝄞-geheim"]


def _escapes(char: str) -> list[str]:
    """Every form a server may give one character (JSON, Python, HTML, percent)."""
    code = ord(char)
    forms = [f"&#x{code:x};", f"&#{code};", "".join(f"%{b:02X}" for b in char.encode())]
    if code > 0xFFFF:
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        forms.append(f"\\u{high:04x}\\u{low:04X}")
    else:
        forms.append(f"\\u{code:04x}")
    if code < 0x100:
        forms.append(f"\\x{code:02x}")
    if char in '/"\\':
        forms.append("\\" + char)
    return forms


def _consistent(variant: str) -> bool:
    """Left out: a raw backslash right before a backslash escape ("\\\\u0077"), which any
    reader (JSON included) takes as an escaped backslash; servers escape both or neither."""
    return "\\\\u" not in variant and "\\\\x" not in variant


def _escaped_variants(key: str) -> list[str]:
    import random

    variants = []
    for i, char in enumerate(key):  # every single position, in every form
        for form in _escapes(char):
            variants.append(key[:i] + form + key[i + 1 :])
    rng = random.Random(14)
    for _ in range(60):  # random subsets of positions, each in a random form
        variants.append("".join(rng.choice(_escapes(c)) if rng.random() < 0.5 else c for c in key))
    return [v for v in variants if _consistent(v)]


def _key_leaks(key: str, text: str) -> list[str]:
    return [key[i : i + 4] for i in range(len(key) - 3) if key[i : i + 4] in text]


@pytest.mark.parametrize("key", ESC_KEYS, ids=["base64ish", "quotes-backslash", "non-ascii"])
def test_escaped_secret_in_raw_error_text_leaves_no_piece(key):
    from resources.http_api import detail_of

    for escaped in _escaped_variants(key):
        bodies = [
            # invalid JSON: trailing text after a valid object
            ('{"detail": "invalid key ' + escaped + '"} <!-- cache -->', False),
            ("<html>bad key " + escaped + "</html>", False),
            ('{"detail": "invalid key ' + escaped + '", "trace": "' + "x" * 600, True),
        ]
        # cut by the read cap at every offset through the escaped key
        bodies += [('{"detail": "' + escaped[:n], True) for n in range(len(escaped) + 1)]
        for body, cut in bodies:
            shown = detail_of(body.encode(), [key], cut=cut)
            assert not _key_leaks(key, shown), (escaped, body[-80:], shown[-80:])


def test_probe_escaped_key_bodies_over_http_leave_no_piece():
    key = ESC_KEYS[0]
    cases = {
        "/php-big": json.dumps({"detail": "invalid key " + key, "trace": "x" * 70000})
        .replace("/", "\\/")
        .encode(),
        "/uesc-big": b'{"detail": "invalid key '
        + key.replace("Q", "\\u0051").encode()
        + b'", "pad": "'
        + b"x" * 70000
        + b'"}',
        "/php-bad": (
            json.dumps({"detail": "invalid key " + key}).replace("/", "\\/") + " <!-- cache -->"
        ).encode(),
        "/pct-200": b"<html>" + key.replace("/", "%2F").replace("+", "%2B").encode() + b"</html>",
    }
    with FaultyServer() as server:
        for path, body in cases.items():
            server.routes[path] = respond(200 if "200" in path else 422, body)
        lines: list[str] = []
        with _client(server, key, lines) as client:
            for path in cases:
                with pytest.raises(ApiError) as err:
                    client.post_json(path, {})
                readable = _readable(err.value, lines)
                assert "invalid key [REDACTED]" in str(err.value) or "200" in path
                assert not [p for t in readable for p in _key_leaks(key, t)], path


# --- FY2 defect 4: a header-carried secret must be visible ASCII, refused before any request --

BAD_CHARS = [chr(c) for c in [*range(0x20), 0x7F]] + [" ", "\u00a0", "é", "€", "\u2028", "𝄞"]


def test_header_secret_with_a_bad_character_is_refused_before_any_request():
    base = "ca_root_Zx9Qw3Lm7Hp2Kd8Vb"
    with FaultyServer({"/admin/orgs": respond(200, b"{}")}) as server:
        for char in BAD_CHARS:
            for position in (0, len(base) // 2, len(base)):
                key = base[:position] + char + base[position:]
                with pytest.raises(ValueError) as err:
                    ApiClient(
                        service="platform API (test)",
                        base_url=server.base_url,
                        headers={"X-CA-Root-Key": key},
                        secrets=[key],
                    )
                message = str(err.value)
                assert "\n" not in message and "header X-CA-Root-Key" in message
                assert f"at position {position + 1} of {len(key)}" in message
                assert "visible ASCII" in message and not _key_leaks(key, message)
                assert not _key_leaks(key, repr(err.value))
        assert server.hits == []


def test_transport_text_quoting_a_secret_as_bytes_is_scrubbed():
    from resources.http_api import redact_then_truncate, scrub

    base = "ca_root_Zx9Qw3Lm7Hp2Kd8Vb"
    for char in BAD_CHARS:
        for position in (0, len(base) // 2, len(base)):
            key = base[:position] + char + base[position:]
            for text in (
                f"Illegal header value {key.encode('utf-8')!r}",
                f"Illegal header value {key!r}",
                f"value {json.dumps(key)} refused",
                f"value {key!a} refused",
            ):
                shown = redact_then_truncate(scrub(text, [key]), [key])
                assert not _key_leaks(key, shown), (repr(key), text, shown)


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/html; k={key}"},
        {"Content-Type": "{key}"},
        {"Content-Encoding": "gzip, {key}"},
        {"Content-Encoding": "{key}"},
        {"Content-Encoding": "gzip, gzip, gzip, gzip, gzip, gzip, {key}"},
    ],
    ids=lambda h: "/".join(f"{k}={v}" for k, v in h.items()),
)
def test_response_headers_echoing_the_key_are_never_shown(headers):
    """Headers are server text too: a Content-Type is scrubbed like the body, and a
    Content-Encoding is never echoed but for the names of known codings (it is lowercased, which
    no scrub would recognise)."""
    secret = "ca_root_Zx9Qw3Lm7Hp2Kd8Vb"
    head = {k: v.format(key=secret) for k, v in headers.items()}
    content_type = head.pop("Content-Type", "text/html")
    with FaultyServer(
        {"/x": respond(200, b"<html>not json</html>", content_type=content_type, headers=head)}
    ) as server:
        lines: list[str] = []
        with _client(server, secret, lines) as client, pytest.raises(ApiError) as caught:
            client.request_json("GET", "/x")
    text = "\n".join(_readable(caught.value, lines))
    for piece in {secret[i : i + 4].lower() for i in range(len(secret) - 3)}:
        assert piece not in text.lower(), text
