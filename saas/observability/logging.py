"""Structured JSON logs (structlog over the standard library's logging).

Every record, ours or a library's, is one JSON object per line on stderr:
``{"timestamp", "level", "logger", "event", ...fields}``. ``LOG_FORMAT=console`` renders the
same for people.

Secrets never reach the output: :func:`redact` drops the values of keys that name a secret
(password, token, secret, authorization, cookie, code, ...) at any depth and masks anything
that looks like a JWT or a bearer credential inside strings. The request log itself only holds
ids, the route template and timings (never bodies, headers or query strings).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

SECRET_KEY_RE = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|authorization|cookie|api[_-]?key|private|credential|otp|^code$)",
    re.IGNORECASE,
)
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER_RE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
REDACTED = "[redacted]"


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return value
    if isinstance(value, str):
        value = _JWT_RE.sub(REDACTED, value)
        return _BEARER_RE.sub(r"\1 " + REDACTED, value)
    if isinstance(value, dict):
        return {
            k: (REDACTED if SECRET_KEY_RE.search(str(k)) else _scrub(v, depth + 1)) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, depth + 1) for v in value)
    return value


def redact(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: secrets out of every field (see the module docstring)."""
    for key in list(event):
        if key in ("event", "logger", "level", "timestamp"):
            if isinstance(event[key], str):
                event[key] = _scrub(event[key])
            continue
        event[key] = REDACTED if SECRET_KEY_RE.search(key) else _scrub(event[key])
    return event


def _drop_duplicate_message(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """The standard library's ``message`` attribute repeats ``event``: keep one."""
    if event.get("message") == event.get("event"):
        event.pop("message", None)
    return event


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def formatter(fmt: str = "json") -> logging.Formatter:
    """The formatter of every handler: structlog's ProcessorFormatter, with :func:`redact`."""
    renderer = (
        structlog.processors.JSONRenderer(default=str) if fmt == "json" else structlog.dev.ConsoleRenderer()
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder(), _drop_duplicate_message],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
    )


_configured = False


def configure(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    """Route structlog through logging and give the root logger one JSON handler (idempotent:
    the handler is replaced, not added twice)."""
    global _configured
    if not _configured:
        structlog.configure(
            processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
        _configured = True
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_saas_handler", False):
            root.removeHandler(h)
    # the process's real stderr: a command's stdout/stderr swapped by a test runner (click's
    # CliRunner) or a caller must not receive log lines mixed into --json output
    handler = logging.StreamHandler(stream or sys.__stderr__)
    handler.setFormatter(formatter(fmt))
    handler._saas_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
