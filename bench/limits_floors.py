"""The two floors of the hot-path benchmark (run under gunicorn like the app).

* ``json_app``: bare Flask answering a small JSON document;
* ``pk_app``: bare Flask doing one primary-key SELECT on a pooled SQLAlchemy connection
  (``BENCH_PK_SCHEMA`` / ``BENCH_PK_ID`` name the row: a contact of the benchmark tenant).
"""

from __future__ import annotations

import os

from flask import Flask, jsonify
from sqlalchemy import create_engine, text

json_app = Flask("floor_json")


@json_app.get("/floor")
def floor_json():
    return jsonify(id="00000000-0000-0000-0000-000000000000", name="Ada Lovelace", email="ada@example.com")


pk_app = Flask("floor_pk")
_engine = None


def _get_engine():
    global _engine
    if _engine is None:
        url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
        _engine = create_engine(url, pool_size=5)
    return _engine


@pk_app.get("/floor")
def floor_pk():
    schema = os.environ["BENCH_PK_SCHEMA"]
    if not schema.startswith("t_") or not schema[2:].isalnum():
        raise ValueError("bad schema")
    with _get_engine().connect() as conn:
        row = conn.execute(
            text(f"SELECT id, name, email FROM {schema}.contacts WHERE id = :id"),  # noqa: S608 - checked
            {"id": os.environ["BENCH_PK_ID"]},
        ).one()
    return jsonify(id=str(row.id), name=row.name, email=row.email)
