"""The controller's cycle time, CPU per cycle and report-to-target latency.

For each fleet size (``--domains``, 10, 100 and 1,000 by default) one run
starts Ballast's xenstore daemon in its own process (``python -m
orchestrator.xenstore``, so its CPU is not charged to the controller), lays
out the domains as libxl would (through the privileged socket: setup only),
and starts the guests in a second process: each guest writes its report and
``meminfo_free`` through **its own domain socket**, at ``--rate-per-guest``
reports a second (0.1 by default: three times the 30-s heartbeat of an idle
agent). The controller runs in this process on the real
:class:`~orchestrator.xenstore.client.PyxsClient`, with a
:class:`~orchestrator.hypervisor.simulated.SimulatedHypervisor` and the default
policy. The guests report the fixed point of the control law (found at start
by running ``decide`` on one VM), so a steady cycle writes nothing unless a
report asks for more.

Measured, per fleet size:

1. **steady** cycles, ``--gap`` apart, while the guests report: what a cycle
   costs when watches mark the domains that changed and a rolling resync
   re-reads the rest over time. Wall time (p50, p99), the controller's CPU per
   cycle (every thread of this process: the pyxs router included), the time
   its event loop spent runnable but waiting for a CPU (``/proc/self/schedstat``:
   the machine's load, not the controller's work), the law's share, how many
   domains and keys were read, how many targets written. As ``Controller.run``
   does, the start-up state is frozen out of the garbage collector's way after
   the first cycle;
2. **cap all, then lift** (last, so as not to disturb the rest): an operator
   caps every VM below its target, then lifts the cap: two cycles that write
   a target for every VM with a fresh report;
3. the **first** cycle (discovery, one watch per domain, everything read);
4. the baseline in the same run: **naive** cycles that re-read every key of
   every domain (what a controller without watches does each cycle, and what
   this one does once after a reconnect), and the same keys read through
   ``RawClient``, a minimal codec client with a task per read (the floor of a
   read-everything strategy written the ordinary way);
5. for the largest fleet (``--latency-domains``): the real loop
   (``Controller.run``) under the same guest background, and a probe process
   with ``--probes`` guests of its own. Each sample, a probe guest writes a
   report whose Committed_AS rose by 64 MiB (it needs more memory) through its
   domain socket; an independent watcher (a codec client on the privileged
   socket, in the probe process) times the WATCH_EVENT of that guest's new,
   higher ``memory/target``. Both clocks are the probe process's monotonic
   clock. Samples are spaced randomly (``--spacing-ms``) so they fall at every
   phase of the loop.

Usage::

    .venv/bin/python bench/controller.py            # 10, 100, 1000 domains
    .venv/bin/python bench/controller.py --quick    # 10 and 100, fewer samples

Figures depend on the machine and its load (printed with them). Targets
(issue 6): a cycle under 200 ms at 1,000 domains; report-to-target p99 under
100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid as uuid_mod
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

from agents.schema import Report, encode_report
from orchestrator.control import HostPolicy, Policy, Snapshot, VmDefaults, VmObservation, decide
from orchestrator.controller.loop import Controller, CycleResult, LoopSettings, StaticPolicy
from orchestrator.controller.observe import (
    DIRECTIVE_KEY,
    MEMINFO_FREE_KEY,
    MEMINFO_TOTAL_KEY,
    REPORT_KEY,
    STATIC_MAX_KEY,
    TARGET_KEY,
    UNCOOPERATIVE_KEY,
    VIDEORAM_KEY,
)
from orchestrator.hypervisor.simulated import SimulatedHypervisor
from orchestrator.xenstore import wire
from orchestrator.xenstore.client import ClientSettings, PyxsClient
from orchestrator.xenstore.errors import NoEntryError
from orchestrator.xenstore.rawclient import RawClient
from orchestrator.xenstore.runner import ServerProcess

GIB_KB = 1024 * 1024
MIB_KB = 1024
STATIC_MAX_KB = 4 * GIB_KB
COMMITTED_KB = GIB_KB
PROBE_STATIC_MAX_KB = 16 * GIB_KB
PROBE_STEP_KB = 64 * MIB_KB
DOM0_KB = 4 * GIB_KB
# Balloons that follow at once (the next 0.1-s step): the guests' MemTotal then
# matches their target, as it does on a real host between two reports.
BALLOON_RATE_KB_S = 64 * GIB_KB * 10
# Seconds of the real loop under the guests' background alone, before the probes.
IDLE_WINDOW_S = 6.0
# Every key a cycle may read for one domain (observe.py): the naive baseline reads all.
ALL_KEYS = ("name", "vm", STATIC_MAX_KEY, TARGET_KEY, VIDEORAM_KEY, UNCOOPERATIVE_KEY,
            DIRECTIVE_KEY, REPORT_KEY, MEMINFO_TOTAL_KEY, MEMINFO_FREE_KEY)  # fmt: skip


# --- the guests' figures ------------------------------------------------------------------


def report(*, seq: int, total_kb: int, committed_kb: int) -> Report:
    """A plausible report of a guest with ``total_kb`` and ``committed_kb``, no pressure.

    The guest exposes its balloon's ``current_kb`` (equal to MemTotal here), so the
    law never falls back on the hypervisor's allocation for the balloon offset.
    """
    available = max(total_kb - committed_kb, 0)
    return Report(
        seq=seq, uptime_s=1000.0 + seq, mem_total_kb=total_kb, mem_free_kb=available // 2,
        mem_available_kb=available, cached_kb=available // 2, committed_as_kb=committed_kb,
        totalreserve_kb=16 * MIB_KB, anon_kb=min(committed_kb, total_kb),
        swap_total_kb=GIB_KB, swap_free_kb=GIB_KB, pswpin=0, pswpout=0,
        psi_some_avg10=0.0, psi_full_avg10=0.0, psi_some_total_us=0,
        refault_anon=0, refault_file=0, balloon_current_kb=total_kb,
    )


def fixed_point_kb(static_max_kb: int, committed_kb: int) -> int:
    """The target at which the default policy leaves a guest reporting ``committed_kb``
    alone: run the pure law on one VM until it stops moving (virtual time)."""
    policy = Policy()
    state = None
    target = static_max_kb
    now = 0.0
    still = 0
    for seq in range(2000):
        obs = VmObservation(
            domid=1, uuid="00000000-0000-4000-8000-000000000001", name="fixed",
            static_max_kb=static_max_kb, actual_kb=target, target_kb=target,
            report=report(seq=seq, total_kb=target, committed_kb=committed_kb), report_age_s=0.1,
        )
        plan = decide(Snapshot(now_s=now, host_total_kb=64 * GIB_KB, host_free_kb=32 * GIB_KB,
                               vms=(obs,)), policy, state)  # fmt: skip
        state = plan.state
        vm = plan.vms[0]
        still = still + 1 if not vm.write else 0
        if still >= 20:
            return target
        target = vm.target_kb
        now += policy.host.interval_s if still == 0 else 0.1
    raise SystemExit("the control law found no fixed point for the benchmark's guests")


def uuid_of(domid: int) -> str:
    return str(uuid_mod.uuid5(uuid_mod.NAMESPACE_DNS, f"vm{domid}.bench.ballast"))


# --- the guests (a separate process) -------------------------------------------------------


async def _guests(
    sock_dir: str, domids: list[int], target_kb: int, rate_per_s: float,
    ready: Any, go: Any, stop: Any, out: Any,
) -> None:
    """Background guests: each reports through its own domain socket, paced in total."""
    daemon = ServerProcess(sock_dir)
    clients = {d: await RawClient.connect(daemon.domain_socket(d)) for d in domids}
    seqs = dict.fromkeys(domids, 1)

    async def one(domid: int) -> None:
        seqs[domid] += 1
        doc = encode_report(report(seq=seqs[domid], total_kb=target_kb, committed_kb=COMMITTED_KB))
        client = clients[domid]
        await asyncio.gather(
            client.write(REPORT_KEY, doc),
            client.write(MEMINFO_FREE_KEY, str(seqs[domid] % 1000 + target_kb // 4).encode()),
        )

    await asyncio.gather(*(clients[d].write(MEMINFO_TOTAL_KEY, str(target_kb).encode())
                           for d in domids))  # fmt: skip
    await asyncio.gather(*(one(d) for d in domids))
    ready.set()
    while not go.is_set() and not stop.is_set():
        await asyncio.sleep(0.01)
    written = 0
    pending: set[asyncio.Task[None]] = set()
    order = list(domids)
    random.shuffle(order)
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    index = 0
    while not stop.is_set() and rate_per_s > 0:
        now = loop.time()
        while next_at <= now:
            task = asyncio.create_task(one(order[index % len(order)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            index += 1
            written += 1
            next_at += 1.0 / rate_per_s
        await asyncio.sleep(min(max(next_at - loop.time(), 0.0), 0.05))
    if rate_per_s <= 0:
        while not stop.is_set():
            await asyncio.sleep(0.05)
    await asyncio.gather(*pending, return_exceptions=True)
    for client in clients.values():
        await client.close()
    out.put(written)


def _guests_main(*args: Any) -> None:
    asyncio.run(_guests(*args))


async def _probe(
    sock_dir: str, domids: list[int], start_kb: int, samples: int, spacing_ms: tuple[int, int],
    ready: Any, go: Any, out: Any,
) -> None:
    """Probe guests and an independent watcher of their targets; reports latencies (s)."""
    daemon = ServerProcess(sock_dir)
    guests = {d: await RawClient.connect(daemon.domain_socket(d)) for d in domids}
    watcher = await RawClient.connect(daemon.privileged_socket)
    committed = dict.fromkeys(domids, COMMITTED_KB)
    known = dict.fromkeys(domids, start_kb)
    seq = dict.fromkeys(domids, 1)
    for d in domids:
        await guests[d].write(REPORT_KEY, encode_report(
            report(seq=1, total_kb=start_kb, committed_kb=COMMITTED_KB)))
        await watcher.watch(f"/local/domain/{d}/{TARGET_KEY}", str(d))
    ready.set()
    while not go.is_set():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    while not watcher.events.empty():  # the events of registration and of setup
        watcher.events.get_nowait()
    latencies: list[float] = []
    misses = 0
    loop = asyncio.get_running_loop()
    for i in range(samples):
        domid = domids[i % len(domids)]
        # What the guest's kernel would report once its balloon caught up.
        raw = await watcher.read(f"/local/domain/{domid}/{TARGET_KEY}")
        known[domid] = int(raw)
        committed[domid] += PROBE_STEP_KB
        seq[domid] += 1
        doc = encode_report(report(seq=seq[domid], total_kb=known[domid],
                                   committed_kb=committed[domid]))  # fmt: skip
        while not watcher.events.empty():
            watcher.events.get_nowait()
        sent = loop.time()
        await guests[domid].write(REPORT_KEY, doc)
        deadline = sent + 2.0
        got: float | None = None
        while got is None and loop.time() < deadline:
            try:
                event = await asyncio.wait_for(watcher.events.get(), deadline - loop.time())
            except TimeoutError:
                break
            arrived = loop.time()
            if event.token != str(domid):
                continue
            # The grow this report asks for, not a smaller write for another reason.
            value = int(await watcher.read(event.path))
            if value >= known[domid] + PROBE_STEP_KB // 2:
                got = arrived - sent
        if got is None:
            misses += 1
        else:
            latencies.append(got)
        await asyncio.sleep(random.uniform(*spacing_ms) / 1000)
    for client in (*guests.values(), watcher):
        await client.close()
    out.put((latencies, misses))


def _probe_main(*args: Any) -> None:
    asyncio.run(_probe(*args))


# --- the controller side --------------------------------------------------------------------


@dataclass
class Cycles:
    """Figures of a series of cycles."""

    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    runq_s: list[float] = field(default_factory=list)
    decide_s: list[float] = field(default_factory=list)
    domains_read: list[int] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)
    writes: list[int] = field(default_factory=list)

    def add(self, result: CycleResult, wall_s: float, cpu_s: float, runq_s: float) -> None:
        t = result.timings
        self.wall_s.append(wall_s)
        self.cpu_s.append(cpu_s)
        self.runq_s.append(runq_s)
        self.decide_s.append(t.decide_s)
        self.domains_read.append(t.domains_read)
        self.reads.append(t.xenstore_reads)
        self.writes.append(len(result.applied.targets_written))


def runq_wait_s() -> float:
    """Seconds this process's main thread (the event loop) has spent runnable but
    waiting for a CPU (``/proc/self/schedstat``): the machine's load, not our work."""
    try:
        return int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return math.nan


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def follow(hv: SimulatedHypervisor, result: CycleResult | None) -> None:
    """The guests' balloon drivers take the targets just written."""
    if result is None:
        return
    for domid, target in result.applied.targets_written.items():
        hv.set_target(domid, target)


