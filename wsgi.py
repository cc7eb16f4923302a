"""WSGI entry point: ``gunicorn -c infra/gunicorn.conf.py wsgi:app``.

Configuration comes from the environment (``DATABASE_URL`` is required here; ``saas dev`` is
the command that starts an embedded PostgreSQL).
"""

from saas import create_app

app = create_app()
