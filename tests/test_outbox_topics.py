"""Every outbox topic the code enqueues has a worker handler: a topic without one becomes a
dead letter on its first delivery, and nobody hears of the side effect it stood for."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from saas import worker

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _topic(node: ast.expr, module: str) -> str:
    """The topic argument's value: a string literal, or a module-level constant (``NAME`` or
    ``module.NAME``) read from the imported module."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    namespace = vars(importlib.import_module(module))
    if isinstance(node, ast.Name):
        value = namespace[node.id]
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        value = getattr(namespace[node.value.id], node.attr)
    else:
        raise AssertionError(f"{module}: enqueue topic must be a literal or a constant: {ast.unparse(node)}")
    assert isinstance(value, str), (module, ast.unparse(node))
    return value


def enqueued_topics() -> dict[str, list[str]]:
    """topic -> the places (``module:line``) that enqueue it, from every ``enqueue(session, topic,
    ...)`` call in ``saas/`` and ``tenants/``."""
    found: dict[str, list[str]] = {}
    for package in ("saas", "tenants"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = _module_name(path)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name != "enqueue" or module == "saas.outbox":
                    continue
                arg = next((k.value for k in node.keywords if k.arg == "topic"), None)
                if arg is None:
                    assert len(node.args) >= 2, f"{module}:{node.lineno}: enqueue without a topic"
                    arg = node.args[1]
                found.setdefault(_topic(arg, module), []).append(f"{module}:{node.lineno}")
    return found


def test_every_enqueued_topic_has_a_registered_handler():
    topics = enqueued_topics()
    # the scan sees the known producers (it cannot pass by finding nothing)
    assert {"mail.invitation", "mail.security", "mail.trial_will_end", "billing.sync_seats"} <= set(topics)
    registered = worker.load_handlers()
    missing = {topic: where for topic, where in topics.items() if topic not in registered}
    assert missing == {}
