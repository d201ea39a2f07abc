"""Soak: a simulated host of 200 VMs on the wire for 30 minutes, a fault every minute.

Usage::

    .venv/bin/python bench/soak.py                        # 200 VMs, 30 min, 10x, seed 1
    .venv/bin/python bench/soak.py --vms 40 --minutes 2   # a short one
    .venv/bin/python bench/soak.py --faults xenstored,agents-kill,agents-hang,db-lock,broker
                                   # the controller never killed: one process's RSS over 30 min

Every part runs as on a real host, each in its own process, in virtual time
at ``--speed`` times the wall clock (docs/simulation.md, "Wire level"):

* Ballast's xenstored (``python -m orchestrator.xenstore``), one domain per
  VM laid out as libxl lays it out;
* the guests (``bench/soak.py --host-process``): per VM the guest memory
  model of ``orchestrator.sim`` following its workload trace (25 copies of
  the ``mixed-day`` scenario), its balloon driver and the **real agent**, each
  on the guest's own domain socket; the simulated hypervisor (the one fake
  seam) answers ``memory`` requests on a unix socket;
* the real controller (``tests/reliability/controller_proc.py``:
  ``open_daemon`` with its SQLite history and MQTT telemetry) asking that
  socket for allocations as ``ballast run`` asks ``xl``;
* a private Mosquitto.

Every ``--fault-every`` wall seconds a fault is injected at random (each kind
in turn, in a shuffled order): xenstored killed and back after a few
seconds; 10 agents killed (and restarted 5-20 s later); 10 agents hung
(their writes block as in a stopped process, their connections stay open)
for 5-20 s; the history database locked by another process's open write
transaction for 30 s; the broker stopped for 10-20 s; the controller
SIGKILLed and restarted a few seconds later.

Checked throughout, from an independent dom0 client reading every
``memory/target`` in one xenstore transaction (a consistent snapshot) twice
a second: every target within ``[policy min, min(policy max, static-max)]``
and the sum within the host budget (host memory - dom0 - the free margin).
At the end: OOM kills in the guests' models, controller processes that died
on their own, the controller's RSS (resident memory) at the start and the
end of each of its processes, the database's ``integrity_check``, decisions,
dropped samples and the gaps the history recorded. Exit status 1 if any
invariant broke, the controller crashed or a guest was OOM-killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agents.agent import Agent, AgentStore  # noqa: E402
from agents.main import connector  # noqa: E402
from orchestrator.sim.model import ModelParams  # noqa: E402
from orchestrator.sim.scenario import Scenario, load_file  # noqa: E402
from orchestrator.sim.wire.clock import VirtualClock  # noqa: E402
from orchestrator.sim.wire.guests import (  # noqa: E402
    XENSTORE_TIMEOUT_S,
    ModelShrinkActuator,
    ModelSource,
    SimHost,
    agent_settings,
    balloon_driver,
    plan_domains,
)
from orchestrator.sim.wire.hostlink import decode, encode, memory_message  # noqa: E402
from orchestrator.store import migrate  # noqa: E402
from orchestrator.store.engine import resolve_db_url  # noqa: E402
from orchestrator.xenstore.client import ClientSettings, PyxsClient  # noqa: E402
from orchestrator.xenstore.errors import XenstoreError  # noqa: E402
from tests.reliability.harness import DatabaseLock, Domain, Xenstored  # noqa: E402

MIB_KB = 1024
SCENARIO = ROOT / "orchestrator" / "sim" / "scenarios" / "mixed-day.toml"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HOST_NAME = "soak"
INTERVAL_S = 5.0  # the controller's interval, virtual seconds (the kernel's)
FREE_MARGIN_MB = 256  # ballast.toml's default [controller] free_margin_mb
FAULTS = ("xenstored", "agents-kill", "agents-hang", "db-lock", "broker", "controller")


# ============================================================== the guests' process


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSettings:
    """What the guests' process needs."""

    scenario: str
    speed: float
    xenstore_dir: str
    control: str
    host_name: str
    agent_interval_s: float


