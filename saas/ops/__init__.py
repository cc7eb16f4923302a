"""Operations: fast tenant migrations, tenant lifecycle, operator commands, the background
worker, observability. The CLI commands are in ``cli_tenants``, ``cli_migrate``, ``cli_ops``
and ``cli_worker``, each adding its own to ``saas`` with ``register(main)``
(:func:`saas.cli.create_main`)."""
