"""A real webhook receiver on 127.0.0.1 and small record-store helpers for the trigger tests."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import sqlalchemy as sa

from orchestration.triggers.models import alerts, notification_outbox, trigger_history


class WebhookReceiver:
    """Records every POST (Idempotency-Key, JSON body); ``delay`` slows each response."""

    def __init__(self, delay: float = 0.0, status: int = 200) -> None:
        self.delay = delay
        self.status = status
        self.posts: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._lock:
                    receiver.posts.append((self.headers.get("Idempotency-Key"), body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def key_counts(self) -> Counter:
        with self._lock:
            return Counter(k for k, _ in self.posts)


def alert_states(engine: sa.Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(alerts.c.id, alerts.c.state)).all())


def history(engine: sa.Engine, trigger: str) -> list:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(trigger_history)
            .where(trigger_history.c.trigger == trigger)
            .order_by(trigger_history.c.id)
        ).all()


def outbox(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(notification_outbox).order_by(notification_outbox.c.id)).all()
