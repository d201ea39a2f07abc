"""Console entry point of ``ballast-agent``: keep the guest process small.

The agent never speaks TLS, yet importing asyncio loads the ``ssl`` module and
OpenSSL with it (about 4.5 MiB resident, a fifth of the agent). A fresh
``ballast-agent`` process blocks that import before anything else is loaded;
asyncio supports running without ``ssl``. ``ballast agent`` in the dom0 CLI
runs the same agent without this, since other commands there may need TLS.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run ``ballast-agent``."""
    if "ssl" not in sys.modules:
        # A None entry makes "import ssl" raise ImportError (the import system's
        # documented way to block a module); asyncio then leaves TLS out.
        sys.modules["ssl"] = None  # type: ignore[assignment]
    from agents.main import main as run_agent

    run_agent()