async def timed_cycle(ctl: Controller) -> tuple[CycleResult, float, float, float]:
    """One cycle: its result, wall, CPU (all threads) and run-queue wait, seconds."""
    wall, cpu, runq = time.perf_counter(), time.process_time(), runq_wait_s()
    result = await ctl.run_cycle()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    runq = runq_wait_s() - runq
    if result is None:
        raise SystemExit("a cycle could not observe the fleet")
    return result, wall, cpu, runq


async def codec_read_all(sock: Path, domids: Sequence[int]) -> tuple[float, float]:
    """Wall and CPU seconds to read every key of every domain through a codec client."""
    client = await RawClient.connect(sock)

    async def one(path: str) -> bytes | None:
        try:
            return await client.read(path)
        except NoEntryError:
            return None

    try:
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(f"/local/domain/{d}/{k}") for d in domids for k in ALL_KEYS))
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await client.close()


@dataclass
class SizeResult:
    domains: int
    steady: Cycles
    naive: Cycles
    rewrite: Cycles
    first_wall_s: float
    first_cpu_s: float
    codec_wall_s: list[float]
    codec_cpu_s: list[float]
    reports_per_s: float
    latencies_s: list[float] = field(default_factory=list)
    misses: int = 0
    loop_cpu_share: float = math.nan
    loop_runq_share: float = math.nan
    loop_cycles_per_s: float = math.nan
    loop_peeks_per_s: float = math.nan
    idle_cpu_share: float = math.nan
    idle_cycles_per_s: float = math.nan
    idle_peeks_per_s: float = math.nan


