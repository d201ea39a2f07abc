"""``ballast-agent`` and ``ballast agent``: options, errors, actuator choice, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agents.actuators import NullActuator, SelfballoonActuator, SwapoffActuator
from agents.main import build_actuator, main, parser, settings_from_args
from agents.schema import decode_report
from agents.settings import XENBUS_DEVICE, Connection, make_settings
from agents.source import ProcMemorySource
from orchestrator.cli.main import app
from orchestrator.errors import UsageError
from orchestrator.xenstore.rawclient import RawClient
from orchestrator.xenstore.runner import ServerThread
from tests.agents.guest import FIXTURES


def test_defaults_talk_to_the_xenbus_device() -> None:
    settings = settings_from_args(parser().parse_args([]))
    assert settings.connection == Connection(kind="xenbus", path=XENBUS_DEVICE)
    assert settings.root == Path("/")
    assert (settings.report_key, settings.directive_key) == ("data/ballast/report",
                                                             "data/ballast/directive")
    assert (settings.meminfo_total_key, settings.meminfo_free_key) == ("data/meminfo_total",
                                                                       "data/meminfo_free")
    assert settings.policy.heartbeat_s == 30.0 and settings.sample_interval_s == 1.0
    assert settings.page_kb == os.sysconf("SC_PAGE_SIZE") // 1024


def test_options_reach_the_settings() -> None:
    args = parser().parse_args([
        "--xenstore", "unix:/tmp/x.sock", "--root", "/srv/guest", "--page-kb", "64",
        "--data-dir", "/local/domain/7/data", "--interval", "2s", "--heartbeat", "1m",
        "--min-interval", "5s", "--change", "32M", "--change-percent", "1.5",
        "--shrink", "swapoff", "--shrink-margin", "1G", "--shrink-margin-percent", "10",
        "--shrink-max-psi", "3", "--xenstore-timeout", "2s",
    ])
    s = settings_from_args(args)
    assert s.connection == Connection(kind="socket", path="/tmp/x.sock")
    assert (s.root, s.page_kb, s.data_dir) == (Path("/srv/guest"), 64, "/local/domain/7/data")
    assert s.report_key == "/local/domain/7/data/ballast/report"
    assert (s.sample_interval_s, s.policy.heartbeat_s, s.policy.min_interval_s) == (2, 60, 5)
    assert (s.policy.change_kb, s.policy.change_fraction) == (32 * 1024, 0.015)
    assert (s.shrink, s.guard.margin_kb, s.guard.margin_fraction) == ("swapoff", 1024**2, 0.1)
    assert (s.guard.max_psi_some_avg10, s.xenstore_timeout_s) == (3.0, 2.0)
    assert make_settings(xenstore="xenbus:/proc/xen/xenbus").connection == Connection(
        kind="xenbus", path="/proc/xen/xenbus")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(xenstore="tcp:1.2.3.4"), "invalid xenstore connection 'tcp:1.2.3.4'"),
        (dict(xenstore="unix:"), "the xenstore connection needs a path"),
        (dict(shrink="balloon"), "invalid shrink actuator 'balloon'"),
        (dict(interval="0s"), "the sampling interval must be positive"),
        (dict(heartbeat="5s", min_interval="10s"), "the minimum report interval"),
        (dict(change="lots"), "invalid size 'lots'"),
        (dict(change_percent=100.0), "the change percentage must be between 0 and 100"),
        (dict(shrink_max_psi=150.0), "the PSI limit is a percentage"),
        (dict(data_dir="data/"), "invalid xenstore data directory 'data/'"),
        (dict(data_dir="my data"), "invalid xenstore data directory 'my data'"),
        (dict(data_dir="@introduceDomain"), "invalid xenstore data directory '@introduceDomain'"),
        (dict(page_kb=0), "the page size must be a positive number of KiB"),
        (dict(xenstore_timeout="0s"), "the xenstore timeout must be positive"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_bad_values_are_one_clear_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(")):
        make_settings(**options)  # type: ignore[arg-type]


def test_both_commands_refuse_bad_values_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--xenstore", "tcp:x", "--log-level", "error"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err == ("ballast-agent: error: invalid xenstore connection 'tcp:x': use xenbus, "
                   "xenbus:DEVICE or unix:SOCKET\n")
    result = CliRunner().invoke(app, ["agent", "--xenstore", "tcp:x"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: invalid xenstore connection 'tcp:x': use xenbus, xenbus:DEVICE or unix:SOCKET"
    ]


def test_both_commands_offer_the_same_options() -> None:
    standalone = {o for a in parser()._actions for o in a.option_strings} - {"-h", "--help"}
    root = typer.main.get_command(app)
    ctx = root.make_context("ballast", [], resilient_parsing=True)
    command = root.get_command(ctx, "agent")  # type: ignore[attr-defined]
    dom0 = {o for p in command.params for o in p.opts}
    assert standalone == dom0


@pytest.mark.parametrize(
    ("tree", "shrink", "expected"),
    [
        ("linux-4.19-xen-pv", "auto", SelfballoonActuator),
        # A captured tree is never this machine: auto must not pick swapoff.
        ("linux-5.10-xen-hvm", "auto", NullActuator),
        ("linux-5.10-xen-hvm", "swapoff", SwapoffActuator),
        ("linux-4.19-xen-pv", "none", NullActuator),
    ],
)
def test_actuator_choice(tree: str, shrink: str, expected: type) -> None:
    settings = make_settings(root=str(FIXTURES / tree), shrink=shrink)
    actuator = build_actuator(settings, ProcMemorySource(settings.root))
    assert type(actuator) is expected


def test_selfballoon_where_the_kernel_has_none_is_an_error() -> None:
    settings = make_settings(root=str(FIXTURES / "linux-6.1-xen-pvh-zswap"), shrink="selfballoon")
    with pytest.raises(UsageError, match="no kernel self-shrink knob under"):
        build_actuator(settings, ProcMemorySource(settings.root))


@pytest.fixture
def xenstored() -> Iterator[ServerThread]:
    directory = Path(tempfile.mkdtemp(prefix="xs-cli-", dir="/tmp"))
    with ServerThread(directory) as thread:
        thread.introduce(5)
        yield thread
    shutil.rmtree(directory, ignore_errors=True)


async def _report_seq(privileged: Path) -> int | None:
    async with await RawClient.connect(privileged) as dom0:
        try:
            return decode_report(await dom0.read("/local/domain/5/data/ballast/report")).seq
        except Exception:
            return None


@pytest.mark.parametrize(
    "entry",
    [
        ["-c", "from agents.entry import main; main()"],
        ["-c", "from orchestrator.cli.main import main; main()", "agent"],
    ],
    ids=["ballast-agent", "ballast agent"],
)
def test_runs_as_a_process_and_stops_cleanly_on_sigterm(
    xenstored: ServerThread, entry: list[str]
) -> None:
    proc = subprocess.Popen(
        [sys.executable, *entry, "--xenstore", f"unix:{xenstored.domain_socket(5)}",
         "--root", str(FIXTURES / "linux-6.1-xen-pvh-zswap"), "--page-kb", "4",
         "--interval", "0.05s", "--shrink", "none"],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while asyncio.run(_report_seq(xenstored.privileged_socket)) is None:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no report from the agent process"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert "ballast-agent: INFO: agent started (shrink actuator: none)" in err
    assert err.rstrip().endswith("ballast-agent: INFO: agent stopped")
    assert "Traceback" not in err
