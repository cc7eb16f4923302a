"""Operations: fast tenant migrations, tenant lifecycle, operator commands, the background
worker, observability. The CLI commands are registered on ``saas.cli.main`` by
:mod:`saas.ops.cli`."""
