"""A live look at Ballast's xenstore layer: what ``./scripts/demo`` shows for now.

It starts the xenstored-compatible daemon, introduces a few guests, and runs
a fake agent per guest (writing its memory figures under ``data/`` through its
own guest socket) and a fake controller (dom0, watching the guests' reports and
answering with ``memory/target``). Every second it prints the tree under
``/local/domain`` in ``xenstore-ls`` style, redrawn in place on a terminal.
It stops by itself after ``--seconds`` (20 by default) or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from orchestrator.xenstore.client import ClientSettings, PyxsClient
from orchestrator.xenstore.errors import XenstoreError
from orchestrator.xenstore.server import XenstoreServer

GUESTS = {1: ("web", 2048), 2: ("db", 4096), 3: ("batch", 1024)}  # domid: (name, MiB)
SETTINGS = ClientSettings(timeout_s=2.0)


async def fake_agent(
    server: XenstoreServer, domid: int, total_mib: int, stop: asyncio.Event
) -> None:
    """A guest writing its memory state, as the real agent will, on its own socket."""
    total_kb = total_mib * 1024
    free_kb = total_kb // 2
    seq = 0
    async with PyxsClient(socket_path=server.domain_socket(domid), settings=SETTINGS) as xs:
        while not stop.is_set():
            free_kb = min(max(free_kb + random.randint(-60_000, 60_000), 50_000), total_kb)
            seq += 1
            await xs.write("data/meminfo_total", str(total_kb))
            await xs.write("data/meminfo_free", str(free_kb))
            report = {"v": 1, "seq": seq, "mem_total_kb": total_kb, "mem_free_kb": free_kb}
            await xs.write("data/ballast/report", json.dumps(report, separators=(",", ":")))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), random.uniform(0.5, 1.5))


async def fake_controller(server: XenstoreServer, stop: asyncio.Event) -> None:
    """dom0 watching every guest's data/ and answering with a balloon target."""
    xs = PyxsClient(socket_path=server.privileged_socket, settings=SETTINGS)
    async with xs, xs.watch("/local/domain") as changes:
        async for path in changes:
            if stop.is_set():
                return
            if not path.endswith("/data/ballast/report"):
                continue
            home = path.removesuffix("/data/ballast/report")
            with contextlib.suppress(XenstoreError, ValueError):
                report = json.loads(await xs.read(path))
                used_kb = report["mem_total_kb"] - report["mem_free_kb"]
                await xs.write(f"{home}/memory/target", str(used_kb + used_kb // 4))


async def tree(xs: PyxsClient, path: str, depth: int = 0) -> list[str]:
    """``xenstore-ls``-style lines for everything below ``path``."""
    lines = []
    for name in await xs.directory(path):
        child = f"{path.rstrip('/')}/{name}"
        value = (await xs.read(child)).decode("ascii", "backslashreplace")
        lines.append(f"{' ' * depth}{name} = \"{value}\"")
        lines.extend(await tree(xs, child, depth + 1))
    return lines


async def run(seconds: float) -> None:
    """Run the demo for ``seconds`` or until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    workdir = Path(tempfile.mkdtemp(prefix="ballast-demo-", dir="/tmp"))
    live = sys.stdout.isatty()
    try:
        async with XenstoreServer(workdir) as server:
            for domid, (name, _mib) in GUESTS.items():
                await server.introduce(domid, name=name)
            async with PyxsClient(socket_path=server.privileged_socket, settings=SETTINGS) as xs:
                for domid, (_name, mib) in GUESTS.items():
                    await xs.write(f"/local/domain/{domid}/memory/static-max", str(mib * 1024))
                    await xs.write(f"/local/domain/{domid}/memory/target", str(mib * 1024))
                tasks = [asyncio.create_task(fake_agent(server, d, mib, stop), name=f"agent-{d}")
                         for d, (_n, mib) in GUESTS.items()]  # fmt: skip
                tasks.append(asyncio.create_task(fake_controller(server, stop), name="controller"))
                sock = server.privileged_socket
                print(f"xenstored serving {sock}; try, while this runs:\n"
                      f"  XENSTORED_PATH={sock} xenstore-ls /local/domain\n")  # fmt: skip
                started = loop.time()
                frame = 0
                while not stop.is_set() and loop.time() - started < seconds:
                    lines = await tree(xs, "/local/domain")
                    left = seconds - (loop.time() - started)
                    header = (f"/local/domain ({len(server.store)} nodes, "
                              f"{sum(server.requests.values())} requests served, "
                              f"{left:.0f} s left, Ctrl-C stops)")  # fmt: skip
                    if live:
                        sys.stdout.write("\x1b[H\x1b[J" + header + "\n" + "\n".join(lines) + "\n")
                        sys.stdout.flush()
                    elif frame % 5 == 0:  # keep logs of non-interactive runs short
                        print(header, *lines, "", sep="\n", flush=True)
                    frame += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                stop.set()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        print("demo finished: daemon stopped, sockets removed")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m orchestrator.xenstore.demo``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to run (default 20)")
    args = parser.parse_args(argv)
    asyncio.run(run(args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
