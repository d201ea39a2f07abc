"""Fixtures for the MQTT tests: unique topic prefixes, a private broker, polling."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
_SESSION_ROOT = f"ballast-test-{uuid.uuid4().hex[:10]}"
_counter = itertools.count()


@pytest.fixture(scope="session")
def _prefix_root(mqtt_broker: tuple[str, int]) -> Iterator[str]:
    """One root for the whole run; its retained messages are removed at the end."""
    yield _SESSION_ROOT
    host, port = mqtt_broker
    # mosquitto_sub is an independent client: clear every retained message the
    # tests left below the root (the shared broker persists them otherwise).
    subprocess.run(
        ["mosquitto_sub", "-h", host, "-p", str(port), "-t", f"{_SESSION_ROOT}/#",
         "--retained-only", "--remove-retained", "-W", "1"],
        capture_output=True, check=False,
    )


@pytest.fixture
def prefix(_prefix_root: str) -> str:
    """A topic prefix no other test uses."""
    return f"{_prefix_root}/t{next(_counter)}"


async def eventually(
    probe: Callable[[], Any], *, timeout_s: float = 5.0, what: str = "condition"
) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateBroker:
    """A mosquitto of our own on a free port, to stop and start at will."""

    def __init__(self, config: Path | None = None) -> None:
        self.port = free_port()
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None
        # No config file: Mosquitto 2 then listens on localhost only, anonymous
        # allowed, and keeps no retained messages across restarts.
        args = ["-p", str(self.port)] if self.config is None else ["-c", str(self.config)]
        self.proc = subprocess.Popen(
            [MOSQUITTO, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise AssertionError(f"private mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture
def private_broker(mqtt_broker: tuple[str, int]) -> Iterator[PrivateBroker]:
    """Started private broker; killed at the end whatever happened."""
    if not shutil.which(MOSQUITTO):
        pytest.fail(f"{MOSQUITTO} is needed for the broker-down test")
    broker = PrivateBroker()
    broker.start()
    try:
        yield broker
    finally:
        if broker.proc is not None:
            broker.stop()
