"""A real webhook receiver for the tests and bench/webhook_fanout.py: a threaded ``http.server``
on a free loopback port that verifies each message with the ``standardwebhooks`` library, as a
tenant's consumer would.

Paths choose the behaviour: ``/ok`` and ``/ok/...`` (204 when the signature verifies with
the secret registered for the path, 400 otherwise), ``/fail`` (500 with a 4 KiB body),
``/gone`` (410), ``/redirect`` (302 to ``/ok``: must not be followed), ``/slow`` (answers only
once :attr:`Receiver.release` is set, or after 30 s); any other path answers 200.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    at: float = field(default_factory=time.time)


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.secrets: dict[str, list[str]] = {}
        self.release = threading.Event()
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path = self.path.split("?")[0]
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified = receiver.verify(path, body, headers)
                with receiver.arrived:
                    receiver.received.append(Received(path, headers, body, verified))
                    receiver.arrived.notify_all()
                if path == "/slow":
                    receiver.release.wait(30)
                if path.startswith("/ok"):
                    self._answer(204 if verified else 400, b"" if verified else b"bad signature")
                elif path == "/fail":
                    self._answer(500, b"x" * 4096)
                elif path == "/gone":
                    self._answer(410, b"gone")
                elif path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", receiver.url + "/ok")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._answer(200, b"ok")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def verify(self, path: str, body: bytes, headers: dict[str, str]) -> bool:
        """Whether the message verifies with every secret registered for ``path`` (each alone)."""
        secrets = self.secrets.get(path)
        if not secrets:
            return False
        try:
            for secret in secrets:
                Webhook(secret).verify(body, headers)
        except WebhookVerificationError:
            return False
        return True

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Block until ``count`` messages arrived in all (a liveness bound, not a measured time)."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.received) < count and time.monotonic() < deadline:
                self.arrived.wait(0.5)
        return list(self.received)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
