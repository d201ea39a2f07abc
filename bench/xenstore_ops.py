"""xenstore operations per second: the pyxs wrapper against a minimal codec client.

One run starts Ballast's daemon in its own process (``python -m
orchestrator.xenstore``) with ``--guests`` domains introduced, then measures on
that same daemon:

1. READ and WRITE through ``PyxsClient`` (the wrapper Ballast uses) and through
   ``RawClient`` (a minimal asyncio client on Ballast's own codec, the
   baseline), one request in flight and then ``--in-flight`` at once, printed
   side by side with the wrapper/codec ratio;
2. the daemon's throughput with one codec client per guest socket (100 by
   default, spread over ``--client-procs`` processes so the clients are not the
   limit), each writing and reading its own ``data/`` key, with the CPU the
   daemon used meanwhile (100 % means the daemon, not the clients, was the limit).

Usage: ``.venv/bin/python bench/xenstore_ops.py [--seconds 1] [--rounds 3] [--guests 100]``.
Figures depend on the machine and its load; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from orchestrator.xenstore.client import ClientSettings, PyxsClient
from orchestrator.xenstore.rawclient import RawClient
from orchestrator.xenstore.runner import ServerProcess

VALUE = b"x" * 64  # about the size of a balloon target or a meminfo key
Op = Callable[[int], Awaitable[object]]


async def rate(op: Op, *, seconds: float, in_flight: int) -> float:
    """Operations per second of ``op`` with ``in_flight`` concurrent callers."""
    loop = asyncio.get_running_loop()
    for i in range(50):  # warm up
        await op(i)
    done = 0
    stop_at = loop.time() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while loop.time() < stop_at:
            await op(i)
            i += in_flight
            done += 1

    started = loop.time()
    await asyncio.gather(*(worker(k) for k in range(in_flight)))
    return done / (loop.time() - started)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def compare(
    daemon: ServerProcess, *, seconds: float, in_flight: int, rounds: int
) -> list[str]:
    settings = ClientSettings(timeout_s=30.0)
    rows = []
    async with PyxsClient(socket_path=daemon.privileged_socket, settings=settings) as wrapper:
        raw = await RawClient.connect(daemon.privileged_socket)
        try:
            await wrapper.write("/bench/key", VALUE)
            ops: dict[str, tuple[Op, Op]] = {
                "READ": (
                    lambda i: wrapper.read("/bench/key"),
                    lambda i: raw.read("/bench/key"),
                ),
                "WRITE": (
                    lambda i: wrapper.write(f"/bench/w{i % 64}", VALUE),
                    lambda i: raw.write(f"/bench/w{i % 64}", VALUE),
                ),
            }
            for depth in (1, in_flight):
                for name, (through_wrapper, through_codec) in ops.items():
                    # Alternate the two clients and keep the medians: on a busy
                    # machine one sample of each says little.
                    ws, cs = [], []
                    for _ in range(rounds):
                        ws.append(await rate(through_wrapper, seconds=seconds, in_flight=depth))
                        cs.append(await rate(through_codec, seconds=seconds, in_flight=depth))
                    w, c = statistics.median(ws), statistics.median(cs)
                    label = f"{name} ({depth} in flight)"
                    rows.append(f"{label:<22} {w:>14,.0f} {c:>14,.0f} {w / c:>14.2f}")
        finally:
            await raw.close()
    return rows


async def _guest_share(sock_dir: str, domids: list[int], start_at: float, seconds: float) -> int:
    """One client process's share of the guests; returns the operations it completed."""
    daemon = ServerProcess(sock_dir)
    clients = [await RawClient.connect(daemon.domain_socket(d)) for d in domids]
    for c in clients:
        await c.write("data/bench", VALUE)
    await asyncio.sleep(max(start_at - time.time(), 0.0))
    stop_at = start_at + seconds
    done = 0

    async def guest(client: RawClient) -> None:
        nonlocal done
        while time.time() < stop_at:
            await client.write("data/bench", VALUE)
            await client.read("data/bench")
            done += 2

    await asyncio.gather(*(guest(c) for c in clients))
    for c in clients:
        await c.close()
    return done


def _guest_worker(sock_dir: str, domids: list[int], start_at: float, seconds: float) -> int:
    return asyncio.run(_guest_share(sock_dir, domids, start_at, seconds))


async def many_guests(daemon: ServerProcess, *, guests: int, seconds: float, procs: int) -> str:
    domids = list(range(1, guests + 1))
    shares = [domids[k::procs] for k in range(procs)]
    start_at = time.time() + 3.0  # time for every process to start and connect
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=procs, mp_context=context) as pool:
        futures = [
            loop.run_in_executor(
                pool, _guest_worker, str(daemon.directory), share, start_at, seconds
            )
            for share in shares
        ]
        await asyncio.sleep(max(start_at - time.time(), 0.0))
        cpu_before = cpu_seconds(daemon.pid)
        await asyncio.sleep(seconds)
        cpu = (cpu_seconds(daemon.pid) - cpu_before) / seconds
        done = sum(await asyncio.gather(*futures))
    per_op_us = cpu * seconds / max(done, 1) * 1e6
    return (
        f"{guests} guest connections from {procs} client processes, WRITE+READ of data/bench "
        f"(1 in flight each): {done / seconds:,.0f} ops/s, daemon CPU {cpu:.0%} of one core, "
        f"{per_op_us:.0f} us of daemon CPU per request (~{1e6 / per_op_us:,.0f} requests/s "
        "per core if the daemon were the limit)"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per figure")
    parser.add_argument("--guests", type=int, default=100, help="concurrent guest connections")
    parser.add_argument("--in-flight", type=int, default=32, help="concurrent requests, 2nd row")
    parser.add_argument("--client-procs", type=int, default=3,
                        help="processes sharing the guest connections")  # fmt: skip
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="xs-bench-", dir="/tmp"))
    try:
        with ServerProcess(workdir, domains=range(1, args.guests + 1)) as daemon:
            load = os.getloadavg()
            print(f"xenstore ops/s against one daemon process (python {sys.version.split()[0]}, "
                  f"{os.cpu_count()} CPUs, load average {load[0]:.1f}), {len(VALUE)}-byte values, "
                  f"median of {args.rounds} alternating {args.seconds:g}-s rounds")  # fmt: skip
            print(f"{'':<22} {'pyxs wrapper':>14} {'codec client':>14} {'wrapper/codec':>14}")
            rows = await compare(
                daemon, seconds=args.seconds, in_flight=args.in_flight, rounds=args.rounds
            )
            for row in rows:
                print(row)
            print(await many_guests(daemon, guests=args.guests, seconds=args.seconds,
                                    procs=args.client_procs))  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = asyncio.run(main())
    print(f"(bench took {time.monotonic() - started:.0f} s)")
    sys.exit(code)
