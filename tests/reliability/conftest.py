"""Fixtures of the reliability tests: a short working directory (unix socket
paths are limited to 107 bytes) and reporting guests."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agents.schema import encode_report
from orchestrator.xenstore.client import PyxsClient
from orchestrator.xenstore.errors import XenstoreError
from tests.controller.conftest import GIB_KB, make_report
from tests.reliability.harness import FAST_RECONNECT


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rel-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class ReportingGuest:
    """A guest writing reports through its own domain socket every ``period_s``.

    Stands in for the agent where a test needs to say exactly what the guest
    reports; tests of the agent itself run the real ``ballast-agent``.
    """

    domid: int
    socket: Path
    total_kb: int
    committed_kb: int = GIB_KB
    psi: float = 0.0
    period_s: float = 0.2
    silent: bool = False
    seq: int = 0
    written: int = 0
    failures: int = 0
    _client: PyxsClient | None = None
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._client = PyxsClient(socket_path=str(self.socket), settings=FAST_RECONNECT)
        await self._client.connect()
        self._task = asyncio.create_task(self._run(), name=f"guest-{self.domid}")

    async def report_now(self) -> None:
        """Write one report now (fails if xenstore is down)."""
        assert self._client is not None
        self.seq += 1
        report = make_report(seq=self.seq, total_kb=self.total_kb,
                             committed_kb=self.committed_kb, psi=self.psi)
        await self._client.write("data/ballast/report", encode_report(report))
        self.written += 1

    async def _run(self) -> None:
        while not self._stop.is_set():
            if not self.silent:
                try:
                    await self.report_now()
                except XenstoreError:
                    self.failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.period_s)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