def drain(daemon: ServerProcess) -> None:
    """Read the daemon's stderr in a thread, so that a chatty daemon never blocks on it."""
    stream = daemon.process.stderr if daemon.process is not None else None
    if stream is not None:
        threading.Thread(target=stream.read, name="daemon-stderr", daemon=True).start()


async def lay_out(
    sock: Path, domids: Sequence[int], probes: set[int], target_kb: int, probe_kb: int
) -> None:
    """Introduce the domains and write what libxl writes for each, through the
    privileged socket (setup only). INTRODUCE rather than ``--introduce``: the
    daemon's start-up probe of a thousand sockets is needlessly slow."""
    client = await RawClient.connect(sock)
    try:
        for start in range(0, len(domids), 200):
            await asyncio.gather(*(client.request(wire.Introduce(d, 0, 0))
                                   for d in domids[start:start + 200]))  # fmt: skip

        async def one(domid: int) -> None:
            base = f"/local/domain/{domid}"
            uuid = uuid_of(domid)
            static_max = PROBE_STATIC_MAX_KB if domid in probes else STATIC_MAX_KB
            await asyncio.gather(
                client.write(f"{base}/name", f"vm{domid}".encode()),
                client.write(f"{base}/vm", f"/vm/{uuid}".encode()),
                client.write(f"{base}/{STATIC_MAX_KEY}", str(static_max).encode()),
                client.write(f"{base}/{TARGET_KEY}",
                             str(probe_kb if domid in probes else target_kb).encode()),
                client.write(f"/vm/{uuid}/name", f"vm{domid}".encode()),
            )

        await asyncio.gather(*(one(d) for d in domids))
    finally:
        await client.close()


