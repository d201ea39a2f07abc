"""The real agent against the project's xenstore server, on a guest's domain socket.

Each test copies a fixture tree, starts ``XenstoreServer`` with domains 5 and 6,
runs ``Agent`` connected to domain 5's socket exactly as in simulation, and
looks at the store from dom0's privileged socket: exact keys, values,
permissions; directives round-trip through the real actuator logic, with swap
commands intercepted at the ``SwapCommands`` seam only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agents.actuators import (
    NullActuator,
    SelfballoonActuator,
    ShrinkActuator,
    ShrinkGuard,
    SwapoffActuator,
)
from agents.agent import Agent, AgentStore
from agents.main import connector
from agents.schema import Directive, DirectiveAck, Report, decode_report, encode_directive
from agents.settings import AgentSettings, make_settings
from agents.source import SELFBALLOON_DIR, ProcMemorySource, to_report
from orchestrator.xenstore.errors import NoEntryError
from orchestrator.xenstore.perms import Access, Perm
from orchestrator.xenstore.rawclient import RawClient
from orchestrator.xenstore.server import XenstoreServer
from tests.agents.guest import FakeSwapCommands, GuestKernel, copy_tree

HOME = "/local/domain/5"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="xs-agent-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def server(sock_dir: Path) -> AsyncIterator[XenstoreServer]:
    async with XenstoreServer(sock_dir) as srv:
        await srv.introduce(5)
        await srv.introduce(6)
        yield srv


@pytest.fixture
async def dom0(server: XenstoreServer) -> AsyncIterator[RawClient]:
    async with await RawClient.connect(server.privileged_socket) as client:
        yield client


def settings_for(sock_dir: Path, root: Path, **overrides: str) -> AgentSettings:
    options = dict(xenstore=f"unix:{sock_dir}/domain/5/socket", root=str(root), page_kb=4,
                   interval="0.02s", heartbeat="30s", min_interval="0s", shrink="none")
    options.update(overrides)
    settings = make_settings(**options)  # type: ignore[arg-type]
    return replace(settings, backoff_initial_s=0.02, backoff_max_s=0.1, xenstore_timeout_s=0.5)


class Running:
    """An agent running in the background of a test."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(agent.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)


@contextlib.asynccontextmanager
async def running(settings: AgentSettings,
                  actuator: Callable[[ProcMemorySource], ShrinkActuator] = NullActuator,
                  ) -> AsyncIterator[Running]:
    source = ProcMemorySource(settings.root, page_kb=settings.page_kb)
    agent = Agent(settings, source=source, actuator=actuator(source),
                  connect=connector(settings.connection, timeout_s=settings.xenstore_timeout_s))
    run = Running(agent)
    try:
        yield run
    finally:
        await run.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def read_report(dom0: RawClient) -> Report | None:
    try:
        return decode_report(await dom0.read(f"{HOME}/data/ballast/report"))
    except NoEntryError:
        return None


async def report_where(dom0: RawClient, predicate: Callable[[Report], bool]) -> Report:
    found: list[Report] = []

    async def check() -> bool:
        report = await read_report(dom0)
        if report is not None and predicate(report):
            found.append(report)
            return True
        return False

    await eventually(check)
    return found[0]


async def test_writes_exact_keys_values_and_permissions(
    server: XenstoreServer, dom0: RawClient, sock_dir: Path, tmp_path: Path
) -> None:
    root = copy_tree("linux-6.1-xen-pvh-zswap", tmp_path)
    async with running(settings_for(sock_dir, root)):
        report = await report_where(dom0, lambda r: True)
    assert report == to_report(ProcMemorySource(root).sample(), seq=1, ack=None)
    assert await dom0.read(f"{HOME}/data/meminfo_total") == b"8203360"
    assert await dom0.read(f"{HOME}/data/meminfo_free") == b"2400000"
    assert sorted(await dom0.directory(f"{HOME}/data")) == ["ballast", "meminfo_free",
                                                            "meminfo_total"]
    assert await dom0.directory(f"{HOME}/data/ballast") == ["report"]
    # The guest owns what it writes; no other domain may read it.
    for key in ("data/ballast", "data/ballast/report", "data/meminfo_total", "data/meminfo_free"):
        assert await dom0.get_perms(f"{HOME}/{key}") == (Perm(Access.NONE, 5),), key
    # Nothing appeared in the other guest's home.
    assert await dom0.directory("/local/domain/6/data") == []


