"""Shared fixtures: real external services, found or skipped with a clear reason.

Under ``CI=true`` a missing service is a failure, not a skip: CI machines
have Mosquitto on 127.0.0.1:1883 and PostgreSQL on 127.0.0.1:5432.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

MQTT_HOST, MQTT_PORT = "127.0.0.1", int(os.environ.get("BALLAST_TEST_MQTT_PORT", "1883"))
PG_URL = os.environ.get("BALLAST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def _require(available: bool, what: str) -> None:
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} not available on this machine")


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """Host and port of a real MQTT broker."""
    _require(_port_open(MQTT_HOST, MQTT_PORT), f"MQTT broker on {MQTT_HOST}:{MQTT_PORT}")
    return MQTT_HOST, MQTT_PORT


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of a real PostgreSQL database."""
    _require(_port_open("127.0.0.1", 5432), "PostgreSQL on 127.0.0.1:5432")
    return PG_URL


@pytest.fixture(scope="session")
def xenstore_utils() -> str:
    """Directory holding Debian's xenstore-utils binaries."""
    path = shutil.which("xenstore-write")
    _require(path is not None, "Debian's xenstore-utils (apt-get install xenstore-utils)")
    assert path is not None
    return os.path.dirname(path)
