"""The pyxs wrapper: the XenstoreClient interface, and each pyxs 0.4.1 defect neutralised.

Each defect is shown on plain pyxs first (so the test would notice a pyxs that
no longer has it), then on the wrapper. Faults are real: a frozen or killed
daemon process, a restarted server, a socket closed mid-request.
"""

from __future__ import annotations

import asyncio
import os
import pty
import resource
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tty
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pyxs

from orchestrator.xenstore.client import ClientSettings, PyxsClient, check_value, open_client
from orchestrator.xenstore.errors import (
    AccessDeniedError,
    ConflictError,
    InvalidRequestError,
    NoEntryError,
    XenstoreConnectionError,
    XenstoreTimeoutError,
)
from orchestrator.xenstore.perms import parse_perms
from orchestrator.xenstore.runner import ServerProcess
from orchestrator.xenstore.server import XenstoreServer

FAST = ClientSettings(timeout_s=2.0, reconnect_min_s=0.02, reconnect_max_s=0.2)


@pytest.fixture
async def xs(server: XenstoreServer) -> AsyncIterator[PyxsClient]:
    async with PyxsClient(socket_path=server.privileged_socket, settings=FAST) as client:
        yield client


@pytest.fixture
async def xs5(server: XenstoreServer) -> AsyncIterator[PyxsClient]:
    async with PyxsClient(socket_path=server.domain_socket(5), settings=FAST) as client:
        yield client


