"""The documented structure matches the code: every endpoint's view, service and model file
(docs/architecture.md, "Where each endpoint lives")."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()
#: routes that are not the API's own (Flask's static files, flask-smorest's document)
_NOT_OURS = {"/static/<path:filename>", "/openapi.json"}


def _table() -> dict[tuple[str, str], tuple[str, ...]]:
    """{(method, path): (view, service, model)} from the endpoint table."""
    section = DOC.split("## Where each endpoint lives", 1)[1].split("\n## ", 1)[0]
    rows: dict[tuple[str, str], tuple[str, ...]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        files = tuple(c.strip("`") for c in cells[1:])
        for endpoint in re.findall(r"`([^`]+)`", cells[0]):
            methods, path = re.fullmatch(r"([A-Z, ]+) (/\S*)", endpoint).groups()
            for method in methods.split(","):
                rows[(method.strip(), path)] = files
    return rows


def test_the_endpoint_table_names_each_view_file(app):
    table = _table()
    missing, wrong = [], []
    for rule in app.url_map.iter_rules():
        if rule.rule in _NOT_OURS:
            continue
        view = app.view_functions[rule.endpoint]
        module = sys.modules[getattr(view, "view_class", view).__module__]
        view_file = Path(module.__file__).resolve().relative_to(ROOT).as_posix()
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            row = table.get((method, rule.rule))
            if row is None:
                missing.append(f"{method} {rule.rule}")
            elif row[0] != view_file:
                wrong.append(f"{method} {rule.rule}: {row[0]} is not {view_file}")
    assert missing == [] and wrong == []
    named = {f for row in table.values() for f in row if f != "—"}
    assert sorted(f for f in named if not (ROOT / f).is_file()) == []
