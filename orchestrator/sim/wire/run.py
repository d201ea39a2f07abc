"""A wire-level run: the project's xenstored, real agents, the real controller, in virtual time.

:func:`run_sim` builds one simulated host from a scenario and runs it until
the scenario's end (or ``stop``). Three processes, as on a real host:

* the project's xenstore server (``python -m orchestrator.xenstore``), with
  one domain per VM introduced and laid out as libxl lays it out;
* the *host process* (:mod:`orchestrator.sim.wire.hostproc`): the simulated
  hypervisor and, per VM, the guest's memory model, its balloon driver and
  the real agent, both on the guest's own domain socket;
* this one: the real controller (:func:`orchestrator.controller.daemon.open_daemon`)
  with its history store (and MQTT telemetry when a broker is given),
  asking the host process for allocations as the real one asks ``xl``.

Time (docs/simulation.md, "Wire level"): one virtual clock at ``speed``
times the wall clock, shared by both processes through its monotonic
origin. The controller reads it as its clock and waits ``interval / speed``
wall seconds between cycles (``LoopSettings.time_scale``), so its pacing,
its stale and dead limits and report ages are virtual seconds. The agents
keep time on their event loop, and are given every interval divided by
``speed``. History is recorded at ``epoch + virtual time``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import resource
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

from orchestrator import config as cfg
from orchestrator import steering
from orchestrator.control import HostPolicy
from orchestrator.control.plan import VmState
from orchestrator.control.policy import DEFAULT_WEIGHT
from orchestrator.controller.daemon import Daemon, base_host_policy, open_daemon
from orchestrator.controller.loop import CycleResult, LoopSettings
from orchestrator.errors import FatalError, TransientError, UsageError
from orchestrator.hypervisor.simulated import lay_out_domain
from orchestrator.sim.metrics import RunMetrics
from orchestrator.sim.model import KB_PER_MB, ModelParams
from orchestrator.sim.scenario import Scenario
from orchestrator.sim.wire.clock import VirtualClock
from orchestrator.sim.wire.guests import XENSTORE_TIMEOUT_S, SimDomain, plan_domains
from orchestrator.sim.wire.hostlink import GuestsOutcome, HostConfig, HostProcess, RemoteHypervisor
from orchestrator.store import migrate
from orchestrator.store.engine import DB_ENV, is_sqlite, resolve_db_url
from orchestrator.store.records import AuditSource
from orchestrator.xenstore.client import ClientSettings, PyxsClient
from orchestrator.xenstore.runner import ServerProcess

log = logging.getLogger("ballast.sim")

# The agent's sampling interval in virtual seconds: its default (1 s) up to
# this speed; above it, one sample per this many microseconds of wall time.
# A sample costs the real agent about 0.1 ms of CPU (it builds, encodes and
# checks a report each time), so eight agents sampling every virtual second
# at 720x would need most of a core for sampling alone.
AGENT_INTERVAL_S: Final = 1.0
AGENT_MIN_WALL_INTERVAL_S: Final = 0.002
# Unix socket paths are limited to 108 bytes (struct sockaddr_un.sun_path).
_MAX_SOCKET_PATH: Final = 107
# How often the event loop's own lateness is sampled, wall seconds.
_LAG_PROBE_S: Final = 0.05


def default_agent_interval_s(speed: float) -> float:
    """The agents' sampling interval at ``speed``, virtual seconds."""
    return max(AGENT_INTERVAL_S, AGENT_MIN_WALL_INTERVAL_S * speed)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimSettings:
    """One wire-level run. Virtual seconds unless a name says wall."""

    scenario: Scenario
    speed: float
    """Virtual seconds per wall second."""
    directory: Path
    """Holds the xenstore server's sockets (``xenstore/``), the host
    process's socket and its log (``host.log``)."""
    db: str
    """History database: SQLite path or URL."""
    epoch: datetime
    """Wall-clock time recorded for virtual time 0."""
    duration_s: float | None = None
    """Virtual seconds to run; default: the scenario's duration."""
    migrate_db: bool = True
    """Create or upgrade a SQLite database first (PostgreSQL must be migrated
    with ``ballast db upgrade``, as for ``ballast run``)."""
    broker: str | None = None
    """MQTT broker URL for telemetry and policy commands."""
    host_name: str = field(default_factory=lambda: cfg.ControllerConfig().host_name)
    """Name of the simulated host in history and telemetry."""
    interval_s: float = cfg.KERNEL_INTERVAL_S
    """The controller's interval, virtual seconds."""
    agent_interval_s: float | None = None
    """How often each agent samples its guest, virtual seconds (default:
    :func:`default_agent_interval_s`)."""

    def __post_init__(self) -> None:
        if self.duration_s is not None and self.duration_s <= 0:
            raise UsageError("the duration must be positive")
        if self.agent_interval_s is not None and self.agent_interval_s <= 0:
            raise UsageError("the agents' interval must be positive")

    @property
    def run_s(self) -> float:
        """Virtual seconds the run lasts."""
        return self.duration_s if self.duration_s is not None else self.scenario.duration_s

    @property
    def sample_interval_s(self) -> float:
        """The agents' sampling interval in force, virtual seconds."""
        if self.agent_interval_s is not None:
            return self.agent_interval_s
        return default_agent_interval_s(self.speed)