async def test_reports_a_change_at_once_and_keeps_counting(
    server: XenstoreServer, dom0: RawClient, sock_dir: Path, tmp_path: Path
) -> None:
    kernel = GuestKernel(copy_tree("linux-6.1-xen-pvh-zswap", tmp_path))
    async with running(settings_for(sock_dir, kernel.root)):
        await report_where(dom0, lambda r: r.seq == 1)
        await asyncio.sleep(0.1)
        assert (await read_report(dom0)).seq == 1  # type: ignore[union-attr]  # idle: quiet
        kernel.set_meminfo(MemAvailable=1_000_000, MemFree=900_000)
        changed = await report_where(dom0, lambda r: r.seq == 2)
    assert changed.mem_available_kb == 1_000_000
    assert await dom0.read(f"{HOME}/data/meminfo_free") == b"900000"


async def test_directive_round_trip_through_swapoff(
    server: XenstoreServer, dom0: RawClient, sock_dir: Path, tmp_path: Path
) -> None:
    kernel = GuestKernel(copy_tree("linux-5.10-xen-hvm", tmp_path))
    commands = FakeSwapCommands(kernel)
    settings = settings_for(sock_dir, kernel.root)

    def swapoff(source: ProcMemorySource) -> ShrinkActuator:
        return SwapoffActuator(source, kernel.root, commands, guard=ShrinkGuard())

    async with running(settings, swapoff):
        await report_where(dom0, lambda r: r.seq == 1)
        await dom0.write(f"{HOME}/data/ballast/directive",
                         encode_directive(Directive(seq=3, swap_target_kb=100_000)))
        acked = await report_where(dom0, lambda r: r.directive_ack is not None)
    assert acked.directive_ack == DirectiveAck(
        seq=3, outcome="done", detail="cycled /dev/xvda3; 51200 KiB swapped, within the target")
    assert acked.swap_total_kb - acked.swap_free_kb == 51200
    assert commands.calls == [("swapoff", "/dev/xvda3", None), ("swapon", "/dev/xvda3", None)]


async def test_directive_round_trip_through_the_kernel_self_shrink(
    server: XenstoreServer, dom0: RawClient, sock_dir: Path, tmp_path: Path
) -> None:
    kernel = GuestKernel(copy_tree("linux-4.19-xen-pv", tmp_path))
    knobs = kernel.root / SELFBALLOON_DIR

    def selfballoon(source: ProcMemorySource) -> ShrinkActuator:
        return SelfballoonActuator(source, knobs, guard=ShrinkGuard(), poll_s=0.02,
                                   max_duration_s=10.0)

    async def kernel_worker() -> None:  # the selfballoon worker, sped up
        while True:
            kernel.selfshrink_tick()
            await asyncio.sleep(0.01)

    worker = asyncio.create_task(kernel_worker())
    try:
        async with running(settings_for(sock_dir, kernel.root), selfballoon):
            await report_where(dom0, lambda r: r.seq == 1)
            await dom0.write(f"{HOME}/data/ballast/directive",
                             encode_directive(Directive(seq=8, swap_target_kb=100_000)))
            acked = await report_where(dom0, lambda r: r.directive_ack is not None)
    finally:
        worker.cancel()
    used = acked.swap_total_kb - acked.swap_free_kb
    assert acked.directive_ack == DirectiveAck(seq=8, outcome="done",
                                               detail=f"shrank from 184320 to {used} KiB")
    assert used <= 100_000
    assert kernel.knob("frontswap_selfshrinking") == "0"


