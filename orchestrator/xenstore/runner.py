"""Run the xenstored-compatible server beside other code: in a thread or a process.

:class:`ServerThread` gives synchronous code (pyxs, blocking tools, the
simulator's setup) a live server with its own event loop. :class:`ServerProcess`
runs ``ballast xenstored`` as a child process, for tests that need to freeze
or kill the daemon under a client, exactly as a real xenstored can die.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.errors import FatalError
from orchestrator.xenstore import wire
from orchestrator.xenstore.errors import error_for
from orchestrator.xenstore.server import ServerSettings, XenstoreServer

_START_TIMEOUT_S = 15.0


class ServerThread:
    """A :class:`XenstoreServer` running on its own event loop in a daemon thread."""

    def __init__(
        self, directory: str | os.PathLike[str], *, settings: ServerSettings | None = None
    ) -> None:
        self.directory = Path(directory)
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: XenstoreServer | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready: Future[None] = Future()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the thread and wait until the privileged socket accepts clients."""
        self._thread = threading.Thread(target=self._run, name="xenstored", daemon=True)
        self._thread.start()
        self._ready.result(timeout=_START_TIMEOUT_S)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with XenstoreServer(self.directory, settings=self._settings) as server:
                self._server = server
                self._ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    @property
    def server(self) -> XenstoreServer:
        """The server object (only touch it through :meth:`call`)."""
        assert self._server is not None, "server thread not started"
        return self._server

    @property
    def privileged_socket(self) -> Path:
        """``DIR/socket``."""
        return self.server.privileged_socket

    def domain_socket(self, domid: int) -> Path:
        """``DIR/domain/<domid>/socket``."""
        return self.server.domain_socket(domid)

    def call(self, coro: Any, timeout_s: float = 10.0) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def introduce(self, domid: int, *, name: str | None = None) -> Path:
        """Introduce a domain; returns its socket path."""
        path: Path = self.call(self.server.introduce(domid, name=name))
        return path

    def release(self, domid: int) -> None:
        """Release a domain."""
        self.call(self.server.release(domid))

    def stop(self) -> None:
        """Shut the server down and join the thread."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None


class ServerProcess:
    """The daemon as a child process: ``ballast xenstored`` when ``via_cli``, else the
    lighter ``python -m orchestrator.xenstore`` (same daemon, faster start)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        domains: Iterable[int] = (),
        via_cli: bool = False,
        python: str = sys.executable,
    ) -> None:
        self.directory = Path(directory)
        self.domains = tuple(domains)
        self.via_cli = via_cli
        self.python = python
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def privileged_socket(self) -> Path:
        """``DIR/socket``."""
        return self.directory / "socket"

    def domain_socket(self, domid: int) -> Path:
        """``DIR/domain/<domid>/socket``."""
        return self.directory / "domain" / str(domid) / "socket"

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the daemon and wait until every socket accepts clients."""
        if self.via_cli:
            entry = ["-c", "from orchestrator.cli.main import main; main()", "xenstored"]
        else:
            entry = ["-m", "orchestrator.xenstore"]
        args = [self.python, *entry, "--dir", os.fspath(self.directory)]
        for domid in self.domains:
            args += ["--introduce", str(domid)]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        wanted = [self.privileged_socket, *(self.domain_socket(d) for d in self.domains)]
        while not all(_accepts(p) for p in wanted):
            if self.process.poll() is not None:
                stderr = self.process.stderr
                err = stderr.read().decode(errors="replace") if stderr is not None else ""
                raise FatalError(f"xenstored exited at start: {err.strip()}")
            if time.monotonic() > deadline:
                self.kill()
                raise FatalError(f"xenstored did not start within {_START_TIMEOUT_S} s")
            time.sleep(0.02)

    def introduce(self, domid: int) -> Path:
        """Introduce a domain over the privileged socket; returns its socket path."""
        self._request(wire.Introduce(domid, 0, 0))
        return self.domain_socket(domid)

    def release(self, domid: int) -> None:
        """Release a domain over the privileged socket."""
        self._request(wire.Release(domid))

    def _request(self, request: wire.Request) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10.0)
            sock.connect(os.fspath(self.privileged_socket))
            sock.sendall(wire.encode(wire.request_packet(request, req_id=1)))
            decoder = wire.Decoder()
            while True:
                data = sock.recv(65536)
                if not data:
                    raise FatalError("xenstored closed the connection")
                for reply in decoder.feed(data):
                    if reply.op == wire.Op.ERROR:
                        raise error_for(wire.decode_error(reply.payload), op=type(request).__name__)
                    return reply.payload

    @property
    def pid(self) -> int:
        """Process id of the daemon."""
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        """Send a signal (SIGSTOP freezes the daemon, SIGCONT thaws it)."""
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code

    def kill(self) -> None:
        """SIGKILL: the daemon dies at once, as a crashing xenstored would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return False
        return True
