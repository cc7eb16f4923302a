"""``python -m saas.cli``: the ``saas`` console script."""

from saas.cli import main

main()
