"""The webhook senders (``resources.webhook_senders``) against a real loopback HTTP server.

The default sender is the standard library's ``http.client`` (for CPU per POST, see the module);
these tests hold it to what httpx gave before: keep-alive, the Idempotency-Key, Basic auth from
``user:password@host``, no redirect following, redacted error texts, a fresh try on a kept-alive
connection the receiver closed, and httpx (with the proxy) whenever a proxy applies.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from collections.abc import Iterator

import pytest

from resources.notifier import OutboxDelivery, TriggersNotifierResource
from resources.webhook_senders import (
    HttpClientSender,
    HttpxSender,
    make_sender,
    webhook_url_problem,
)
from tests.support.webhook import Answer, WebhookReceiver

HOOK = "/hook/s3cr3t-token"
OK: Answer = (200, b"", {})
CLOSE: Answer = (200, b"", {"Connection": "close"})


@pytest.fixture
def recorder() -> Iterator[WebhookReceiver]:
    """The suite's receiver, looked at on the wire: ``requests`` holds (target, headers, client
    address) of each POST; a test sets ``answer`` / ``delay`` per request number."""
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def no_proxy(monkeypatch):
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


def _post(sender, rows):
    try:
        return sender.start(rows)()
    finally:
        sender.close()


def test_keys_keep_alive_and_basic_auth(recorder, no_proxy):
    url = recorder.url_for(f"{HOOK}?x=1").replace("http://", "http://ops:pa%3Ass@")
    sender = make_sender(url, 5.0, 4)
    assert isinstance(sender, HttpClientSender)
    errors = _post(sender, [(f"k{i}", {"i": i}) for i in range(40)])
    assert errors == [None] * 40
    assert sorted(h["Idempotency-Key"] for _, h, _ in recorder.requests) == sorted(
        f"k{i}" for i in range(40)
    )
    assert {p for p, _, _ in recorder.requests} == {"/hook/s3cr3t-token?x=1"}
    auth = base64.b64encode(b"ops:pa:ss").decode()
    assert {h["Authorization"] for _, h, _ in recorder.requests} == {f"Basic {auth}"}
    assert {h["Content-Type"] for _, h, _ in recorder.requests} == {"application/json"}
    # Kept alive: at most one connection per thread for 40 POSTs.
    assert len({addr for _, _, addr in recorder.requests}) <= 4


def test_errors_are_redacted_and_redirects_not_followed(recorder, no_proxy):
    url = recorder.url_for(HOOK)
    answers: dict[int, Answer] = {
        1: (500, f"boom at {url} /hook/s3cr3t-token".encode(), {}),
        2: (302, b"", {"Location": "/elsewhere"}),
    }
    recorder.answer = lambda n: answers.get(n, OK)
    sender = make_sender(url, 5.0, 1)
    errors = _post(sender, [("a", {}), ("b", {}), ("c", {})])
    assert errors[0] is not None and errors[0].startswith("HTTP 500")
    assert "s3cr3t-token" not in errors[0] and str(recorder.port) not in errors[0]
    assert errors[1] is not None and errors[1].startswith("HTTP 302")
    assert errors[2] is None
    assert [p for p, _, _ in recorder.requests] == ["/hook/s3cr3t-token"] * 3  # no /elsewhere


def test_closed_and_long_answers_reconnect(recorder, no_proxy):
    """A receiver that closes after answering, or answers more than is read: the next POST goes
    on a fresh connection and succeeds; a refused connection is one redacted error per row."""
    answers: dict[int, Answer] = {2: CLOSE, 4: (200, b"x" * 200_000, {})}
    recorder.answer = lambda n: answers.get(n, OK)
    sender = make_sender(recorder.url_for(HOOK), 5.0, 1)
    assert _post(sender, [(f"k{i}", {}) for i in range(6)]) == [None] * 6
    conns = [addr for _, _, addr in recorder.requests]
    assert conns[0] == conns[1] != conns[2] == conns[3] != conns[4]
    port = recorder.port
    recorder.close()
    errors = _post(make_sender(f"http://127.0.0.1:{port}/hook/s3cr3t-token", 2.0, 2), [("z", {})])
    assert errors[0] is not None and "s3cr3t-token" not in errors[0]


def test_a_proxy_in_the_environment_is_honoured(recorder, monkeypatch):
    """With HTTP_PROXY set, POSTs go through it (httpx), to the webhook URL in absolute form;
    NO_PROXY naming the host goes direct again."""
    target = "http://127.0.0.2:9/hook"  # loopback; reached only through the proxy
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{recorder.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    sender = make_sender(target, 5.0, 2)
    assert isinstance(sender, HttpxSender)
    assert _post(sender, [("p", {"x": 1})]) == [None]
    assert recorder.requests[0][0] == target
    monkeypatch.setenv("NO_PROXY", "127.0.0.2")
    assert isinstance(make_sender(target, 5.0, 2), HttpClientSender)


def test_all_proxy_is_honoured_too(recorder, no_proxy, monkeypatch):
    target = "http://127.0.0.2:9/hook"
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{recorder.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    sender = make_sender(target, 5.0, 1)
    assert isinstance(sender, HttpxSender)
    assert _post(sender, [("p", {})]) == [None]
    assert recorder.requests[0][0] == target


def test_a_timed_out_post_is_not_sent_again(recorder, no_proxy):
    """A timeout on a kept-alive connection is an answer not yet given, not a stale connection:
    the row stays pending (one error), it is not POSTed a second time at once.

    The answer to "slow" is held until the sender has returned, so it times out whatever the
    machine's load; the other two have the whole 5 s timeout to be answered.
    """
    release = threading.Event()
    recorder.before_answer = lambda key: release.wait(120) if key == "slow" else None
    sender = make_sender(recorder.url_for(HOOK), 5.0, 1)
    try:
        errors = _post(sender, [("first", {}), ("slow", {}), ("third", {})])
    finally:
        release.set()
    assert errors[0] is None and errors[2] is None
    assert errors[1] is not None and "timed out" in errors[1]
    keys = [h["Idempotency-Key"] for _, h, _ in recorder.requests]
    assert keys.count("slow") == 1, keys


ECHOES = [
    "path /hook/S3cr3tTok3n/x not found",
    '{"e": "no hook \\/hook\\/S3cr3tTok3n\\/x"}',
    "bad signature SIGNATURE99",
    "HTTP://127.0.0.1:{port}/HOOK/s3cr3ttok3n/X?SIG=SIGNATURE99",
    "encoded %2Fhook%2FS3cr3tTok3n%2Fx",
    "password pa55word!",
]


@pytest.mark.parametrize("echo", ECHOES)
def test_an_echoed_secret_never_reaches_the_error(recorder, no_proxy, echo):
    body = echo.replace("{port}", str(recorder.port)).encode()
    recorder.answer = lambda n: (404, body, {})
    url = recorder.url_for("/hook/S3cr3tTok3n/x?sig=SIGNATURE99").replace(
        "http://", "http://ops:pa55word!@"
    )
    [error] = _post(make_sender(url, 5.0, 1), [("k", {})])
    assert error is not None and error.startswith("HTTP 404")
    for secret in ("S3cr3tTok3n", "s3cr3ttok3n", "SIGNATURE99", "pa55word"):
        assert secret not in error, error


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (openssl), as (cert, key)."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


def test_https_verifies_the_certificate_like_every_other_client(certificate, no_proxy, monkeypatch):
    """Certificates are verified against the project's trust (certifi, or SSL_CERT_FILE): a
    self-signed receiver is refused, and accepted once SSL_CERT_FILE names its certificate."""
    with WebhookReceiver(tls=certificate) as server:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        [error] = _post(make_sender(server.url_for(HOOK), 5.0, 1), [("a", {})])
        assert error is not None and "CERTIFICATE_VERIFY_FAILED" in error
        assert "s3cr3t-token" not in error
        monkeypatch.setenv("SSL_CERT_FILE", certificate[0])
        assert _post(make_sender(server.url_for(HOOK), 5.0, 1), [("b", {})]) == [None]
        assert [h["Idempotency-Key"] for _, h, _ in server.requests] == ["b"]


BAD_URLS = [
    "ftp://host/s3cr3t-token",
    "hooks.slack.example/s3cr3t-token",
    "http:///s3cr3t-token",
    "http://host:99999/s3cr3t-token",
    "http://host:port/s3cr3t-token",
    "https://host/s3cr3t-token with space",
    "https://host/s3cr3t-token\r\nX-Injected: 1",
    "javascript:alert('s3cr3t-token')",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_webhook_url_is_one_line_without_the_value(url, monkeypatch):
    problem = webhook_url_problem(url, "X")
    assert problem and "\n" not in problem and "s3cr3t-token" not in problem
    with pytest.raises(Exception) as caught:
        TriggersNotifierResource(webhook_url=url).delivery()
    assert "webhook_url" in str(caught.value) and "s3cr3t-token" not in str(caught.value)
    monkeypatch.setenv("TRIGGERS_WEBHOOK_URL", url)  # the env var default is checked too
    with pytest.raises(Exception) as caught:
        TriggersNotifierResource().delivery()
    assert "TRIGGERS_WEBHOOK_URL" in str(caught.value)
    with pytest.raises(ValueError):
        OutboxDelivery(webhook_url=url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/hook", "https://hooks.example.com/services/T0/B0/x?y=1"]
)
def test_good_webhook_urls(url):
    assert webhook_url_problem(url, "X") is None
    assert TriggersNotifierResource(webhook_url=url).delivery().webhook_url == url