async def test_bad_directive_is_logged_once_and_ignored(
    server: XenstoreServer, dom0: RawClient, sock_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = copy_tree("linux-6.1-xen-pvh-zswap", tmp_path)
    caplog.set_level(logging.INFO, logger="ballast.agent")
    async with running(settings_for(sock_dir, root)):
        await report_where(dom0, lambda r: True)
        for junk in (b"{not json", b'{"v":1,"seq":-1}', b'{"v":9,"seq":1}'):
            await dom0.write(f"{HOME}/data/ballast/directive", junk)
            await asyncio.sleep(0.05)
        await dom0.write(f"{HOME}/data/ballast/directive",
                         encode_directive(Directive(seq=1, swap_target_kb=0)))
        acked = await report_where(dom0, lambda r: r.directive_ack is not None)
    assert acked.directive_ack == DirectiveAck(seq=1, outcome="unsupported",
                                               detail="no swap-shrink actuator on this guest")
    messages = [r.getMessage() for r in caplog.records]
    ignoring = [m for m in messages if m.startswith("ignoring directive")]
    assert len(ignoring) == 1
    assert ignoring[0].startswith("ignoring directive: directive is not valid JSON")
    assert f"resolved: {ignoring[0]}" in messages


async def test_writing_outside_its_domain_is_refused_and_logged_once(
    server: XenstoreServer, dom0: RawClient, sock_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = copy_tree("linux-6.1-xen-pvh-zswap", tmp_path)
    caplog.set_level(logging.INFO, logger="ballast.agent")
    # Misconfigured: domain 5's agent told to write into domain 6's home.
    settings = settings_for(sock_dir, root, data_dir="/local/domain/6/data", heartbeat="0.1s",
                            min_interval="0.1s")
    async with running(settings) as run:
        await asyncio.sleep(0.5)  # several heartbeats, each retrying the write
        assert not run.task.done()
    refused = [r.getMessage() for r in caplog.records
               if r.getMessage().startswith("xenstore refused")]
    # One line per refused request, however often it was retried.
    assert refused.count(
        "xenstore refused: WRITE /local/domain/6/data/meminfo_total: EACCES (Permission denied)"
    ) == 1
    assert len(refused) == len(set(refused)) == 3
    assert await dom0.directory("/local/domain/6/data") == []
    assert await dom0.directory(f"{HOME}/data") == []


async def test_unreportable_guest_still_writes_meminfo(
    server: XenstoreServer, dom0: RawClient, sock_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = copy_tree("truncated", tmp_path)
    caplog.set_level(logging.INFO, logger="ballast.agent")
    async with running(settings_for(sock_dir, root)):
        async def meminfo_written() -> bool:
            try:
                return await dom0.read(f"{HOME}/data/meminfo_total") == b"8203360"
            except NoEntryError:
                return False

        await eventually(meminfo_written)
        await asyncio.sleep(0.1)
    assert await read_report(dom0) is None
    cannot = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot report")]
    assert cannot == ["cannot report: missing uptime_s, committed_as_kb, totalreserve_kb, pswpout"]


async def test_resumes_after_a_previous_run(
    server: XenstoreServer, dom0: RawClient, sock_dir: Path, tmp_path: Path
) -> None:
    root = copy_tree("linux-6.1-xen-pvh-zswap", tmp_path)
    sample = ProcMemorySource(root).sample()
    ack = DirectiveAck(seq=4, outcome="done", detail="earlier run")
    previous = to_report(sample, seq=41, ack=ack)
    from agents.schema import encode_report

    await dom0.write(f"{HOME}/data/ballast/report", encode_report(previous))
    await dom0.write(f"{HOME}/data/ballast/directive",
                     encode_directive(Directive(seq=4, swap_target_kb=0)))
    async with running(settings_for(sock_dir, root)):
        report = await report_where(dom0, lambda r: r.seq == 42)
    # The directive already answered is not acted on again.
    assert report.directive_ack == ack


async def test_keeps_running_while_xenstore_is_away(
    sock_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_tree("linux-6.1-xen-pvh-zswap", tmp_path)
    caplog.set_level(logging.INFO, logger="ballast.agent")
    # A short heartbeat, so that writes fall due while xenstore is away.
    settings = replace(settings_for(sock_dir, root, heartbeat="0.2s", min_interval="0.2s"),
                       xenstore_timeout_s=0.25)
    real = connector(settings.connection, timeout_s=settings.xenstore_timeout_s)
    attempts = 0

    def counting() -> contextlib.AbstractAsyncContextManager[AgentStore]:
        nonlocal attempts
        attempts += 1
        return real()

    source = ProcMemorySource(root)
    run = Running(Agent(settings, source=source, actuator=NullActuator(source),
                        connect=counting))
    try:
        await asyncio.sleep(0.8)  # no server yet: retries with backoff
        before_server = attempts
        for _ in range(2):
            async with XenstoreServer(sock_dir) as srv:
                await srv.introduce(5)
                async with await RawClient.connect(srv.privileged_socket) as dom0:
                    report = await report_where(dom0, lambda r: True)
                    assert report.mem_total_kb == 8203360
            await asyncio.sleep(0.8)  # server gone: heartbeats fail, the agent retries
        assert not run.task.done()
    finally:
        await run.close()
    assert before_server >= 2
    assert attempts >= before_server + 3
    messages = [r.getMessage() for r in caplog.records]
    unavailable = [m for m in messages if m.startswith("xenstore unavailable")]
    resolved = [m for m in messages if m.startswith("resolved: xenstore unavailable")]
    # Said once per outage (three outages), however many retries each took.
    assert len(unavailable) == 3, messages
    assert len(resolved) == 2
