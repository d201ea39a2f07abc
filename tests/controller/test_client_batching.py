"""The xenstore client's batching, on which the controller's cycle time rests.

Requests made in one turn of the event loop leave in one ``send`` (the rest
when the socket has room again); replies are read and handed over in batches.
These tests drive bursts larger than the socket buffers through the real
daemon, frozen, killed and restarted under them: every request gets its own
answer or a clear error, and a request that never left is sent again.
``read_many`` (the controller's way to read a fleet) is held to the same.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from orchestrator.xenstore.client import ClientSettings, PyxsClient
from orchestrator.xenstore.errors import (
    AccessDeniedError,
    InvalidRequestError,
    NoEntryError,
    XenstoreConnectionError,
    XenstoreError,
)
from orchestrator.xenstore.runner import ServerProcess
from orchestrator.xenstore.server import XenstoreServer

# Distinct 2-KiB values: 2,000 of them are 4 MiB, far more than a socket buffers.
BURST = 2000


def value(i: int) -> bytes:
    return f"{i:06d}".encode() * 340


async def test_a_burst_larger_than_the_socket_is_answered_request_by_request(
    sock_dir: Path,
) -> None:
    async with XenstoreServer(sock_dir) as server, PyxsClient(
        socket_path=server.privileged_socket, settings=ClientSettings(timeout_s=30.0)
    ) as xs:
        await asyncio.gather(*(xs.write(f"/burst/{i}", value(i)) for i in range(BURST)))
        got = await asyncio.gather(*(xs.read(f"/burst/{i}") for i in range(BURST)))
        assert got == [value(i) for i in range(BURST)]
        names = await xs.directory("/burst")
        assert sorted(names, key=int) == [str(i) for i in range(BURST)]


async def test_a_burst_behind_a_frozen_daemon_times_out_and_the_client_recovers(
    sock_dir: Path,
) -> None:
    with ServerProcess(sock_dir) as daemon:
        settings = ClientSettings(timeout_s=1.0, reconnect_min_s=0.02, reconnect_max_s=0.1)
        async with PyxsClient(socket_path=daemon.privileged_socket, settings=settings) as xs:
            await xs.write("/before", "1")
            daemon.signal(signal.SIGSTOP)
            try:
                started = asyncio.get_running_loop().time()
                results = await asyncio.gather(
                    *(xs.write(f"/frozen/{i}", value(i)) for i in range(BURST)),
                    return_exceptions=True,
                )
                elapsed = asyncio.get_running_loop().time() - started
            finally:
                daemon.signal(signal.SIGCONT)
            assert all(isinstance(r, XenstoreError) for r in results)
            assert elapsed < 5.0  # each request has its deadline, queued or not
            await xs.write("/after", "2")  # a new connection, as if nothing happened
            assert await xs.read("/after") == b"2"


async def test_requests_that_never_left_are_sent_again_to_a_restarted_daemon(
    sock_dir: Path,
) -> None:
    first = ServerProcess(sock_dir)
    first.start()
    second: ServerProcess | None = None
    try:
        settings = ClientSettings(timeout_s=10.0, reconnect_min_s=0.02, reconnect_max_s=0.1)
        async with PyxsClient(socket_path=first.privileged_socket, settings=settings) as xs:
            await xs.write("/before", "1")
            first.signal(signal.SIGSTOP)
            writes = asyncio.gather(
                *(xs.write(f"/burst/{i}", value(i)) for i in range(BURST)),
                return_exceptions=True,
            )
            await asyncio.sleep(0.3)  # most of the burst is still queued in the client
            first.kill()  # the daemon dies: its connection resets
            second = ServerProcess(sock_dir)
            await asyncio.to_thread(second.start)
            results = await asyncio.wait_for(writes, 30)
            ok = [i for i, r in enumerate(results) if r is None]
            failed = [r for r in results if r is not None]
            # Sent but unanswered: lost with the daemon, and said so. Never sent:
            # sent again to the new daemon, which has them.
            assert all(isinstance(r, XenstoreConnectionError) for r in failed)
            assert len(ok) > BURST // 2
            got = await asyncio.gather(*(xs.read(f"/burst/{i}") for i in ok))
            assert got == [value(i) for i in ok]
    finally:
        first.kill()
        if second is not None:
            second.stop()


async def test_read_many_answers_each_path_with_its_value_or_its_error(sock_dir: Path) -> None:
    async with XenstoreServer(sock_dir) as server, PyxsClient(
        socket_path=server.privileged_socket
    ) as xs:
        await server.introduce(5)
        await server.introduce(6)
        await xs.write("/local/domain/6/data/secret", "6's")
        await asyncio.gather(*(xs.write(f"/many/{i}", value(i)) for i in range(0, 3000, 2)))
        paths = [f"/many/{i}" for i in range(3000)]
        got = await xs.read_many(paths)
        for i, result in enumerate(got):
            if i % 2 == 0:
                assert result == value(i)
            else:
                assert isinstance(result, NoEntryError) and result.path == f"/many/{i}"
        async with PyxsClient(socket_path=server.domain_socket(5)) as guest:
            await guest.write("data/mine", "5's")
            mine, theirs, relative = await guest.read_many(
                ["/local/domain/5/data/mine", "/local/domain/6/data/secret", "data/mine"]
            )
            assert mine == b"5's" and relative == b"5's"
            assert isinstance(theirs, AccessDeniedError)
        with pytest.raises(InvalidRequestError):
            await xs.read_many(["/many/0", "/bad//path"])
        assert await xs.read_many([]) == []


async def test_read_many_sends_again_what_never_left_when_the_daemon_restarts(
    sock_dir: Path,
) -> None:
    first = ServerProcess(sock_dir)
    first.start()
    second: ServerProcess | None = None
    try:
        settings = ClientSettings(timeout_s=10.0, reconnect_min_s=0.02, reconnect_max_s=0.1)
        async with PyxsClient(socket_path=first.privileged_socket, settings=settings) as xs:
            await xs.write("/before", "1")
            first.signal(signal.SIGSTOP)
            # 20,000 reads are about 1 MB of requests: most stay queued in the client.
            reads = asyncio.ensure_future(xs.read_many([f"/r/{i}" for i in range(20_000)]))
            await asyncio.sleep(0.3)
            first.kill()
            second = ServerProcess(sock_dir)
            await asyncio.to_thread(second.start)
            got = await asyncio.wait_for(reads, 30)
            answered = [r for r in got if isinstance(r, NoEntryError)]  # by the new daemon
            lost = [r for r in got if isinstance(r, XenstoreConnectionError)]
            assert len(answered) + len(lost) == len(got)
            assert len(answered) > len(got) // 2
            assert all(r.op == "READ" and r.path.startswith("/r/") for r in lost)
    finally:
        first.kill()
        if second is not None:
            second.stop()
