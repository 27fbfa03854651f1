"""The suite's one webhook receiver: a real HTTP server on 127.0.0.1 that records every POST."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # kept-alive connections do not hold up the close
    request_queue_size = 256  # 5 by default: 32 concurrent connects would be refused


# What ``answer`` gives for the n-th request (1-based, in the order received): status, body and
# extra headers (``Connection: close`` closes the connection after the answer).
Answer = tuple[int, bytes, dict[str, str]]


class WebhookReceiver:
    """Records every POST (Idempotency-Key, JSON body); ``delay`` slows each answer; ``status``
    is the answer's code, or a function of the Idempotency-Key giving it. HTTP/1.1 with
    keep-alive (``keep_alive=False``: HTTP/1.0, a connection per request). ``in_flight`` and
    ``max_in_flight`` count requests received and not yet answered; ``connections`` holds the
    client address of each connection used; ``before_answer(key)`` runs before each answer (a
    test's fault injection); ``body`` is what an answer says.

    For tests of the HTTP client itself: ``requests`` holds (request target, headers, client
    address) of each POST as received (the target is absolute when the receiver is used as a
    proxy); ``answer(n)`` (:data:`Answer`), when given, decides the n-th answer instead of
    ``status`` and ``body``; ``delay`` may be a function of n; ``tls`` = (cert, key) serves
    HTTPS; ``url_for(path)`` and ``port`` address it; ``close()`` stops it (refusing from then on).
    """

    def __init__(
        self,
        delay: float | Callable[[int], float] = 0.0,
        status: int | Callable[[str | None], int] = 200,
        keep_alive: bool = True,
        before_answer: Callable[[str | None], None] | None = None,
        body: bytes = b"",
        answer: Callable[[int], Answer] | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.delay = delay
        self.status = status
        self.before_answer = before_answer
        self.body = body
        self.answer = answer
        self.connections: set[tuple] = set()
        self.posts: list[tuple[str, dict]] = []
        self.answered: list[tuple[str | None, int]] = []
        self.requests: list[tuple[str, dict[str, str], tuple]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers.get("Idempotency-Key")
                with receiver._lock:
                    receiver.in_flight += 1
                    receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
                    receiver.connections.add(self.client_address)
                    receiver.requests.append((self.path, dict(self.headers), self.client_address))
                    n = len(receiver.requests)
                try:
                    if receiver.before_answer:
                        receiver.before_answer(key)
                    delay = receiver.delay(n) if callable(receiver.delay) else receiver.delay
                    if delay:
                        time.sleep(delay)
                    if receiver.answer is not None:
                        status, answer_body, headers = receiver.answer(n)
                    else:
                        status = (
                            receiver.status(key) if callable(receiver.status) else receiver.status
                        )
                        answer_body, headers = receiver.body, {}
                    with receiver._lock:
                        receiver.posts.append((key, body))
                        receiver.answered.append((key, status))
                finally:
                    with receiver._lock:
                        receiver.in_flight -= 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer_body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                if headers.get("Connection", "").lower() == "close":
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(answer_body)

            def log_message(self, *args):
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self.url = self.url_for("/hook")
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url_for(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and close the socket (connections are refused from then on); idempotent."""
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    def key_counts(self) -> Counter:
        with self._lock:
            return Counter(k for k, _ in self.posts)

    def acknowledged(self) -> Counter:
        """Keys answered 2xx, with how many times."""
        with self._lock:
            return Counter(k for k, status in self.answered if status < 300)
