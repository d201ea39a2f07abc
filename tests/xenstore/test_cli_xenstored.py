"""``ballast xenstored`` as a process: it serves, and SIGTERM stops it cleanly."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.xenstore import wire
from orchestrator.xenstore.errors import NoEntryError
from orchestrator.xenstore.runner import ServerProcess, ServerThread


def _round_trip(path: Path, request: wire.Request) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(path))
        sock.sendall(wire.encode(wire.request_packet(request, req_id=1)))
        decoder = wire.Decoder()
        while True:
            packets = decoder.feed(sock.recv(65536))
            if packets:
                return packets[0].payload


@pytest.mark.slow  # starts the full CLI, whose imports take seconds on a loaded machine
def test_process_serves_and_stops_on_sigterm(sock_dir: Path) -> None:
    daemon = ServerProcess(sock_dir, domains=[3, 4], via_cli=True)
    with daemon:
        assert _round_trip(daemon.domain_socket(3), wire.Read("domid")) == b"3"
        assert _round_trip(daemon.privileged_socket, wire.Directory("/local/domain")) == (
            b"0\x003\x004\x00"
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.process is not None
        assert daemon.process.wait(10) == 0
    assert not daemon.privileged_socket.exists()
    assert not daemon.domain_socket(3).exists()


def test_module_entry_point_serves_too(sock_dir: Path) -> None:
    with ServerProcess(sock_dir, domains=[7]) as daemon:
        assert _round_trip(daemon.domain_socket(7), wire.Read("domid")) == b"7"
        path = daemon.introduce(8)
        assert _round_trip(path, wire.Read("domid")) == b"8"
        daemon.release(8)
        assert not path.exists()
        with pytest.raises(NoEntryError):
            daemon.release(8)
        assert daemon.stop() == 0
    assert not daemon.privileged_socket.exists()


def test_cli_errors_are_one_line(sock_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["xenstored", "--dir", str(sock_dir), "--introduce", "0"])
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot introduce domain 0")
    assert "Traceback" not in result.output
    long_dir = sock_dir / ("d" * 120)
    result = runner.invoke(app, ["xenstored", "--dir", str(long_dir)])
    assert result.exit_code == 1
    assert "longer than 107 bytes" in result.output


def test_server_thread_for_synchronous_callers(sock_dir: Path) -> None:
    with ServerThread(sock_dir) as thread:
        path = thread.introduce(8, name="guest-8")
        assert path == sock_dir / "domain" / "8" / "socket"
        assert _round_trip(path, wire.Read("name")) == b"guest-8"
        thread.release(8)
        assert not path.exists()
    assert not (sock_dir / "socket").exists()
