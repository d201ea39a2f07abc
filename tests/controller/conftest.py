"""A simulated host for controller tests: the real xenstore server, a real pyxs
client, libxl-like domains and the simulated hypervisor (the one fake seam)."""

from __future__ import annotations

import shutil
import tempfile
import uuid as uuid_mod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agents.schema import Report, encode_report
from orchestrator.hypervisor.simulated import SimulatedHypervisor, lay_out_domain
from orchestrator.xenstore.client import PyxsClient
from orchestrator.xenstore.server import XenstoreServer

GIB_KB = 1024 * 1024
MIB_KB = 1024


def make_report(*, seq: int, total_kb: int, committed_kb: int, available_kb: int | None = None,
                psi: float = 0.0, uptime_s: float = 100.0) -> Report:
    """A plausible guest report (what the agent would send)."""
    available = available_kb if available_kb is not None else max(total_kb - committed_kb, 0)
    return Report(
        seq=seq, uptime_s=uptime_s + seq, mem_total_kb=total_kb,
        mem_free_kb=min(available, total_kb) // 2, mem_available_kb=min(available, total_kb),
        cached_kb=min(available, total_kb) // 2, committed_as_kb=committed_kb,
        totalreserve_kb=16 * MIB_KB, anon_kb=min(committed_kb, total_kb),
        swap_total_kb=GIB_KB, swap_free_kb=GIB_KB, pswpin=0, pswpout=0,
        psi_some_avg10=psi, psi_full_avg10=0.0, psi_some_total_us=0,
        refault_anon=0, refault_file=0,
    )


@dataclass
class SimHost:
    """The pieces of one simulated host."""

    server: XenstoreServer
    xs: PyxsClient
    hv: SimulatedHypervisor
    guests: dict[int, PyxsClient] = field(default_factory=dict)

    async def add_vm(self, domid: int, name: str, *, static_max_kb: int,
                     actual_kb: int | None = None) -> str:
        uuid = str(uuid_mod.uuid5(uuid_mod.NAMESPACE_DNS, f"{name}.ballast.test"))
        actual = actual_kb if actual_kb is not None else static_max_kb
        await self.server.introduce(domid)
        await lay_out_domain(self.xs, domid=domid, name=name, uuid=uuid,
                             static_max_kb=static_max_kb, target_kb=actual)
        self.hv.add_domain(domid=domid, name=name, uuid=uuid, actual_kb=actual,
                           max_kb=static_max_kb)
        return uuid

    async def guest(self, domid: int) -> PyxsClient:
        if domid not in self.guests:
            client = PyxsClient(socket_path=self.server.domain_socket(domid))
            await client.connect()
            self.guests[domid] = client
        return self.guests[domid]

    async def report(self, domid: int, report: Report) -> None:
        """The guest writes its report through its own domain socket."""
        await (await self.guest(domid)).write("data/ballast/report", encode_report(report))

    async def target(self, domid: int) -> int:
        return int(await self.xs.read(f"/local/domain/{domid}/memory/target"))

    async def follow_targets(self, dt_s: float = 1.0) -> None:
        """The balloon drivers read their targets and move for ``dt_s``."""
        for domid in list(self.guests) + [d for d in self.server_domids() if d not in self.guests]:
            try:
                self.hv.set_target(domid, await self.target(domid))
            except KeyError:
                continue
        self.hv.advance(dt_s)

    def server_domids(self) -> list[int]:
        return sorted(d for d in self.hv_domids())

    def hv_domids(self) -> list[int]:
        return [d for d in range(1, 64) if _has(self.hv, d)]


def _has(hv: SimulatedHypervisor, domid: int) -> bool:
    try:
        hv.actual_kb(domid)
    except KeyError:
        return False
    return True


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ctl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def sim_host(sock_dir: Path) -> AsyncIterator[SimHost]:
    async with XenstoreServer(sock_dir) as server:
        xs = PyxsClient(socket_path=server.privileged_socket)
        await xs.connect()
        host = SimHost(server=server, xs=xs,
                       hv=SimulatedHypervisor(total_kb=16 * GIB_KB, dom0_kb=2 * GIB_KB))
        try:
            yield host
        finally:
            for client in host.guests.values():
                await client.close()
            await xs.close()