async def run_size(
    args: argparse.Namespace, n: int, target_kb: int, context: SpawnContext, *, latency: bool
) -> SizeResult:
    workdir = Path(tempfile.mkdtemp(prefix="ctl-bench-", dir="/tmp"))
    domids = list(range(1, n + 1))
    probes = set(domids[-args.probes:]) if latency else set()
    background = [d for d in domids if d not in probes]
    rate = args.rate_per_guest * len(background)
    hv = SimulatedHypervisor(total_kb=DOM0_KB + n * PROBE_STATIC_MAX_KB, dom0_kb=DOM0_KB)
    probe_kb = fixed_point_kb(PROBE_STATIC_MAX_KB, COMMITTED_KB)
    for d in domids:
        max_kb = PROBE_STATIC_MAX_KB if d in probes else STATIC_MAX_KB
        hv.add_domain(domid=d, name=f"vm{d}", uuid=uuid_of(d), max_kb=max_kb,
                      actual_kb=probe_kb if d in probes else target_kb,
                      rate_kb_s=BALLOON_RATE_KB_S)  # fmt: skip
    stop, go, ready, out = context.Event(), context.Event(), context.Event(), context.Queue()
    probe_go, probe_ready, probe_out = context.Event(), context.Event(), context.Queue()
    procs = []
    try:
        with ServerProcess(workdir) as daemon:
            drain(daemon)
            await lay_out(daemon.privileged_socket, domids, probes, target_kb, probe_kb)
            procs.append(context.Process(target=_guests_main, args=(
                str(workdir), background, target_kb, rate, ready, go, stop, out), daemon=True))
            if latency:
                spacing = (args.spacing_ms[0], args.spacing_ms[1])
                procs.append(context.Process(target=_probe_main, args=(
                    str(workdir), sorted(probes), probe_kb, args.samples, spacing,
                    probe_ready, probe_go, probe_out), daemon=True))
            for proc in procs:
                proc.start()
            await asyncio.to_thread(ready.wait, 120)
            if latency:
                await asyncio.to_thread(probe_ready.wait, 120)
            settings = ClientSettings(timeout_s=30.0)
            async with PyxsClient(socket_path=daemon.privileged_socket, settings=settings) as xs:
                policy = StaticPolicy()
                ctl = Controller(xs=xs, hypervisor=hv, policy=policy, settings=LoopSettings())
                first, first_wall, first_cpu, _ = await timed_cycle(ctl)
                follow(hv, first)
                if ctl.settings.freeze_gc:
                    gc.freeze()  # as Controller.run() does after its first cycle
                go.set()
                steady = Cycles()
                for _ in range(args.cycles):
                    await asyncio.sleep(args.gap)
                    hv.advance(args.gap)
                    result, wall, cpu, runq = await timed_cycle(ctl)
                    steady.add(result, wall, cpu, runq)
                    follow(hv, result)
                naive = Cycles()
                codec_wall, codec_cpu = [], []
                for _ in range(args.naive_cycles):
                    await asyncio.sleep(args.gap)
                    ctl.reread_all()
                    result, wall, cpu, runq = await timed_cycle(ctl)
                    naive.add(result, wall, cpu, runq)
                    follow(hv, result)
                    await asyncio.sleep(args.gap)
                    w, c = await codec_read_all(daemon.privileged_socket, domids)
                    codec_wall.append(w)
                    codec_cpu.append(c)
                rewrite = Cycles()
                size = SizeResult(
                    domains=n, steady=steady, naive=naive, rewrite=rewrite,
                    first_wall_s=first_wall, first_cpu_s=first_cpu, codec_wall_s=codec_wall,
                    codec_cpu_s=codec_cpu, reports_per_s=rate,
                )
                if latency:
                    await measure_latency(ctl, hv, size, probe_go, probe_out)
                # An operator caps every VM 64 MiB below where it is, then lifts the
                # cap: two cycles that rewrite every target (shrinks, then grows).
                for cap in (target_kb - 64 * MIB_KB, None):
                    await asyncio.sleep(args.gap)
                    policy.policy = Policy(host=HostPolicy(defaults=VmDefaults(max_kb=cap)))
                    ctl.policy_changed()
                    result, wall, cpu, runq = await timed_cycle(ctl)
                    rewrite.add(result, wall, cpu, runq)
                    follow(hv, result)
                    hv.advance(1.0)
            stop.set()
            for proc in procs:
                await asyncio.to_thread(proc.join, 60)
    finally:
        stop.set()
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return size


