"""``python -m orchestrator.xenstore --dir DIR``: the daemon without the CLI's imports.

The same daemon as ``ballast xenstored``, for callers that start many of them
(tests, the simulator) and want them up in a fraction of a second.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from orchestrator.errors import BallastError
from orchestrator.xenstore.server import serve


def main(argv: list[str] | None = None) -> int:
    """Run the daemon until SIGTERM; one line on stderr and exit 1 on error."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.xenstore", description=__doc__)
    parser.add_argument("--dir", required=True, help="directory for the sockets")
    parser.add_argument("--introduce", type=int, action="append", default=[],
                        help="introduce this domain id at start (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.dir, domains=args.introduce))
    except BallastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
