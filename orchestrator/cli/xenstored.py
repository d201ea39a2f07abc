"""``ballast xenstored``: run Ballast's xenstored-compatible daemon.

A thin shell over :func:`orchestrator.xenstore.server.serve`: it listens on
``DIR/socket`` for dom0 and on ``DIR/domain/<domid>/socket`` for each
introduced domain, until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from orchestrator.xenstore.server import XenstoreServer, serve


def xenstored(
    directory: Path = typer.Option(
        ...,
        "--dir",
        help="Directory for the sockets: DIR/socket (dom0) and DIR/domain/<domid>/socket.",
    ),
    introduce: list[int] = typer.Option(
        [],
        "--introduce",
        "-i",
        help="Introduce this domain id at start; repeat for several.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
) -> None:
    """Run a xenstored-compatible daemon for simulation, demos and tests (until SIGTERM)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )

    def ready(server: XenstoreServer) -> None:
        domains = ", ".join(str(d) for d in server.domids) or "none yet"
        typer.echo(f"xenstored: serving {server.privileged_socket} (domains: {domains})")

    asyncio.run(serve(directory, domains=introduce, on_ready=ready))
