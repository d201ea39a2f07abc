"""A controller process killed with SIGKILL: the broker publishes its last will.

The process is the real daemon (store, controller, telemetry, metrics) on a
simulated host (``tests/telemetry/sim_controller.py``). While it runs, its
``/metrics`` endpoint is scraped over HTTP and the fleet view reads it online;
after the kill, the fleet view reads it offline from the broker's last will.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.telemetry import BrokerSettings
from orchestrator.telemetry.fleet import fetch_fleet
from orchestrator.telemetry.messages import HostOfflineMsg
from tests.telemetry.conftest import eventually, free_port

pytestmark = pytest.mark.mqtt

ROOT = Path(__file__).parents[2]


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ctl-proc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_killed_controller_is_marked_offline_by_its_last_will(
    workdir: Path, mqtt_broker: tuple[str, int], prefix: str
) -> None:
    address, port = mqtt_broker
    metrics_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.telemetry.sim_controller", str(workdir),
         "--host-name", "doomed", "--broker-port", str(port), "--prefix", prefix,
         "--metrics-port", str(metrics_port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line == b"ready\n", proc.stderr.read() if proc.stderr else line
        broker = BrokerSettings(host=address, port=port)

        async def condition() -> str:
            view = (await fetch_fleet(broker, prefix, timeout_s=5)).view(now=time.time())
            return view.hosts[0].condition if len(view.hosts) == 1 else ""

        assert await condition() == "online"
        text = await asyncio.to_thread(_metrics, metrics_port)
        assert "ballast_mqtt_connected 1.0" in text
        assert 'ballast_vm_target_bytes{uuid="00000000-0000-4000-8000-000000000005",vm="web"}' in (
            text
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

        async def offline() -> bool:
            return await condition() == "offline"

        await eventually(offline, what="the last will")
        collector = await fetch_fleet(broker, prefix, timeout_s=5)
        (host,) = collector.view(now=time.time()).hosts
        # The will is set at connect, so it carries no time; a goodbye would.
        assert isinstance(host.status, HostOfflineMsg) and host.status.updated is None
        assert [vm.name for vm in host.vms] == ["db", "web"]  # states stay as a record
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
