"""Alembic migrations of Ballast's history store (see docs/store.md).

Shipped next to the `orchestrator` package so `ballast db upgrade` finds
them from a source checkout and from an installed wheel alike.
"""