def run_snippet(code: str, timeout_s: float = 20.0) -> str:
    """Run Python code in a fresh interpreter; return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout_s, check=True,
    )  # fmt: skip
    return result.stdout.strip()


# --- the interface ----------------------------------------------------------------------


async def test_node_operations(xs: PyxsClient) -> None:
    await xs.write("/a/b", "1")
    await xs.write("/a/c", b"2")
    assert await xs.read("/a/b") == b"1"
    assert await xs.directory("/a") == ["b", "c"]
    await xs.mkdir("/a/d")
    assert await xs.read("/a/d") == b""
    await xs.set_perms("/a/b", parse_perms(["n0", "r5"]))
    assert await xs.get_perms("/a/b") == parse_perms(["n0", "r5"])
    await xs.rm("/a")
    with pytest.raises(NoEntryError) as info:
        await xs.read("/a/b")
    assert (info.value.op, info.value.path, info.value.errno_name) == ("READ", "/a/b", "ENOENT")


async def test_guest_socket(xs5: PyxsClient, xs: PyxsClient) -> None:
    await xs5.write("data/report", '{"v":1}')
    assert await xs.read("/local/domain/5/data/report") == b'{"v":1}'
    await xs.write("/local/domain/5/memory/target", "1048576")
    assert await xs5.read("memory/target") == b"1048576"
    with pytest.raises(AccessDeniedError) as info:
        await xs5.write("memory/target", "1")
    assert info.value.path == "memory/target"
    assert info.value.errno_name == "EACCES"
    assert "WRITE memory/target: EACCES" in str(info.value)
    with pytest.raises(AccessDeniedError):
        await xs5.write("/local/domain/6/data/x", "1")


async def test_large_directory_is_listed_with_directory_part(xs: PyxsClient) -> None:
    names = [f"a-fairly-long-child-name-{i:05d}" for i in range(300)]  # ~9.6 KiB of names

    async def create(tx: object) -> None:
        for name in names:
            await tx.mkdir(f"/wide/{name}")  # type: ignore[attr-defined]

    await xs.transaction(create)
    assert await xs.directory("/wide") == names


async def test_client_errors_are_transient(xs: PyxsClient) -> None:
    from orchestrator.errors import TransientError

    with pytest.raises(TransientError):
        await xs.read("/missing")


# --- defect: empty and non-ASCII values ---------------------------------------------------


async def test_pyxs_rejects_empty_and_non_ascii_values_with_a_bare_value_error(
    server: XenstoreServer,
) -> None:
    def plain_pyxs() -> list[str]:
        with pyxs.Client(unix_socket_path=str(server.privileged_socket)) as client:
            outcomes = []
            for value in (b"", "é".encode()):
                try:
                    client.write(b"/plain", value)
                    outcomes.append("written")
                except ValueError as exc:
                    outcomes.append(type(exc).__name__)
            return outcomes

    assert await asyncio.to_thread(plain_pyxs) == ["ValueError", "ValueError"]


async def test_empty_values_are_written(xs: PyxsClient) -> None:
    await xs.write("/empty", b"")
    assert await xs.read("/empty") == b""
    await xs.write("/empty", "")
    assert await xs.read("/empty") == b""


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("é", id="non-ascii-str"),
        pytest.param("é".encode(), id="utf8-bytes"),
        pytest.param(b"\xff", id="high-byte"),
        pytest.param(b"a\nb", id="newline"),
        pytest.param(b"\x00", id="nul"),
        pytest.param("x" * 4096, id="too-long"),
    ],
)
async def test_bad_values_are_refused_before_sending(xs: PyxsClient, value: bytes | str) -> None:
    with pytest.raises(InvalidRequestError, match="/refused"):
        await xs.write("/refused", value)
    with pytest.raises(NoEntryError):
        await xs.read("/refused")  # nothing reached the daemon


def test_check_value_accepts_printable_ascii() -> None:
    printable = bytes(range(0x20, 0x7F))
    assert check_value("/p", printable) == printable
    assert check_value("/p", printable.decode()) == printable


@pytest.mark.parametrize("path", ["", "/a/", "a//b", "/a b", "/é", "@releaseDomain"])
async def test_bad_paths_are_refused_before_sending(xs: PyxsClient, path: str) -> None:
    with pytest.raises(InvalidRequestError, match="invalid"):
        await xs.read(path)


# --- defect: a request blocks forever when the daemon dies ------------------------------------


def test_pyxs_blocks_forever_when_the_daemon_dies_mid_request() -> None:
    out = run_snippet(
        """
        import os, socket, tempfile, threading
        import pyxs
        path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "socket")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(1)
        def daemon():  # reads one whole request, then dies without answering
            conn, _ = listener.accept()
            data = b""
            while len(data) < 16 or len(data) < 16 + int.from_bytes(data[12:16], "little"):
                data += conn.recv(4096)
            conn.close()
        threading.Thread(target=daemon, daemon=True).start()
        client = pyxs.Client(unix_socket_path=path)
        client.connect()
        reader = threading.Thread(target=client.read, args=(b"/k",), daemon=True)
        reader.start()
        reader.join(1.5)
        print("still blocked" if reader.is_alive() else "returned")
        """
    )
    assert out == "still blocked"


async def test_frozen_daemon_times_out_and_dead_daemon_fails_fast(sock_dir: Path) -> None:
    with ServerProcess(sock_dir) as daemon:
        quick = ClientSettings(timeout_s=0.5, reconnect_min_s=0.05, reconnect_max_s=0.2)
        patient = ClientSettings(timeout_s=10.0)
        async with PyxsClient(socket_path=daemon.privileged_socket, settings=quick) as client, \
                PyxsClient(socket_path=daemon.privileged_socket, settings=patient) as other:
            await client.write("/k", "v")
            await other.read("/k")
            daemon.signal(signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(XenstoreTimeoutError) as info:
                await client.read("/k")
            assert time.monotonic() - started < 2.0
            assert (info.value.op, info.value.path, info.value.errno_name) == (
                "READ", "/k", "ETIMEDOUT"
            )
            assert str(daemon.privileged_socket) in str(info.value)

            # A request in flight when the daemon dies fails at once, not after 10 s.
            in_flight = asyncio.ensure_future(other.read("/k"))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            daemon.kill()
            with pytest.raises(XenstoreConnectionError) as died:
                await in_flight
            assert time.monotonic() - started < 3.0
            assert died.value.path == "/k"

            with pytest.raises(XenstoreConnectionError, match="unavailable"):
                await client.read("/k")  # no daemon: a clear error within the timeout


# --- defect: a closed client cannot reconnect -------------------------------------------------


async def test_pyxs_client_cannot_reconnect_after_close(server: XenstoreServer) -> None:
    def plain_pyxs() -> str:
        client = pyxs.Client(unix_socket_path=str(server.privileged_socket))
        client.connect()
        client.close()
        try:
            client.connect()
        except RuntimeError as exc:
            return str(exc)
        return "reconnected"

    assert "once" in await asyncio.to_thread(plain_pyxs)


async def test_close_then_connect_again(server: XenstoreServer) -> None:
    client = PyxsClient(socket_path=server.privileged_socket, settings=FAST)
    await client.connect()
    await client.write("/c", "1")
    await client.close()
    with pytest.raises(XenstoreConnectionError, match="closed"):
        await client.read("/c")
    await client.connect()
    assert await client.read("/c") == b"1"
    await client.close()


async def test_reconnects_with_backoff_and_rewatches_after_restart(sock_dir: Path) -> None:
    first = XenstoreServer(sock_dir)
    await first.start()
    client = PyxsClient(socket_path=first.privileged_socket, settings=FAST)
    await client.connect()
    async with client.watch("/r") as changes:
        assert await asyncio.wait_for(anext(changes), 2) == "/r"
        await first.stop()
        await asyncio.sleep(0.3)  # several failed attempts while no daemon listens
        async with XenstoreServer(sock_dir) as second:
            # The watch comes back by itself: its registration fires it again.
            assert await asyncio.wait_for(anext(changes), 3) == "/r"
            await client.write("/r/x", "after restart")
            assert await asyncio.wait_for(anext(changes), 2) == "/r/x"
            assert second.store.node("/r/x") is not None
            assert client.connects == 2
        await client.close()


async def test_requests_wait_for_a_restarting_daemon(sock_dir: Path) -> None:
    first = XenstoreServer(sock_dir)
    await first.start()
    async with PyxsClient(socket_path=first.privileged_socket, settings=FAST) as client:
        await client.write("/before", "1")
        await first.stop()
        pending = asyncio.ensure_future(client.write("/after", "2"))
        await asyncio.sleep(0.2)
        async with XenstoreServer(sock_dir):
            await asyncio.wait_for(pending, 3)
            assert await client.read("/after") == b"2"


# --- defect: two watches sharing a token spin the CPU -----------------------------------------


def test_pyxs_monitors_sharing_a_token_spin() -> None:
    out = run_snippet(
        """
        import os, tempfile, threading, time
        import pyxs
        from orchestrator.xenstore.runner import ServerThread
        with ServerThread(tempfile.mkdtemp(dir="/tmp")) as server:
            client = pyxs.Client(unix_socket_path=str(server.privileged_socket))
            client.connect()
            first, second = client.monitor(), client.monitor()
            first.watch(b"/a", b"shared")
            second.watch(b"/b", b"shared")  # its first event reaches `first` too
            def wait_first():
                for event in first.wait():
                    if event.path == b"/a/x":
                        return
            threading.Thread(target=wait_first, daemon=True).start()
            cpu = time.process_time()
            time.sleep(1.5)
            print(f"{time.process_time() - cpu:.2f}")
        """
    )
    # An idle process uses a few milliseconds; Monitor.wait keeps a core busy
    # (less than 1.5 s only when other processes compete for the CPU).
    assert float(out) > 0.3


async def test_watches_have_unique_tokens_and_stay_quiet(xs: PyxsClient) -> None:
    async with xs.watch("/a") as on_a, xs.watch("/b") as on_b, xs.watch("/b") as on_b_too:
        assert len({on_a.token, on_b.token, on_b_too.token}) == 3
        assert await asyncio.wait_for(anext(on_a), 2) == "/a"
        assert await asyncio.wait_for(anext(on_b), 2) == "/b"
        assert await asyncio.wait_for(anext(on_b_too), 2) == "/b"
        cpu = time.process_time()
        await xs.write("/b/x", "1")
        assert await asyncio.wait_for(anext(on_b), 2) == "/b/x"
        assert await asyncio.wait_for(anext(on_b_too), 2) == "/b/x"
        waiting = asyncio.ensure_future(anext(on_a))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # /b's event did not leak into /a's watch
        waiting.cancel()
        assert time.process_time() - cpu < 0.25  # and nothing spins meanwhile


async def test_watch_coalesces_pending_events_and_ends_on_close(xs: PyxsClient) -> None:
    watch = xs.watch("/hot")
    async with watch:
        assert await asyncio.wait_for(anext(watch), 2) == "/hot"
        for i in range(50):
            await xs.write("/hot", str(i))
        await xs.write("/hot/other", "1")
        seen = [await asyncio.wait_for(anext(watch), 2) for _ in range(2)]
        assert seen == ["/hot", "/hot/other"]  # 50 changes of /hot, one pending event
    with pytest.raises(StopAsyncIteration):
        await anext(watch)
    await xs.write("/hot", "after close")


async def test_watch_special_paths_and_relative_paths(
    xs: PyxsClient, xs5: PyxsClient, server: XenstoreServer
) -> None:
    async with xs.watch("@introduceDomain") as introduced, xs5.watch("data") as mine:
        assert await asyncio.wait_for(anext(introduced), 2) == "@introduceDomain"
        assert await asyncio.wait_for(anext(mine), 2) == "data"
        await server.introduce(12)
        assert await asyncio.wait_for(anext(introduced), 2) == "@introduceDomain"
        await xs.write("/local/domain/5/data/directive", "{}")
        assert await asyncio.wait_for(anext(mine), 2) == "data/directive"


# --- defect: select() and file descriptors from 1024 on ------------------------------------------


def test_pyxs_router_dies_on_file_descriptors_above_1024() -> None:
    out = run_snippet(
        """
        import resource, socket, tempfile, threading
        import pyxs
        from orchestrator.xenstore.runner import ServerThread
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
        threading.excepthook = lambda args: None  # the router thread dies; keep it quiet
        with ServerThread(tempfile.mkdtemp(dir="/tmp")) as server:
            fillers = [socket.socket() for _ in range(1100)]
            client = pyxs.Client(unix_socket_path=str(server.privileged_socket))
            client.connect()
            outcome = []
            def attempt():
                try:
                    client.read(b"/local")
                    outcome.append("read")
                except Exception as exc:
                    outcome.append(type(exc).__name__)
            reader = threading.Thread(target=attempt, daemon=True)
            reader.start()
            reader.join(1.0)
            print(outcome[0] if outcome else "still blocked")
        """
    )
    # Its router thread died at once: the request fails or waits forever.
    assert out in ("ConnectionError", "still blocked")


async def test_client_works_with_file_descriptors_above_1024(xs: PyxsClient) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 1200, "this test needs a hard RLIMIT_NOFILE of at least 1200"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fillers = [socket.socket() for _ in range(1100)]
    try:
        async with PyxsClient(socket_path=xs.where, settings=FAST) as crowded:
            assert crowded._link is not None
            assert crowded._link.router.connection.fileno() >= 1024
            await crowded.write("/crowded", "1")
            assert await crowded.read("/crowded") == b"1"
            async with crowded.watch("/crowded") as changes:
                assert await asyncio.wait_for(anext(changes), 2) == "/crowded"
    finally:
        for filler in fillers:
            filler.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- transactions -----------------------------------------------------------------------------


async def test_transaction_retries_on_eagain(xs: PyxsClient, server: XenstoreServer) -> None:
    await xs.write("/counter", "0")
    attempts = 0
    async with PyxsClient(socket_path=server.privileged_socket, settings=FAST) as rival:

        async def increment(tx: object) -> int:
            nonlocal attempts
            attempts += 1
            value = int(await tx.read("/counter"))  # type: ignore[attr-defined]
            if attempts == 1:
                await rival.write("/counter", "100")  # lands between our read and commit
            await tx.write("/counter", str(value + 1))  # type: ignore[attr-defined]
            return value

        assert await xs.transaction(increment) == 100
    assert attempts == 2
    assert await xs.read("/counter") == b"101"


async def test_transaction_aborts_when_the_body_fails(xs: PyxsClient) -> None:
    async def half_done(tx: object) -> None:
        await tx.write("/half", "1")  # type: ignore[attr-defined]
        raise RuntimeError("body failed")

    with pytest.raises(RuntimeError, match="body failed"):
        await xs.transaction(half_done)
    with pytest.raises(NoEntryError):
        await xs.read("/half")


async def test_transaction_gives_up_after_its_attempts(server: XenstoreServer) -> None:
    settings = ClientSettings(timeout_s=2.0, transaction_attempts=3)
    async with PyxsClient(socket_path=server.privileged_socket, settings=settings) as client, \
            PyxsClient(socket_path=server.privileged_socket, settings=FAST) as rival:
        attempts = 0

        async def always_loses(tx: object) -> None:
            nonlocal attempts
            attempts += 1
            await tx.read("/contended")  # type: ignore[attr-defined]
            await rival.write("/contended", str(attempts))

        await client.write("/contended", "0")
        with pytest.raises(ConflictError, match="3 conflicting attempts"):
            await client.transaction(always_loses)
        assert attempts == 3


# --- the xenbus device path -------------------------------------------------------------------


@pytest.fixture
def fake_xenbus(server: XenstoreServer) -> Iterator[str]:
    """A character device carrying the wire protocol to domain 5's socket.

    A pseudo-terminal in raw mode stands in for /dev/xen/xenbus: the client
    drives it through pyxs's XenBus transport (os.open, os.read, os.write), and
    a bridge thread copies bytes between the pty and the guest socket.
    """
    master, slave = pty.openpty()
    tty.setraw(slave)
    device = os.ttyname(slave)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.domain_socket(5)))
    stop_r, stop_w = os.pipe()

    def bridge() -> None:
        while True:
            ready, _, _ = select.select([master, sock, stop_r], [], [])
            if stop_r in ready:
                return
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                sock.sendall(data)
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                os.write(master, data)

    thread = threading.Thread(target=bridge, daemon=True)
    thread.start()
    yield device
    os.write(stop_w, b"x")
    thread.join(2)
    for fd in (master, slave, stop_r, stop_w):
        os.close(fd)
    sock.close()


async def test_client_over_a_xenbus_style_device(fake_xenbus: str, xs: PyxsClient) -> None:
    client = open_client(path=fake_xenbus, settings=FAST)
    assert client.where == fake_xenbus
    async with client:
        await client.write("data/meminfo_free", "123456")
        assert await xs.read("/local/domain/5/data/meminfo_free") == b"123456"
        assert await client.read("domid") == b"5"
        async with client.watch("memory/target") as target:
            assert await asyncio.wait_for(anext(target), 2) == "memory/target"
            await xs.write("/local/domain/5/memory/target", "524288")
            assert await asyncio.wait_for(anext(target), 2) == "memory/target"
            assert await client.read("memory/target") == b"524288"
        with pytest.raises(AccessDeniedError):
            await client.write("memory/target", "1")


def test_open_client_picks_socket_or_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s"))
    try:
        assert open_client(path=tmp_path / "s").where == str(tmp_path / "s")
        monkeypatch.setenv("XENSTORED_PATH", str(tmp_path / "s"))
        assert open_client().where == str(tmp_path / "s")
    finally:
        sock.close()
    master, slave = pty.openpty()
    try:
        device = os.ttyname(slave)
        client = open_client(path=device)
        assert client._xenbus_path == device
    finally:
        os.close(master)
        os.close(slave)


def test_settings_reject_nonsense() -> None:
    with pytest.raises(InvalidRequestError):
        ClientSettings(timeout_s=0)
    with pytest.raises(InvalidRequestError):
        ClientSettings(reconnect_min_s=1, reconnect_max_s=0.5)
    with pytest.raises(InvalidRequestError):
        PyxsClient()
