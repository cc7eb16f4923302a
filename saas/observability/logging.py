"""Structured JSON logs (structlog over the standard library's logging).

Every record, ours or a library's, is one JSON object per line on stderr:
``{"timestamp", "level", "logger", "event", ...fields}``. ``LOG_FORMAT=console`` (the default of
``saas dev``) renders the same for people: one line each, ``timestamp [level] event
key=value ...`` (structlog's ``ConsoleRenderer``), in colour only when the stream is a terminal
(``isatty()``); a library's own ANSI colour codes (the Werkzeug development server's) are
removed in both formats.

Secrets never reach the output: :func:`redact` drops the values of keys that name a secret
(password, token, secret, authorization, cookie, code, ...) at any depth and masks anything
that looks like a JWT or a bearer credential inside strings. The request log itself only holds
ids, the route template and timings (never bodies, headers or query strings).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

import orjson
import structlog

from saas.memo import Memo

SECRET_KEY_RE = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|authorization|cookie|api[_-]?key|private|credential|otp|^code$)",
    re.IGNORECASE,
)
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER_RE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
REDACTED = "[redacted]"


#: a string can hold a JWT or a credential only if this matches (one scan, usually no match)
_SUSPECT_RE = re.compile(r"eyJ|bearer|basic", re.IGNORECASE)
_BEARER_REPLACEMENT = r"\1 " + REDACTED
#: key -> whether it names a secret (a pure function; keys come from code, so the set is small)
_KEY_VERDICTS: Memo[str, bool] = Memo("observability.secret_key_verdicts", maxsize=4096)
_SCALARS = (int, float, bool, type(None))


def _secret_key(key: Any) -> bool:
    key = str(key)
    verdict = _KEY_VERDICTS.get(key)
    if verdict is None:
        verdict = _KEY_VERDICTS.put(key, SECRET_KEY_RE.search(key) is not None)
    return verdict


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        if _SUSPECT_RE.search(value) is None:
            return value
        value = _JWT_RE.sub(REDACTED, value)
        return _BEARER_RE.sub(_BEARER_REPLACEMENT, value)
    if isinstance(value, _SCALARS) or depth > 6:
        return value
    if isinstance(value, dict):
        return {k: (REDACTED if _secret_key(k) else _scrub(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, depth + 1) for v in value)
    return value


def scrub_value(value: Any) -> Any:
    """``value`` with JWTs and bearer/basic credentials masked inside strings and the values of
    secret-named keys dropped at any depth (what :func:`redact` does to one field)."""
    return _scrub(value)


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: a library's terminal colour codes out of the message (the Werkzeug
    development server colours its request lines); the renderer decides on colours."""
    message = event.get("event")
    if isinstance(message, str) and "\x1b" in message:
        event["event"] = _ANSI_RE.sub("", message)
    return event


def redact(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: secrets out of every field (see the module docstring)."""
    for key, value in event.items():
        if key in ("event", "logger", "level", "timestamp"):
            if isinstance(value, str):
                event[key] = _scrub(value)
        elif _secret_key(key):
            event[key] = REDACTED
        elif not isinstance(value, _SCALARS):
            event[key] = _scrub(value)
    return event


def _dumps(obj: Any, **kwargs: Any) -> str:
    """JSON text of a log event: orjson (datetimes as RFC 3339, anything else it cannot encode
    through ``str``); the standard library's encoder for what orjson refuses (an integer
    beyond 64 bits)."""
    try:
        return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(obj, default=str)


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


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (colours are for terminals only, never for a file or a pipe)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _renderer(fmt: str, stream: Any = None) -> Any:
    if fmt == "json":
        return structlog.processors.JSONRenderer(_dumps)
    colors = is_terminal(stream)
    # tracebacks without the frames' locals (they can hold a password); rich's only in colour
    tracebacks = (
        structlog.dev.RichTracebackFormatter(show_locals=False) if colors else structlog.dev.plain_traceback
    )
    return structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=tracebacks)


def formatter(fmt: str = "json", stream: Any = None) -> logging.Formatter:
    """The formatter of every handler: structlog's ProcessorFormatter, with :func:`redact`;
    ``stream`` decides whether the console format is in colour."""
    renderer = _renderer(fmt, stream)
    # JSON carries the traceback as a string field; the console renderer prints it itself
    exceptions = [structlog.processors.format_exc_info] if fmt == "json" else []
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder(), _drop_duplicate_message, strip_ansi],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *exceptions,
            redact,
            renderer,
        ],
    )


_configured = False


class _Unconfigured:
    """The request log before :func:`configure` ran: drops everything."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        return None

    info = warning = log

    def is_enabled_for(self, level: int) -> bool:
        return False


_request_log: Any = _Unconfigured()


def request_log() -> Any:
    """The logger of the per-request line (``saas.request``).

    It writes straight to the same stream as the root handler, in the same form (same
    processors: timestamp, level, :func:`redact`, renderer), without going through the standard
    library's logging: structlog's own filtering logger and ``WriteLogger``, its documented fast
    path, because this line is written on every request. Below the configured level its methods
    do nothing at all (``LOG_LEVEL=WARNING`` keeps only the 5xx lines).
    """
    return _request_log


def configure(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    """Route structlog through logging and give the root logger one JSON handler (idempotent:
    the handler is replaced, not added twice)."""
    global _configured, _request_log
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
    out = stream or sys.__stderr__
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(fmt, out))
    _request_log = structlog.wrap_logger(
        structlog.WriteLogger(out),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            _renderer(fmt, out),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    ).bind(logger="saas.request")
    handler._saas_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