class _GatedStore:
    """The agent's xenstore client, whose requests wait while ``gate`` is closed:
    a hung agent (its process stopped) keeps its connection but says nothing."""

    def __init__(self, store: AgentStore, gate: asyncio.Event) -> None:
        self._store = store
        self._gate = gate

    @property
    def connects(self) -> int:
        return int(getattr(self._store, "connects", 0))

    async def read(self, path: str) -> bytes:
        await self._gate.wait()
        return await self._store.read(path)

    async def write(self, path: str, value: bytes) -> None:
        await self._gate.wait()
        await self._store.write(path, value)

    def watch(self, path: str) -> Any:
        return self._store.watch(path)


class _Guests:
    """The guests of the soak: models, balloon drivers, agents that can die or hang."""

    def __init__(self, settings: HostSettings) -> None:
        self.settings = settings
        scenario = load_file(Path(settings.scenario))
        self.clock = VirtualClock(speed=settings.speed, epoch=datetime.now(UTC))
        self.host = SimHost(scenario, clock=self.clock.now_s, host_name=settings.host_name)
        self.stop = asyncio.Event()
        self.drivers: dict[int, PyxsClient] = {}
        self.gates: dict[int, asyncio.Event] = {}
        self.agent_stops: dict[int, asyncio.Event] = {}
        self.agent_tasks: dict[int, asyncio.Task[None]] = {}
        self.driver_tasks: list[asyncio.Task[None]] = []
        self.reports = 0

    def socket(self, domid: int) -> Path:
        return Path(self.settings.xenstore_dir) / "domain" / str(domid) / "socket"

    async def connect(self) -> None:
        for dom in self.host.domains:
            client = PyxsClient(socket_path=str(self.socket(dom.domid)),
                                settings=ClientSettings(timeout_s=XENSTORE_TIMEOUT_S))
            await client.connect()
            self.drivers[dom.domid] = client
            gate = asyncio.Event()
            gate.set()
            self.gates[dom.domid] = gate

    def start_agent(self, domid: int) -> None:
        settings = agent_settings(self.socket(domid), speed=self.settings.speed,
                                  interval_s=self.settings.agent_interval_s)
        plain = connector(settings.connection, timeout_s=XENSTORE_TIMEOUT_S)
        gate = self.gates[domid]

        @contextlib.asynccontextmanager
        async def gated() -> AsyncIterator[AgentStore]:
            async with plain() as store:
                yield _GatedStore(store, gate)

        agent = Agent(settings, source=ModelSource(self.host, domid),
                      actuator=ModelShrinkActuator(self.host, domid,
                                                   poll_s=1.0 / self.settings.speed),
                      connect=gated)
        stop = asyncio.Event()
        self.agent_stops[domid] = stop
        self.agent_tasks[domid] = asyncio.create_task(self._agent(agent, stop),
                                                      name=f"agent-{domid}")

    async def _agent(self, agent: Agent, stop: asyncio.Event) -> None:
        try:
            await agent.run(stop)
        finally:
            self.reports += agent.state.next_seq - 1

    async def kill_agent(self, domid: int) -> None:
        stop = self.agent_stops.pop(domid, None)
        task = self.agent_tasks.pop(domid, None)
        if stop is not None and task is not None:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "memory":
            hv = self.host.hypervisor
            return memory_message(await hv.host_memory(), await hv.domains())
        if op == "start":
            self.clock.start(float(request["origin_s"]))
            for dom in self.host.domains:
                self.driver_tasks.append(asyncio.create_task(
                    balloon_driver(self.host, dom.domid, self.drivers[dom.domid], self.stop),
                    name=f"balloon-{dom.domid}"))
                self.start_agent(dom.domid)
            return {"ok": True}
        if op == "agents":
            domids = [int(d) for d in request["domids"]]
            action = request["action"]
            for domid in domids:
                if action == "kill":
                    await self.kill_agent(domid)
                elif action == "restart" and domid not in self.agent_tasks:
                    self.start_agent(domid)
                elif action == "hang":
                    self.gates[domid].clear()
                elif action == "thaw":
                    self.gates[domid].set()
            return {"ok": True}
        if op == "metrics":
            metrics = self.host.metrics()
            return {"ok": True, "t_s": self.host.t_s, "metrics": asdict(metrics)}
        if op == "stop":
            self.stop.set()
            for domid in list(self.agent_tasks):
                self.gates[domid].set()
                await self.kill_agent(domid)
            await asyncio.gather(*self.driver_tasks, return_exceptions=True)
            metrics = self.host.metrics()
            return {"ok": True, "t_s": self.host.t_s, "reports": self.reports,
                    "metrics": asdict(metrics)}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply = await self.answer(decode(line))
                writer.write(encode(reply))
                await writer.drain()
        except (OSError, ValueError, KeyError):
            pass
        finally:
            writer.close()


