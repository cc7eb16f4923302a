"""Real peers the tests start on loopback: free ports, an SMTP server (aiosmtpd) that keeps what
it receives, and Debian's Chromium for the browser tests."""

from __future__ import annotations

import email
import email.message
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_available() -> bool:
    """Debian's chromium and the playwright package (its own browser download cannot work here)."""
    if not os.path.exists(CHROMIUM):
        return False
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


#: the flags this machine's Chromium needs headless as root, without network chatter
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless, through Playwright (``sync_playwright()``'s object)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


class Inbox:
    """An aiosmtpd handler keeping every message (parsed) and envelope it receives; ``url`` is
    the server's ``smtp://`` address once started by :func:`smtp_inbox`."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.envelopes: list[Any] = []
        self.url = ""

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[email.message.Message]:
        return [m for m in self.messages if m["To"].lower() == address.lower()]


@contextmanager
def smtp_inbox() -> Iterator[Inbox]:
    """A real SMTP server on a free loopback port for the block's duration."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    inbox.url = f"smtp://127.0.0.1:{port}"
    try:
        yield inbox
    finally:
        controller.stop()