class _Balloons:
    """A cycle sink standing for the guests' balloon drivers (set targets; cheap)."""

    def __init__(self, hv: SimulatedHypervisor) -> None:
        self.hv = hv

    def cycle(self, result: CycleResult) -> None:
        follow(self.hv, result)


async def measure_latency(
    ctl: Controller, hv: SimulatedHypervisor, size: SizeResult, go: Any, out: Any
) -> None:
    ctl.add_sink(_Balloons(hv))
    stop = asyncio.Event()
    task = asyncio.create_task(ctl.run(stop), name="controller")

    async def balloons() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.1)
            hv.advance(0.1)

    mover = asyncio.create_task(balloons(), name="balloons")
    await asyncio.sleep(1.0)
    # The background alone first: what the real loop costs a fleet that needs nothing.
    cycles0, peeks0 = ctl.cycles, ctl.peeks
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(IDLE_WINDOW_S)
    elapsed = time.perf_counter() - wall0
    size.idle_cpu_share = (time.process_time() - cpu0) / elapsed
    size.idle_cycles_per_s = (ctl.cycles - cycles0) / elapsed
    size.idle_peeks_per_s = (ctl.peeks - peeks0) / elapsed
    cycles0, peeks0 = ctl.cycles, ctl.peeks
    cpu0, wall0, runq0 = time.process_time(), time.perf_counter(), runq_wait_s()
    go.set()
    latencies, misses = await asyncio.to_thread(out.get, True, 3600)
    elapsed = time.perf_counter() - wall0
    size.loop_cpu_share = (time.process_time() - cpu0) / elapsed
    size.loop_runq_share = (runq_wait_s() - runq0) / elapsed
    size.loop_cycles_per_s = (ctl.cycles - cycles0) / elapsed
    size.loop_peeks_per_s = (ctl.peeks - peeks0) / elapsed
    size.latencies_s, size.misses = latencies, misses
    stop.set()
    await asyncio.wait_for(task, 60)
    await mover


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def print_results(results: list[SizeResult], args: argparse.Namespace) -> None:
    print()
    print(f"cycle time and controller CPU per cycle; steady cycles {args.gap:g} s apart while the "
          f"guests report ({args.rate_per_guest:g}/s each, own domain sockets); ms")  # fmt: skip
    head = (f"{'domains':>7} {'cycle':<22} {'n':>4} {'wall p50':>8} {'wall p99':>8} "
            f"{'CPU p50':>8} {'CPU p99':>8} {'runq p50':>8} {'decide':>8} {'doms read':>9} "
            f"{'xs reads':>8} {'writes':>6}")  # fmt: skip
    print(head)
    for r in results:
        rows: list[tuple[str, Cycles]] = [("steady (watch + resync)", r.steady),
                                          ("cap all, then lift", r.rewrite),
                                          ("naive: re-read all", r.naive)]  # fmt: skip
        for name, c in rows:
            print(f"{r.domains:>7} {name:<22} {len(c.wall_s):>4} {ms(pct(c.wall_s, 50))} "
                  f"{ms(pct(c.wall_s, 99))} {ms(pct(c.cpu_s, 50))} {ms(pct(c.cpu_s, 99))} "
                  f"{ms(pct(c.runq_s, 50))} "
                  f"{ms(statistics.median(c.decide_s))} {statistics.median(c.domains_read):>9.0f} "
                  f"{statistics.median(c.reads):>8.0f} {statistics.median(c.writes):>6.0f}")
        print(f"{r.domains:>7} {'codec client: read all':<22} {len(r.codec_wall_s):>4} "
              f"{ms(pct(r.codec_wall_s, 50))} {ms(pct(r.codec_wall_s, 99))} "
              f"{ms(pct(r.codec_cpu_s, 50))} {ms(pct(r.codec_cpu_s, 99))} {'':>8} {'':>8} "
              f"{r.domains:>9} "
              f"{r.domains * len(ALL_KEYS):>8}")  # fmt: skip
        print(f"{r.domains:>7} {'first (discover+watch)':<22} {1:>4} {ms(r.first_wall_s)} "
              f"{'':>8} {ms(r.first_cpu_s)}")  # fmt: skip
        ratio = pct(r.naive.wall_s, 50) / pct(r.steady.wall_s, 50)
        codec = pct(r.naive.wall_s, 50) / pct(r.codec_wall_s, 50)
        print(f"{'':>7} naive/steady wall {ratio:.1f}x; naive cycle / codec read-all {codec:.1f}x")
    print()
    for r in results:
        if not r.latencies_s and not r.misses:
            continue
        lat = r.latencies_s
        print(f"real loop at {r.domains} domains, background alone ({r.reports_per_s:.0f} "
              f"reports/s, nothing needing memory): controller CPU {r.idle_cpu_share:.1%} of "
              f"one core, {r.idle_cycles_per_s:.2f} cycles/s, {r.idle_peeks_per_s:.1f} peeks/s")
        print(f"report-to-target at {r.domains} domains ({args.probes} probe guests, "
              f"{r.reports_per_s:.0f} background reports/s, real loop, default policy): "
              f"{len(lat)} samples, p50 {pct(lat, 50) * 1000:.1f} ms, "
              f"p90 {pct(lat, 90) * 1000:.1f} ms, p99 {pct(lat, 99) * 1000:.1f} ms, "
              f"max {max(lat, default=math.nan) * 1000:.1f} ms, misses (>2 s) {r.misses}; "
              f"controller CPU {r.loop_cpu_share:.0%} of one core, its event loop waiting "
              f"for a CPU {r.loop_runq_share:.0%} of the time, {r.loop_cycles_per_s:.1f} "
              f"cycles/s, {r.loop_peeks_per_s:.1f} peeks/s")  # fmt: skip


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="10 and 100 domains, fewer samples (a minute or so)")
    parser.add_argument("--domains", default="10,100,1000", help="fleet sizes, comma-separated")
    parser.add_argument("--cycles", type=int, default=100, help="steady cycles per fleet size")
    parser.add_argument("--naive-cycles", type=int, default=5, help="naive cycles per size")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between steady cycles")
    parser.add_argument("--rate-per-guest", type=float, default=0.1,
                        help="background reports per second per guest")
    parser.add_argument("--samples", type=int, default=300, help="report-to-target samples")
    parser.add_argument("--probes", type=int, default=20, help="probe guests (latency)")
    parser.add_argument("--spacing-ms", type=int, nargs=2, default=(20, 120),
                        help="random pause between latency samples, ms (min max)")
    parser.add_argument("--latency-domains", type=int, default=None,
                        help="fleet size of the latency run (default: the largest)")
    args = parser.parse_args()
    if args.quick:
        args.domains = "10,100" if args.domains == "10,100,1000" else args.domains
        args.cycles, args.naive_cycles, args.samples = 30, 3, 80
    sizes = [int(x) for x in args.domains.split(",") if x.strip()]
    latency_n = args.latency_domains or max(sizes)
    if latency_n not in sizes:
        sizes.append(latency_n)
    if args.probes >= latency_n:
        parser.error("--probes must be below the latency fleet size")
    target_kb = fixed_point_kb(STATIC_MAX_KB, COMMITTED_KB)
    load = os.getloadavg()
    print(f"ballast controller bench: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; guests at the law's fixed "
          f"point ({target_kb // MIB_KB} MiB, Committed_AS {COMMITTED_KB // MIB_KB} MiB)")
    context = multiprocessing.get_context("spawn")
    results = []
    for n in sizes:
        t0 = time.monotonic()
        results.append(await run_size(args, n, target_kb, context, latency=n == latency_n))
        print(f"  {n} domains measured in {time.monotonic() - t0:.0f} s", flush=True)
    print_results(results, args)
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = asyncio.run(main())
    print(f"(bench took {time.monotonic() - started:.0f} s)")
    sys.exit(code)
