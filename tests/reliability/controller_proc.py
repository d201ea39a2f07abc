"""A Ballast controller as its own process, on a simulated host (SIGKILL it).

``python -m tests.reliability.controller_proc --config FILE --hypervisor SOCK``

What ``ballast run`` runs (``open_daemon``: the history store and its writer,
the xenstore client, the controller loop, MQTT telemetry when ``[mqtt]
broker`` is set), except that allocations come from a simulated hypervisor
answered over ``SOCK`` (``tests.reliability.harness.HypervisorService``, or
the soak's host process) instead of ``xl``: there is no Xen here. The
configuration is loaded exactly as ``ballast run`` loads it, so an unsafe
file is refused the same way. ``--speed``/``--origin`` run the controller's
clock in virtual time shared with the guests (as ``ballast sim`` does).

Prints ``ready`` on stdout after the first successful cycle; logs to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from orchestrator import config as cfg
from orchestrator.controller.daemon import open_daemon, run_until_signalled
from orchestrator.controller.loop import CycleResult, LoopSettings
from orchestrator.errors import BallastError
from orchestrator.sim.wire.clock import VirtualClock
from tests.reliability.harness import RemoteHypervisor


class _Ready:
    """Says ``ready`` once, after the first successful cycle."""

    def __init__(self) -> None:
        self.said = False

    def cycle(self, result: CycleResult) -> None:
        if not self.said:
            self.said = True
            print("ready", flush=True)


async def _main(args: argparse.Namespace) -> None:
    config = cfg.load(Path(args.config), required=True)
    logging.basicConfig(
        level=getattr(logging, (args.log_level or config.controller.log_level).upper()),
        stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    clock = None
    wall_clock = None
    scale = 1.0
    if args.speed is not None:
        virtual = VirtualClock(speed=args.speed, epoch=datetime.fromisoformat(args.epoch))
        virtual.start(args.origin)
        clock, wall_clock, scale = virtual.now_s, virtual.wall_time, args.speed
    async with open_daemon(
        config, hypervisor=RemoteHypervisor(args.hypervisor), sinks=[_Ready()],
        loop_settings=LoopSettings(min_gap_s=args.min_gap, time_scale=scale),
        clock=clock, wall_clock=wall_clock,
    ) as daemon:
        await run_until_signalled(daemon.controller)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="controller_proc", description=__doc__)
    parser.add_argument("--config", required=True, help="ballast.toml")
    parser.add_argument("--hypervisor", required=True, help="unix socket of the hypervisor")
    parser.add_argument("--log-level", default=None, help="overrides [controller] log_level")
    parser.add_argument("--min-gap", type=float, default=0.02, help="LoopSettings.min_gap_s")
    parser.add_argument("--speed", type=float, default=None, help="virtual s per wall s")
    parser.add_argument("--origin", type=float, default=0.0, help="monotonic time of virtual 0")
    parser.add_argument("--epoch", default=datetime.now(UTC).isoformat(),
                        help="wall time recorded for virtual 0 (ISO, with zone)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args))
    except BallastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
