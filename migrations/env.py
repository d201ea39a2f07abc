"""Alembic environment of Ballast's history store.

`orchestrator.store.migrate` runs Alembic in-process and hands over an open
connection (`config.attributes["connection"]`); the `alembic` command line,
for developers, resolves the database like `ballast db` does (`-x db=...`,
then `$BALLAST_DB`, then the production default). Batch mode is on, so every
migration can alter tables on SQLite.
"""

from __future__ import annotations

import logging.config

from alembic import context
from sqlalchemy import Connection

from orchestrator.store.engine import make_oneshot_engine, resolve_db_url, write_transaction
from orchestrator.store.schema import metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
    )


def _run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _configure(given)
        with context.begin_transaction():
            context.run_migrations()
        return
    if config.config_file_name is not None:
        logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = resolve_db_url(context.get_x_argument(as_dictionary=True).get("db"))
    engine = make_oneshot_engine(url, create=True)
    try:
        with write_transaction(engine, migrating=True) as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def _run_offline() -> None:
    url = resolve_db_url(context.get_x_argument(as_dictionary=True).get("db"))
    context.configure(
        url=url,
        target_metadata=metadata,
        render_as_batch=True,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
