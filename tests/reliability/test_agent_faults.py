"""A guest agent dies (SIGKILL) or hangs (SIGSTOP): its VM holds its target
while the report is stale, drifts to its policy fallback once the report is
dead, and comes back under control when the agent does. The other VM never
notices. Real ``ballast-agent`` processes on captured /proc trees, the real
daemon with its SQLite history; stale and dead limits shortened through the
host policy, as an operator would set them."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from orchestrator import steering
from orchestrator.control import VmState
from orchestrator.store.records import AuditSource
from tests.controller.conftest import GIB_KB
from tests.reliability.conftest import FIXTURES, daemon_host, start_agent
from tests.reliability.harness import Domain, eventually

pytestmark = pytest.mark.slow

STALE_S, DEAD_S = 2.0, 4.0
DB_FALLBACK_KB = 3968 * 1024  # above where the law keeps db: reached in one step


async def test_dead_and_hung_agents_hold_then_drift_then_resume(workdir: Path) -> None:
    web = Domain(5, "web", 8 * GIB_KB, 8 * GIB_KB)
    db = Domain(6, "db", 4 * GIB_KB, 4 * GIB_KB)
    other = Domain(7, "app", 4 * GIB_KB, 4 * GIB_KB)
    trees = {5: "linux-6.1-xen-pvh-zswap", 6: "linux-5.10-xen-hvm", 7: "linux-5.10-xen-hvm"}
    async with daemon_host(workdir, [web, db, other]) as host:
        agents = {d: start_agent(host.server.domain_socket(d), FIXTURES / tree)
                  for d, tree in trees.items()}
        try:
            await eventually(lambda: all(host.state(d) is VmState.OK for d in trees),
                             timeout_s=20, what="every VM controlled")
            await asyncio.to_thread(host.daemon.writer.flush, 10)
            store = host.daemon.store
            await asyncio.to_thread(
                steering.change_host_policy, store, {"stale_s": STALE_S, "dead_s": DEAD_S},
                who="test", source=AuditSource.API, base=host.base)
            await asyncio.to_thread(
                steering.change_vm_policy, store, "db", {"fallback_kb": DB_FALLBACK_KB},
                who="test", source=AuditSource.API, base=host.base)
            host.controller.policy_changed()
            # Settled: the law's targets, away from the fallbacks (web's is its max).
            await eventually(lambda: (vm := host.vm(5)) is not None and vm.target_kb < 7 * GIB_KB
                             and not vm.write, timeout_s=20, what="web settled")
            await eventually(lambda: (vm := host.vm(6)) is not None
                             and vm.target_kb != DB_FALLBACK_KB and not vm.write,
                             timeout_s=20, what="db settled")

            # web's agent dies; db's hangs. Once their reports are stale, their
            # targets are held until the reports are dead.
            agents[5].send_signal(signal.SIGKILL)
            await asyncio.to_thread(agents[5].wait, 5)
            agents[6].send_signal(signal.SIGSTOP)
            hurt_at = time.monotonic()
            held: dict[int, int] = {}
            while len(held) < 2 or any(host.state(d) is VmState.STALE for d in (5, 6)):
                for d in (5, 6):
                    state = host.state(d)
                    if state is VmState.STALE and d not in held:
                        held[d] = await host.target(d)
                        # the report is stale once it is stale_s old (a heartbeat is 1 s)
                        assert time.monotonic() - hurt_at < STALE_S + 1.0 + 1.0
                    if d in held and state is VmState.STALE:
                        assert await host.target(d) == held[d], f"domain {d} moved while stale"
                assert host.state(7) is VmState.OK
                assert time.monotonic() - hurt_at < DEAD_S + 3, "never went stale, then dead"
                await asyncio.sleep(0.05)

            # Dead: each drifts to its fallback (web: its max; db: the policy's).
            await eventually(lambda: host.state(5) is VmState.DEAD and host.state(6)
                             is VmState.DEAD, timeout_s=DEAD_S + 2, what="both dead")
            assert time.monotonic() - hurt_at >= DEAD_S - 1.0  # the last report was <= 1 s old
            await eventually(lambda: host.vm(5) is not None and host.vm(5).target_kb
                             == web.static_max_kb, timeout_s=5, what="web at its fallback")
            await eventually(lambda: host.vm(6) is not None and host.vm(6).target_kb
                             == DB_FALLBACK_KB, timeout_s=5, what="db at its fallback")
            assert host.state(7) is VmState.OK

            # They come back: control resumes at once.
            agents[5] = start_agent(host.server.domain_socket(5), FIXTURES / trees[5])
            agents[6].send_signal(signal.SIGCONT)
            back_at = time.monotonic()
            await eventually(lambda: host.state(5) is VmState.OK and host.state(6)
                             is VmState.OK, timeout_s=10, what="both fresh again")
            assert time.monotonic() - back_at < 5.0
            await eventually(lambda: (vm := host.vm(5)) is not None and vm.target_kb
                             < web.static_max_kb, timeout_s=20, what="web controlled again")

            await asyncio.to_thread(host.daemon.writer.flush, 10)
            kinds = [(e.kind, e.domain.name if e.domain else None)
                     for e in store.events(since="10m")]
            for name in ("web", "db"):
                assert ("stale", name) in kinds and ("fresh", name) in kinds
            assert ("stale", "app") not in kinds
        finally:
            for proc in agents.values():
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.to_thread(proc.wait, 10)
