"""WSGI entry point: ``gunicorn -c infra/gunicorn.conf.py wsgi:app``.

Configuration comes from the environment (``DATABASE_URL`` is required here; ``saas dev`` is
the command that starts an embedded PostgreSQL).
"""

import sys

from saas import SettingsError, create_app

try:
    app = create_app()
except SettingsError as exc:  # one line, not a traceback per worker; gunicorn stops on exit code 3
    print(f"error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(3) from None
