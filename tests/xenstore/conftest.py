"""Fixtures for the xenstore tests: a live server in a short socket directory."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from orchestrator.xenstore.rawclient import RawClient
from orchestrator.xenstore.server import XenstoreServer


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="xs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def server(sock_dir: Path) -> AsyncIterator[XenstoreServer]:
    """A running server with domains 5 and 6 introduced."""
    async with XenstoreServer(sock_dir) as srv:
        await srv.introduce(5)
        await srv.introduce(6)
        yield srv


@pytest.fixture
async def dom0(server: XenstoreServer) -> AsyncIterator[RawClient]:
    """A client on the privileged socket."""
    async with await RawClient.connect(server.privileged_socket) as client:
        yield client


@pytest.fixture
async def guest5(server: XenstoreServer) -> AsyncIterator[RawClient]:
    """A client on domain 5's socket."""
    async with await RawClient.connect(server.domain_socket(5)) as client:
        yield client


@pytest.fixture
async def guest6(server: XenstoreServer) -> AsyncIterator[RawClient]:
    """A client on domain 6's socket."""
    async with await RawClient.connect(server.domain_socket(6)) as client:
        yield client
