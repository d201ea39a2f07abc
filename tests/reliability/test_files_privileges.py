"""Files and privileges: other users' hands stay off Ballast's state and secrets.

The history database and the directories Ballast creates for it are private
(0600/0700) whatever the umask, and so are SQLite's ``-wal`` and ``-shm``
files; xenstored's sockets are dom0's alone; a configuration that others can
write, or whose directory lets them replace it, is refused; and the MQTT
password never reaches a log line, even at debug level, even when the broker
refuses it. Checked as an unprivileged user (``nobody``, through
``setpriv``), not by reading mode bits alone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.hypervisor.simulated import SimulatedHypervisor, lay_out_domain
from orchestrator.xenstore.client import PyxsClient
from orchestrator.xenstore.server import XenstoreServer
from tests.conftest import _require
from tests.controller.conftest import GIB_KB
from tests.reliability.conftest import upgrade_db
from tests.reliability.harness import ROOT, Domain, HypervisorService, follow_targets

NOBODY = 65534
SETPRIV = shutil.which("setpriv")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SECRET = "S3cr3t-for-the-log-scan-9f2c"
WRONG = "Wr0ng-secret-for-the-log-scan-71aa"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    _require(os.geteuid() == 0 and SETPRIV is not None,
             "root and setpriv, to act as the unprivileged user nobody")
    assert SETPRIV is not None
    return subprocess.run(
        [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", code, *args],
        capture_output=True, text=True, check=False, timeout=30,
    )


def _ballast(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli.main import main; main()", *args],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
        preexec_fn=lambda: os.umask(umask),
    )


def test_the_database_and_its_directories_are_private_whatever_the_umask(workdir: Path) -> None:
    workdir.chmod(0o755)  # others may look in here: only Ballast's own modes protect it
    db = workdir / "state" / "ballast" / "ballast.db"
    done = _ballast("db", "upgrade", "--db", str(db), umask=0)
    assert done.returncode == 0, done.stderr
    assert _mode(db) == 0o600
    assert _mode(db.parent) == 0o700 and _mode(db.parent.parent) == 0o700
    # The controller writes through WAL: its -wal and -shm files get the same mode.
    write = ("import os, sys; os.umask(0)\n"
             "from orchestrator.store.store import open_store, StoreConfig\n"
             "from orchestrator.store.records import DomainRef, Sample, VmState\n"
             "s = open_store(sys.argv[1], config=StoreConfig(host='h'))\n"
             "d = DomainRef(uuid='00000000-0000-4000-8000-000000000001', name='vm', domid=1)\n"
             "s.write([Sample(domain=d, time=s.now(), target_kb=1, actual_kb=1, demand_kb=None,"
             " available_kb=None, committed_kb=None, swap_used_kb=None, psi_some_pct=None,"
             " psi_full_pct=None, refault_per_s=None, swapin_per_s=None, state=VmState.OK)])\n"
             "import time; print('written', flush=True); time.sleep(2)\n")
    proc = subprocess.Popen([sys.executable, "-c", write, str(db)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "written\n"
        for suffix in ("-wal", "-shm"):
            side = db.with_name(db.name + suffix)
            assert side.exists() and _mode(side) == 0o600, suffix
    finally:
        proc.wait(10)
    # In a directory others may enter, the file alone keeps them out.
    flat = workdir / "flat.db"
    assert _ballast("db", "upgrade", "--db", str(flat), umask=0).returncode == 0
    assert _mode(flat) == 0o600
    for path in (db, flat):
        denied = _as_nobody("import sys; open(sys.argv[1], 'rb').read(1)", str(path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied


async def test_xenstoreds_sockets_are_dom0s_alone(workdir: Path) -> None:
    workdir.chmod(0o755)
    (workdir / "xs").mkdir(mode=0o755)
    async with XenstoreServer(workdir / "xs") as server:
        await server.introduce(5)
        for sock in (server.privileged_socket, server.domain_socket(5)):
            assert _mode(sock) == 0o600
            probe = ("import socket, sys\n"
                     "s = socket.socket(socket.AF_UNIX)\n"
                     "s.connect(sys.argv[1])\n")
            denied = await asyncio.to_thread(_as_nobody, probe, str(sock))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied


@pytest.mark.parametrize("case", ["world-writable", "group-writable", "replaceable-directory"])
def test_the_controller_refuses_a_configuration_others_can_change(
    workdir: Path, case: str,
) -> None:
    directory = workdir / "etc"
    directory.mkdir(mode=0o755)
    config = directory / "ballast.toml"
    config.write_text('[controller]\nhost_name = "h"\n')
    config.chmod(0o600)
    expected = {"world-writable": "world-writable", "group-writable": "writable by group",
                "replaceable-directory": "world-writable"}[case]
    if case == "world-writable":
        config.chmod(0o666)
    elif case == "group-writable":
        os.chown(config, 0, NOBODY)
        config.chmod(0o660)
    else:
        directory.chmod(0o777)
    refused = _ballast("run", "--config", str(config))
    assert refused.returncode == 1, refused
    assert expected in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr + refused.stdout
    assert (refused.stderr + refused.stdout).strip().count("\n") == 0
    # Put right, the same file is read (config show loads it exactly as run does).
    config.chmod(0o600)
    os.chown(config, 0, 0)
    directory.chmod(0o1777)  # sticky: others may not replace what is not theirs
    accepted = _ballast("config", "show", "--config", str(config))
    assert accepted.returncode == 0, accepted.stderr
    assert 'host_name = "h"' in accepted.stdout


def _broker_with_password(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    passwd = workdir / "mosquitto.passwd"
    done = subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "dom0-a", SECRET],
                          capture_output=True, check=False)
    _require(done.returncode == 0, "mosquitto_passwd")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    conf = workdir / "mosquitto.conf"
    # As root, mosquitto would switch to its own user and lose the password file.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                    f"password_file {passwd}\npersistence false\nuser root\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("mosquitto did not start")


@pytest.mark.mqtt
@pytest.mark.slow
async def test_the_mqtt_password_never_reaches_the_log(
    workdir: Path, mqtt_broker: tuple[str, int],
) -> None:
    broker, port = await asyncio.to_thread(_broker_with_password, workdir)
    db = workdir / "ballast.db"
    upgrade_db(db)
    wrong = workdir / "wrong-password"
    wrong.write_text(WRONG + "\n")
    wrong.chmod(0o600)
    hv = SimulatedHypervisor(total_kb=16 * GIB_KB, dom0_kb=2 * GIB_KB)
    dom = Domain(1, "vm1", 2 * GIB_KB, 2 * GIB_KB)
    hv.add_domain(domid=1, name=dom.name, uuid=dom.uuid, actual_kb=dom.target_kb,
                  max_kb=dom.static_max_kb)
    (workdir / "xs").mkdir()
    logs: dict[str, str] = {}
    try:
        async with XenstoreServer(workdir / "xs") as server, \
                HypervisorService(hv, workdir / "hv.sock"):
            await server.introduce(1)
            async with PyxsClient(socket_path=server.privileged_socket) as xs:
                await lay_out_domain(xs, domid=1, name=dom.name, uuid=dom.uuid,
                                     static_max_kb=dom.static_max_kb, target_kb=dom.target_kb)
            stop = asyncio.Event()
            balloons = asyncio.create_task(follow_targets(server.privileged_socket, hv,
                                                          lambda: [1], stop))
            for case, secret in (("accepted", f'password = "{SECRET}"'),
                                 ("refused", f'password_file = "{wrong}"')):
                config = workdir / f"{case}.toml"
                config.write_text(
                    f'[controller]\nhost_name = "dom0-a"\nxenstore = "{workdir / "xs"}"\n'
                    f'interval_s = 0.5\nlog_level = "debug"\n\n[store]\nurl = "{db}"\n\n'
                    f'[mqtt]\nbroker = "mqtt://127.0.0.1:{port}"\nusername = "dom0-a"\n'
                    f"{secret}\nkeepalive_s = 5\n")
                config.chmod(0o600)
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tests.reliability.controller_proc",
                    "--config", str(config), "--hypervisor", str(workdir / "hv.sock"),
                    cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    env={**os.environ, "PYTHONPATH": str(ROOT)})
                assert proc.stdout is not None
                assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
                await asyncio.sleep(3.0)  # connect (or be refused, and retry), publish
                proc.send_signal(signal.SIGTERM)
                _out, err = await asyncio.wait_for(proc.communicate(), 30)
                assert proc.returncode == 0
                logs[case] = err.decode()
            stop.set()
            await balloons
    finally:
        broker.kill()
        broker.wait()
    # Both logged their broker (user, never password); only the wrong password was refused.
    for text in logs.values():
        assert "mqtt://dom0-a@127.0.0.1" in text
    assert "Not authorized" not in logs["accepted"]
    assert "Not authorized" in logs["refused"] and "retrying" in logs["refused"]
    for text in logs.values():
        for secret in (SECRET, WRONG):
            assert secret not in text
            assert secret.encode().hex() not in text