@dataclass(slots=True)
class SimStats:
    """What the controller did, gathered as it runs (virtual seconds unless wall)."""

    cycles: int = 0
    """Controller cycles recorded."""
    cycle_times_s: list[float] = field(default_factory=list)
    """Virtual time of each cycle's snapshot."""
    timer_gaps_s: list[float] = field(default_factory=list)
    """Virtual gaps between cycles at least one interval apart (the loop's own
    timer, not a guest's early wake-up)."""
    max_report_age_s: float = 0.0
    """Oldest report age any cycle saw, once every VM had reported."""
    stale_observations: int = 0
    """VM-cycles in state stale or dead, once every VM had reported."""
    cycle_wall_s: list[float] = field(default_factory=list)
    """Wall seconds each cycle took (observe, decide, apply)."""
    loop_lag_wall_s: list[float] = field(default_factory=list)
    """How late the event loop woke a sleeper, wall seconds (one per probe)."""
    last: CycleResult | None = None
    """The newest cycle."""
    settled_at_s: float | None = None
    """Virtual time of the first cycle in which the controller had seen every VM's
    report change (from then on every report's age is known)."""

    def gaps_s(self) -> list[float]:
        """Virtual gaps between consecutive cycles."""
        return [b - a for a, b in itertools.pairwise(self.cycle_times_s)]

    def reports(self) -> int:
        """Reports the agents had written by the newest cycle (their sequence numbers)."""
        if self.last is None:
            return 0
        return sum(obs.report.seq for obs in self.last.snapshot.vms if obs.report is not None)