async def _host_process(settings: HostSettings) -> None:
    guests = _Guests(settings)
    await guests.connect()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, guests.stop.set)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(settings.control)
    server = await asyncio.start_unix_server(guests.serve, path=settings.control, limit=1 << 22)
    async with server:
        await guests.stop.wait()
        await asyncio.sleep(0.5)  # the stop request's reply goes out


# ======================================================================= the soak


@dataclass(slots=True)
class Report:
    """What the soak saw."""

    started: float = field(default_factory=time.monotonic)
    timeline: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    checks: int = 0
    checks_skipped: int = 0
    bound_violations: list[str] = field(default_factory=list)
    budget_violations: list[str] = field(default_factory=list)
    max_budget_use: float = 0.0
    crashes: list[str] = field(default_factory=list)
    rss_kb: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    ooms: int | None = None

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f} s] {text}"
        self.timeline.append(line)
        print(line, flush=True)


def make_scenario(directory: Path, vms: int) -> Path:
    """``vms`` guests: copies of the mixed-day scenario's eight, on a host as many times larger."""
    base = load_file(SCENARIO)
    copies = -(-vms // len(base.vms))
    text = SCENARIO.read_text()
    host = text[text.index("[host]"):text.index("[[vm]]")]
    memory_mb = base.memory_kb // MIB_KB * copies
    dom0_mb = base.dom0_reserve_kb // MIB_KB
    lines = [host.replace(f"memory_mb = {base.memory_kb // MIB_KB}", f"memory_mb = {memory_mb}")
             .replace(f"dom0_reserve_mb = {dom0_mb}", f"dom0_reserve_mb = {dom0_mb}")]
    traces = SCENARIO.parent
    count = 0
    for copy in range(copies):
        for vm in base.vms:
            if count == vms:
                break
            count += 1
            trace = (traces / "traces" / f"mixed-day.{vm.name}.csv").resolve()
            lines.append(
                f'[[vm]]\nname = "{vm.name}-{copy:03d}"\n'
                f"static_max_mb = {vm.static_max_kb // MIB_KB}\n"
                f'swap_mb = {vm.swap_kb // MIB_KB}\ntrace = "{trace}"\n'
            )
    path = directory / "scenario.toml"
    path.write_text("\n".join(lines))
    return path


def soak_policies(scenario: Scenario) -> dict[str, dict[str, int]]:
    """Policy bounds for every fifth VM, to check that they hold under faults."""
    wanted: dict[str, dict[str, int]] = {}
    for i, vm in enumerate(scenario.vms):
        if i % 5 == 0:
            wanted[vm.name] = {"min_kb": 1024 * MIB_KB, "max_kb": vm.static_max_kb - 512 * MIB_KB}
    return wanted


class Broker:
    """A private Mosquitto on a free port, stopped and started at will."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class HostLink:
    """The soak's line-protocol connection to the guests' process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def request(self, message: Mapping[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
        async with self._lock:
            if self._streams is None:
                self._streams = await asyncio.open_unix_connection(self.path, limit=1 << 22)
            reader, writer = self._streams
            writer.write(encode(message))
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout_s)
        reply = decode(line)
        if reply.get("ok") is not True:
            raise RuntimeError(f"guests' process: {reply}")
        return reply


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class ControllerProcess:
    """The controller, started, watched, killed and restarted."""

    def __init__(self, args: list[str], log: Path, report: Report) -> None:
        self.args = args
        self.log = log
        self.report = report
        self.proc: asyncio.subprocess.Process | None = None
        self.killed_by_us = False
        self.generation = 0

    async def start(self) -> None:
        self.generation += 1
        self.killed_by_us = False
        with self.log.open("ab") as log:
            log.write(f"--- controller process {self.generation} ---\n".encode())
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.reliability.controller_proc", *self.args,
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if line != b"ready\n":
            raise RuntimeError(f"controller did not start: {line!r}; see {self.log}")
        self.report.rss_kb[self.proc.pid] = []

    def sample_rss(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            value = rss_kb(self.proc.pid)
            if value is not None:
                self.report.rss_kb[self.proc.pid].append(
                    (time.monotonic() - self.report.started, value))

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.sample_rss()
            self.killed_by_us = True
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.sample_rss()
        self.killed_by_us = True
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 60)

    def crashed(self) -> bool:
        return (self.proc is not None and self.proc.returncode is not None
                and not self.killed_by_us)


async def read_targets(xs: PyxsClient, domids: Sequence[int]) -> dict[int, int]:
    """Every target in one transaction: a consistent snapshot."""

    async def body(ops: Any) -> dict[int, int]:
        values = {}
        for domid in domids:
            values[domid] = int(await ops.read(f"/local/domain/{domid}/memory/target"))
        return values

    result: dict[int, int] = await xs.transaction(body)
    return result


async def checker(
    xsd: Xenstored, domains: Sequence[Domain], bounds: Callable[[], Mapping[int, tuple[int, int]]],
    budget_kb: int, report: Report, latest: dict[int, int], stop: asyncio.Event,
) -> None:
    """Check the invariants twice a second from an independent dom0 client."""
    xs = PyxsClient(socket_path=str(xsd.privileged_socket),
                    settings=ClientSettings(timeout_s=5.0, reconnect_min_s=0.05,
                                            reconnect_max_s=0.5))
    await xs.connect()
    domids = [d.domid for d in domains]
    try:
        while not stop.is_set():
            try:
                targets = await read_targets(xs, domids)
            except (XenstoreError, ValueError):
                report.checks_skipped += 1
            else:
                report.checks += 1
                latest.update(targets)
                limits = bounds()
                for domid, target in targets.items():
                    low, high = limits[domid]
                    if not low <= target <= high:
                        report.bound_violations.append(
                            f"{time.monotonic() - report.started:.1f}s domain {domid}: "
                            f"target {target} outside [{low}, {high}]")
                total = sum(targets.values())
                report.max_budget_use = max(report.max_budget_use, total / budget_kb)
                if total > budget_kb:
                    report.budget_violations.append(
                        f"{time.monotonic() - report.started:.1f}s sum {total} > {budget_kb}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await xs.close()


async def run_soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    report = Report()
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    report.say(f"soak in {workdir}: {args.vms} VMs, {args.minutes:g} min at {args.speed:g}x, "
               f"a fault every {args.fault_every:g} s, seed {args.seed}; python "
               f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    scenario_path = make_scenario(workdir, args.vms)
    scenario = load_file(scenario_path)
    planned = plan_domains(scenario, host_name=HOST_NAME, params=ModelParams())
    domains = [Domain(d.domid, d.name, d.static_max_kb, d.start_kb, uuid=d.uuid) for d in planned]
    budget_kb = scenario.memory_kb - scenario.dom0_reserve_kb - FREE_MARGIN_MB * MIB_KB
    db = workdir / "ballast.db"
    migrate.upgrade(resolve_db_url(str(db)))

    broker = Broker()
    broker.start()
    xsd = Xenstored(workdir)
    await xsd.start(domains)
    control = str(workdir / "host.sock")
    agent_interval_s = max(2.0, 0.002 * args.speed)
    host_settings = HostSettings(scenario=str(scenario_path), speed=args.speed,
                                 xenstore_dir=str(xsd.dir), control=control,
                                 host_name=HOST_NAME, agent_interval_s=agent_interval_s)
    host_log = (workdir / "host.log").open("ab")
    host = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--host-process",
        json.dumps(asdict(host_settings)), stdin=asyncio.subprocess.DEVNULL,
        stdout=host_log, stderr=host_log, cwd=ROOT, start_new_session=True)
    link = HostLink(control)
    deadline = time.monotonic() + 120
    while not Path(control).exists():
        if time.monotonic() > deadline or host.returncode is not None:
            raise RuntimeError("the guests' process did not start; see host.log")
        await asyncio.sleep(0.1)
    origin = time.monotonic() + 1.0
    epoch = datetime.now(UTC)
    await link.request({"op": "start", "origin_s": origin})

    config = workdir / "ballast.toml"
    config.write_text(
        f'[controller]\nhost_name = "{HOST_NAME}"\nxenstore = "{xsd.dir}"\n'
        f"interval_s = {INTERVAL_S}\nfree_margin_mb = {FREE_MARGIN_MB}\n\n"
        f'[store]\nurl = "{db}"\n\n'
        f'[mqtt]\nbroker = "mqtt://127.0.0.1:{broker.port}"\nkeepalive_s = 5\n'
    )
    config.chmod(0o600)
    controller = ControllerProcess(
        ["--config", str(config), "--hypervisor", control, "--speed", str(args.speed),
         "--origin", repr(origin), "--epoch", epoch.isoformat()],
        workdir / "controller.log", report)
    await controller.start()
    report.say(f"controller up (pid {controller.proc.pid if controller.proc else '?'})")

    # Policy bounds for some VMs, stored as an operator would store them.
    policies = soak_policies(scenario)
    await asyncio.to_thread(_store_policies, db, policies)
    policy_at = time.monotonic()
    report.say(f"policy bounds set for {len(policies)} VMs")

    def bounds() -> dict[int, tuple[int, int]]:
        settled = time.monotonic() - policy_at > 3 * INTERVAL_S / args.speed + 2
        result = {}
        for d in domains:
            low, high = 0, d.static_max_kb
            wanted = policies.get(d.name)
            if wanted is not None and settled:
                low, high = wanted["min_kb"], wanted["max_kb"]
            result[d.domid] = (low, high)
        return result

    latest: dict[int, int] = {}
    stop = asyncio.Event()
    check = asyncio.create_task(checker(xsd, domains, bounds, budget_kb, report, latest, stop),
                                name="checker")
    end = time.monotonic() + args.minutes * 60
    order: list[str] = []
    next_fault = time.monotonic() + min(args.fault_every, 30.0)
    next_rss = time.monotonic()
    next_oom = time.monotonic() + 60
    pending: list[asyncio.Task[None]] = []

    async def later(delay_s: float, action: Callable[[], Any], what: str) -> None:
        await asyncio.sleep(delay_s)
        result = action()
        if asyncio.iscoroutine(result):
            await result
        report.say(what)

    try:
        while time.monotonic() < end:
            now = time.monotonic()
            if controller.crashed():
                code = controller.proc.returncode if controller.proc else None
                report.crashes.append(f"controller exited with status {code}")
                report.say(f"CONTROLLER CRASHED; restarting (see {controller.log})")
                await controller.start()
            if now >= next_rss:
                controller.sample_rss()
                next_rss = now + 30
            if now >= next_oom:
                metrics = (await link.request({"op": "metrics"}))["metrics"]
                if metrics["ooms"]:
                    report.say(f"OOM kills so far: {metrics['ooms']}")
                next_oom = now + 60
            if now >= next_fault and now < end - 20:
                if not order:
                    order = list(args.faults)
                    rng.shuffle(order)
                kind = order.pop()
                report.faults[kind] += 1
                pending.append(asyncio.create_task(
                    inject(kind, rng, xsd, domains, latest, link, broker, db, controller, report,
                           later)))
                next_fault = now + args.fault_every
            await asyncio.sleep(0.2)
        report.say("faults over; letting every fault end")
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.sleep(10)
    finally:
        stop.set()
        await asyncio.gather(check, return_exceptions=True)
        controller.sample_rss()
        code = await controller.stop()
        report.say(f"controller stopped with SIGTERM: exit status {code}")
        try:
            outcome = await link.request({"op": "stop"}, timeout_s=120)
            report.ooms = int(outcome["metrics"]["ooms"])
            report.say(f"guests: {outcome['reports']} reports, virtual {outcome['t_s']:.0f} s, "
                       f"OOM kills {report.ooms}, deficit {outcome['metrics']['deficit_mb_s']:.0f}"
                       " MB*s")
        except (OSError, RuntimeError, TimeoutError) as exc:
            report.say(f"guests' process did not answer stop: {exc!r}")
        with contextlib.suppress(ProcessLookupError):
            host.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(host.wait(), 30)
        host_log.close()
        await xsd.stop()
        broker.stop()
    return summarise(report, db, args, workdir)


def _store_policies(db: Path, wanted: Mapping[str, Mapping[str, int]]) -> None:
    from orchestrator import steering
    from orchestrator.store.records import AuditSource
    from orchestrator.store.store import StoreConfig, open_store

    store = open_store(str(db), config=StoreConfig(host=HOST_NAME))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                for name, fields in wanted.items():
                    steering.change_vm_policy(store, name, fields, who="soak",
                                              source=AuditSource.API,
                                              context=steering.stored_context(store))
                return
            except Exception:
                # The VMs appear in the store with the controller's first samples.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        store.close()


async def inject(
    kind: str, rng: random.Random, xsd: Xenstored, domains: Sequence[Domain],
    latest: Mapping[int, int], link: HostLink, broker: Broker, db: Path,
    controller: ControllerProcess, report: Report,
    later: Callable[[float, Callable[[], Any], str], Any],
) -> None:
    """One fault and its end."""
    if kind == "xenstored":
        down_s = rng.uniform(1.0, 4.0)
        xsd.kill()
        report.say(f"FAULT xenstored killed; back in {down_s:.1f} s")
        await asyncio.sleep(down_s)
        picture = [Domain(d.domid, d.name, d.static_max_kb, latest.get(d.domid, d.target_kb),
                          uuid=d.uuid) for d in domains]
        await xsd.restart(picture)
        report.say("xenstored back with the toolstack's keys")
    elif kind in ("agents-kill", "agents-hang"):
        chosen = sorted(rng.sample([d.domid for d in domains], 10))
        for_s = rng.uniform(5.0, 20.0)
        action, undo = ("kill", "restart") if kind == "agents-kill" else ("hang", "thaw")
        await link.request({"op": "agents", "action": action, "domids": chosen})
        report.say(f"FAULT agents {action} {chosen} for {for_s:.1f} s")
        await later(for_s, lambda: link.request({"op": "agents", "action": undo,
                                                 "domids": chosen}),
                    f"agents {chosen}: {undo}")
    elif kind == "db-lock":
        lock = DatabaseLock(db)
        await asyncio.to_thread(lock.acquire)
        report.say("FAULT history database locked by another process for 30 s")
        await later(30.0, lambda: asyncio.to_thread(lock.release), "database lock released")
    elif kind == "broker":
        for_s = rng.uniform(10.0, 20.0)
        broker.stop()
        report.say(f"FAULT broker stopped for {for_s:.1f} s")
        await later(for_s, broker.start, "broker back")
    elif kind == "controller":
        down_s = rng.uniform(1.0, 4.0)
        await controller.kill()
        report.say(f"FAULT controller SIGKILLed; restarted in {down_s:.1f} s")
        await asyncio.sleep(down_s)
        await controller.start()
        report.say(f"controller up again (pid {controller.proc.pid if controller.proc else '?'})")


def summarise(report: Report, db: Path, args: argparse.Namespace, workdir: Path) -> int:
    print()
    print(f"soak: {args.vms} VMs, {args.minutes:g} min wall at {args.speed:g}x; faults "
          + ", ".join(f"{k} {v}" for k, v in sorted(report.faults.items())))
    print(f"invariant checks: {report.checks} (skipped while xenstored was down: "
          f"{report.checks_skipped}); bound violations {len(report.bound_violations)}, "
          f"budget violations {len(report.budget_violations)}; highest sum of targets "
          f"{report.max_budget_use:.1%} of the budget")
    for line in (report.bound_violations + report.budget_violations)[:10]:
        print(f"  {line}")
    print(f"controller crashes (exits we did not cause): {len(report.crashes)}")
    print("controller RSS per process (MiB, first and last sample):")
    for pid, samples in report.rss_kb.items():
        if samples:
            print(f"  pid {pid}: {samples[0][1] / 1024:.1f} at {samples[0][0]:.0f} s -> "
                  f"{samples[-1][1] / 1024:.1f} at {samples[-1][0]:.0f} s "
                  f"({len(samples)} samples)")
    longest = max(report.rss_kb.values(), key=len, default=[])
    if len(longest) >= 4:
        # Whether it levels off: the longest-lived process, a sample every ~5 min.
        t0 = longest[0][0]
        marks, next_mark = [], t0
        for at, kb in longest:
            if at >= next_mark:
                marks.append(f"{kb / 1024:.1f} at {(at - t0) / 60:.0f} min")
                next_mark = at + 300
        print(f"  longest-lived, over its life: {', '.join(marks)}; last "
              f"{longest[-1][1] / 1024:.1f} at {(longest[-1][0] - t0) / 60:.0f} min")
    with sqlite3.connect(db) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        events = dict(conn.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
        dropped = sum(json.loads(d).get("dropped", 0) for (d,) in conn.execute(
            "SELECT details FROM events WHERE kind = 'samples_dropped'"))
        decisions = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
        samples = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    print(f"history: integrity_check {integrity}; {samples} samples, {decisions} decisions; "
          f"samples dropped and recorded as gaps: {dropped}")
    print("events: " + ", ".join(f"{k} {v}" for k, v in sorted(events.items())))
    print(f"OOM kills in the guests: {report.ooms}")
    ok = (not report.bound_violations and not report.budget_violations and not report.crashes
          and report.ooms == 0 and integrity == "ok")
    print(f"result: {'PASS' if ok else 'FAIL'} (logs in {workdir})")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=30.0, help="wall minutes")
    parser.add_argument("--speed", type=float, default=10.0, help="virtual s per wall s")
    parser.add_argument("--fault-every", type=float, default=60.0, help="wall seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"kinds to inject, comma-separated (default all: {','.join(FAULTS)})")
    parser.add_argument("--dir", default="", help="working directory (default: a new one in /tmp)")
    parser.add_argument("--host-process", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.faults = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    unknown = sorted(set(args.faults) - set(FAULTS))
    if unknown or not args.faults:
        parser.error(f"--faults: unknown kinds {unknown}; choose from {', '.join(FAULTS)}")
    if args.host_process is not None:
        asyncio.run(_host_process(HostSettings(**json.loads(args.host_process))))
        return 0
    return asyncio.run(run_soak(args))


if __name__ == "__main__":
    sys.exit(main())