class _StatsSink:
    """A cycle sink that keeps the run's statistics and the newest cycle."""

    def __init__(self, stats: SimStats, interval_s: float) -> None:
        self._stats = stats
        self._interval_s = interval_s

    def cycle(self, result: CycleResult) -> None:
        stats = self._stats
        now = result.snapshot.now_s
        if stats.cycle_times_s:
            gap = now - stats.cycle_times_s[-1]
            if gap >= 0.99 * self._interval_s:
                stats.timer_gaps_s.append(gap)
        stats.cycle_times_s.append(now)
        stats.cycles += 1
        stats.cycle_wall_s.append(result.duration_s)
        stats.last = result
        ages = [obs.report_age_s for obs in result.snapshot.vms]
        if stats.settled_at_s is None:
            # Settled once the controller has seen every VM's report change: a
            # report already there at its start has an unknown age, which the
            # controller counts as stale until the agent writes again.
            views = result.views.values()
            if ages and all(view.report_seen_s is not None for view in views):
                stats.settled_at_s = now
            return
        known = [a for a in ages if a is not None]
        if len(known) < len(ages):
            stats.max_report_age_s = float("inf")
        elif known:
            stats.max_report_age_s = max(stats.max_report_age_s, max(known))
        stats.stale_observations += sum(
            1 for vm in result.plan.vms if vm.state in (VmState.STALE, VmState.DEAD)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SimResult:
    """The figures of a finished run."""

    scenario: str
    speed: float
    """Requested virtual seconds per wall second."""
    virtual_s: float
    """Virtual seconds the run covered."""
    wall_s: float
    """Wall seconds from the start of virtual time to the end."""
    completed: bool
    """Whether the run reached its duration (not stopped early)."""
    cycles: int
    failed_cycles: int
    peeks: int
    """Watch-woken looks at guests whose report changed."""
    mean_gap_s: float | None
    """Mean virtual time between cycles."""
    timer_gap_p50_s: float | None
    """Median virtual gap between timer cycles (the interval, if the controller keeps up)."""
    timer_gap_p95_s: float | None
    interval_s: float
    agent_interval_s: float
    """The agents' sampling interval, virtual seconds."""
    max_report_age_s: float
    stale_observations: int
    reports: int
    """Reports the agents wrote."""
    cycle_wall_p50_s: float | None
    loop_lag_p95_wall_s: float | None
    cpu_s: float
    """CPU seconds of this process (controller, store writer, telemetry)."""
    host_cpu_s: float | None
    """CPU seconds of the host process (guests, agents, balloon drivers)."""
    xenstored_cpu_s: float | None
    """CPU seconds of the xenstore server process."""
    metrics: RunMetrics | None
    """The run scored as the fast benchmark scores one."""
    static_mb: float
    """Footprint with every guest at its maximum, MiB (the benchmark's F_static)."""
    epoch: datetime
    """Wall-clock time recorded for virtual time 0."""

    @property
    def keeping_up(self) -> bool:
        """Whether the controller's cycles came about once per interval in virtual time."""
        return self.timer_gap_p50_s is not None and self.timer_gap_p50_s <= 1.2 * self.interval_s

    @property
    def achieved_speed(self) -> float:
        """Virtual seconds per wall second at which control would keep its interval.

        The clock always runs at the requested speed; when the controller
        falls behind, its cycles land farther apart in virtual time. Scaled by
        that stretch, this is the speed at which this machine runs the
        controller at its own pacing.
        """
        if self.timer_gap_p50_s is None or self.timer_gap_p50_s <= self.interval_s:
            return self.speed
        return self.speed * self.interval_s / self.timer_gap_p50_s


@dataclass(slots=True)
class SimRun:
    """A run in progress, for live displays. Read-only for callers."""

    settings: SimSettings
    clock: VirtualClock
    stats: SimStats
    domains: tuple[SimDomain, ...]
    daemon: Daemon | None = None
    started: bool = False


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid``, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
        return None


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def prepare_store(db: str, *, migrate_db: bool) -> str:
    """The database URL to record into, created or upgraded when it is SQLite."""
    url = resolve_db_url(db)
    if migrate_db and is_sqlite(url):
        if url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(url)
    return url.render_as_string(hide_password=False)


def scenario_policies(scenario: Scenario) -> dict[str, dict[str, object]]:
    """The policy fields the scenario gives each VM (min, max, weight), by VM name."""
    wanted: dict[str, dict[str, object]] = {}
    for vm in scenario.vms:
        fields: dict[str, object] = {}
        if vm.min_given:
            fields["min_kb"] = vm.min_kb
        if vm.max_kb != vm.static_max_kb:
            fields["max_kb"] = vm.max_kb
        if vm.weight != 1.0:
            # A scenario's weight 1.0 is Ballast's default weight (as in the bench).
            fields["weight"] = max(1, round(vm.weight * DEFAULT_WEIGHT))
        if fields:
            wanted[vm.name] = fields
    return wanted


async def run_sim(
    settings: SimSettings,
    *,
    stop: asyncio.Event | None = None,
    on_start: Callable[[SimRun], None] | None = None,
) -> SimResult:
    """Run the scenario on the wire until its end or until ``stop`` is set.

    The controller records into ``settings.db`` only: ``$BALLAST_DB``, which
    ``open_daemon`` would prefer, must not be set (``ballast sim`` unsets it).
    """
    stop = stop or asyncio.Event()
    if os.environ.get(DB_ENV):
        raise UsageError(
            f"${DB_ENV} is set: the controller would record there instead of the "
            "simulation's database; unset it"
        )
    domains = plan_domains(settings.scenario, host_name=settings.host_name, params=ModelParams())
    directory = settings.directory.absolute()
    xs_dir = directory / "xenstore"
    longest = xs_dir / "domain" / str(len(domains)) / "socket"
    if len(os.fsencode(longest)) > _MAX_SOCKET_PATH:
        raise UsageError(
            f"{directory} is too deep for unix socket paths; give a shorter --dir "
            "(e.g. under /tmp)"
        )
    db_url = await asyncio.to_thread(prepare_store, settings.db, migrate_db=settings.migrate_db)
    xs_dir.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(xs_dir, domains=[d.domid for d in domains])
    await asyncio.to_thread(server.start)
    try:
        await _lay_out(server, domains)
        host = HostProcess(
            HostConfig(
                scenario=str(Path(settings.scenario.source).absolute()),
                speed=settings.speed,
                xenstore_dir=str(xs_dir),
                control=str(directory / "host.sock"),
                host_name=settings.host_name,
                agent_interval_s=settings.sample_interval_s,
            ),
            log_path=directory / "host.log",
        )
        try:
            await host.start()
            run = SimRun(settings=settings, domains=domains, stats=SimStats(),
                         clock=VirtualClock(speed=settings.speed, epoch=settings.epoch))
            return await _control(run, server, host, db_url, stop, on_start)
        finally:
            await host.close()
    finally:
        await asyncio.to_thread(server.stop)


async def _lay_out(server: ServerProcess, domains: tuple[SimDomain, ...]) -> None:
    xs = PyxsClient(socket_path=str(server.privileged_socket),
                    settings=ClientSettings(timeout_s=XENSTORE_TIMEOUT_S))
    await xs.connect()
    try:
        for dom in domains:
            await lay_out_domain(xs, domid=dom.domid, name=dom.name, uuid=dom.uuid,
                                 static_max_kb=dom.static_max_kb, target_kb=dom.start_kb)
    finally:
        await xs.close()


async def _control(
    run: SimRun,
    server: ServerProcess,
    host: HostProcess,
    db_url: str,
    stop: asyncio.Event,
    on_start: Callable[[SimRun], None] | None,
) -> SimResult:
    settings, clock, stats = run.settings, run.clock, run.stats
    config = cfg.with_overrides(
        cfg.Config(),
        controller__host_name=settings.host_name,
        controller__xenstore=str(server.privileged_socket),
        controller__interval_s=settings.interval_s,
        store__url=db_url,
        mqtt__broker=settings.broker,
    )
    cpu_before = _self_cpu_s()
    async with open_daemon(config, hypervisor=RemoteHypervisor(host),
                           loop_settings=LoopSettings(time_scale=settings.speed),
                           sinks=[_StatsSink(stats, settings.interval_s)],
                           clock=clock.now_s, wall_clock=clock.wall_time) as daemon:
        run.daemon = daemon
        clock.start()
        await host.start_clock(clock.origin_s)
        run.started = True
        if on_start is not None:
            on_start(run)
        controller_stop = asyncio.Event()
        controller = asyncio.create_task(daemon.controller.run(controller_stop),
                                         name="controller")
        helpers = [asyncio.create_task(_probe_lag(stats), name="loop-lag"),
                   asyncio.create_task(_scenario_policies(run, config), name="policies")]
        outcome: GuestsOutcome | None = None
        try:
            await _until_end(run, stop, controller, host)
        finally:
            end_virtual = min(clock.now_s(), settings.run_s)
            wall = clock.wall_elapsed_s()
            controller_stop.set()
            await asyncio.gather(controller, return_exceptions=True)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            host_cpu = process_cpu_s(host.process.pid) if host.process else None
            xenstored_cpu = process_cpu_s(server.process.pid) if server.process else None
            with contextlib.suppress(TransientError):
                outcome = await host.stop()
        error = None if controller.cancelled() else controller.exception()
        if error is not None:
            raise FatalError(f"the controller stopped: {error}") from error
        if outcome is None:
            raise FatalError(f"the simulated host failed: {host.log_tail()}")
        gaps = stats.gaps_s()
        return SimResult(
            scenario=settings.scenario.name,
            speed=settings.speed,
            virtual_s=end_virtual,
            wall_s=wall,
            completed=end_virtual >= settings.run_s,
            cycles=daemon.controller.cycles,
            failed_cycles=daemon.controller.failed_cycles,
            peeks=daemon.controller.peeks,
            mean_gap_s=statistics.fmean(gaps) if gaps else None,
            timer_gap_p50_s=_percentile(stats.timer_gaps_s, 0.5),
            timer_gap_p95_s=_percentile(stats.timer_gaps_s, 0.95),
            interval_s=settings.interval_s,
            agent_interval_s=settings.sample_interval_s,
            max_report_age_s=stats.max_report_age_s,
            stale_observations=stats.stale_observations,
            reports=outcome.reports,
            cycle_wall_p50_s=_percentile(stats.cycle_wall_s, 0.5),
            loop_lag_p95_wall_s=_percentile(stats.loop_lag_wall_s, 0.95),
            cpu_s=_self_cpu_s() - cpu_before,
            host_cpu_s=host_cpu,
            xenstored_cpu_s=xenstored_cpu,
            metrics=outcome.metrics,
            static_mb=sum(vm.max_kb for vm in settings.scenario.vms) / KB_PER_MB,
            epoch=settings.epoch,
        )


async def _until_end(
    run: SimRun, stop: asyncio.Event, controller: asyncio.Task[None], host: HostProcess
) -> None:
    """Wait until virtual time reaches the end, ``stop`` is set, or a part died."""
    clock, run_s = run.clock, run.settings.run_s
    stopping = asyncio.create_task(stop.wait(), name="sim-stop")
    try:
        while not stop.is_set() and not controller.done():
            if host.process is not None and host.process.returncode is not None:
                raise FatalError(f"the simulated host exited: {host.log_tail()}")
            left_s = clock.wall_s(run_s - clock.now_s())
            if left_s <= 0:
                return
            await asyncio.wait({stopping, controller}, timeout=min(left_s, 0.5),
                               return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping


async def _probe_lag(stats: SimStats) -> None:
    """Measure how late the event loop wakes a sleeper (a saturated loop shows here)."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(_LAG_PROBE_S)
        stats.loop_lag_wall_s.append(max(0.0, loop.time() - before - _LAG_PROBE_S))


def _store_policies(daemon: Daemon, wanted: dict[str, dict[str, object]],
                    base: HostPolicy) -> None:
    daemon.writer.flush(30.0)  # the VMs must be in the store to carry a policy
    for name, fields in wanted.items():
        steering.change_vm_policy(
            daemon.store, name, fields, who="ballast sim", source=AuditSource.API, base=base,
            context=steering.stored_context(daemon.store),
        )


async def _scenario_policies(run: SimRun, config: cfg.Config) -> None:
    """Store the scenario's min, max and weight as the VMs' policy (audited as
    ``api`` by ``ballast sim``) once the controller has recorded the VMs."""
    wanted = scenario_policies(run.settings.scenario)
    daemon = run.daemon
    if not wanted or daemon is None:
        return
    while run.stats.cycles == 0:
        await asyncio.sleep(0.05)
    await asyncio.to_thread(_store_policies, daemon, wanted, base_host_policy(config))
    daemon.controller.policy_changed()
