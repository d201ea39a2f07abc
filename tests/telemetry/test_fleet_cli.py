"""``ballast fleet`` against the real Mosquitto, through the real CLI root."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.telemetry import BrokerSettings, Telemetry, TelemetrySettings
from tests.telemetry.conftest import eventually, free_port
from tests.telemetry.test_telemetry_broker import GiB_KB, PolicyHost, _state, _status

pytestmark = pytest.mark.mqtt


def _url(broker: tuple[str, int]) -> str:
    return f"mqtt://{broker[0]}:{broker[1]}"


def _settings(broker: tuple[str, int], prefix: str, host: str) -> TelemetrySettings:
    return TelemetrySettings(
        host_name=host, topic_prefix=prefix, broker=BrokerSettings(host=broker[0], port=broker[1])
    )


async def _cli(*args: str) -> tuple[int, str, str]:
    # The CLI runs its own event loop: give it a thread, as a shell would a process.
    result = await asyncio.to_thread(
        CliRunner().invoke, app, list(args), env={"COLUMNS": "200"}
    )
    return result.exit_code, result.stdout, result.stderr


async def test_status_table_and_json(mqtt_broker: tuple[str, int], prefix: str) -> None:
    async with Telemetry(_settings(mqtt_broker, prefix, "gone")) as gone:
        gone.publish_status(_status(vms=0))
        await eventually(lambda: gone.stats.published >= 1, what="publish")
    async with Telemetry(_settings(mqtt_broker, prefix, "dom0-a")) as telemetry:
        telemetry.publish_status(_status(vms=2, paused=True))
        telemetry.publish_vm_state("web-1", _state(GiB_KB))
        telemetry.publish_vm_state("db/1", _state(2 * GiB_KB, "uncooperative"))
        await eventually(lambda: telemetry.stats.published >= 3, what="publishes")

        code, out, _ = await _cli("fleet", "status", "--broker", _url(mqtt_broker),
                                  "--prefix", prefix, "--json")
        assert code == 0, out
        doc = json.loads(out)
        hosts = {h["host"]: h for h in doc["hosts"]}
        assert (hosts["dom0-a"]["condition"], hosts["gone"]["condition"]) == ("online", "offline")
        assert hosts["dom0-a"]["status"]["paused"] is True
        assert [(v["name"], v["target_kb"], v["state"]) for v in hosts["dom0-a"]["vms"]] == [
            ("db/1", 2 * GiB_KB, "uncooperative"), ("web-1", GiB_KB, "ok")
        ]

        code, out, _ = await _cli("fleet", "status", "-b", _url(mqtt_broker), "--prefix", prefix)
        assert code == 0, out
        lines = out.splitlines()
        host_line = next(line for line in lines if "dom0-a" in line)
        assert "online" in host_line and "PAUSED" in host_line and "2 VMs" in host_line
        vm_line = next(line for line in lines if "db/1" in line)
        assert "uncooperative" in vm_line and "2G" in vm_line
        assert "offline" in next(line for line in lines if "gone" in line)


async def test_stale_host(mqtt_broker: tuple[str, int], prefix: str) -> None:
    async with Telemetry(_settings(mqtt_broker, prefix, "slow")) as telemetry:
        telemetry.publish_status(replace(_status(), updated=time.time() - 60))
        await eventually(lambda: telemetry.stats.published >= 1, what="publish")
        code, out, _ = await _cli("fleet", "status", "-b", _url(mqtt_broker), "--prefix", prefix,
                                  "--json")
        assert code == 0 and json.loads(out)["hosts"][0]["condition"] == "stale"
        code, out, _ = await _cli("fleet", "status", "-b", _url(mqtt_broker), "--prefix", prefix,
                                  "--json", "--stale-intervals", "20")
        assert code == 0 and json.loads(out)["hosts"][0]["condition"] == "online"


async def test_policy_set_and_unset(mqtt_broker: tuple[str, int], prefix: str) -> None:
    model = PolicyHost(static_max_kb={"web-1": 8 * GiB_KB})
    base = ["-b", _url(mqtt_broker), "--prefix", prefix, "--timeout", "5"]
    async with Telemetry(_settings(mqtt_broker, prefix, "dom0-a"), apply=model.apply) as t:
        await eventually(lambda: t.stats.connected, what="connection")
        code, out, err = await _cli("fleet", "policy", "set", "dom0-a", "web-1", "--min", "512M",
                                    "--max", "4G", "--swap-shrink", "off", "--client", "ci", *base)
        assert code == 0, (out, err)
        assert out.strip() == "dom0-a/web-1: policy now max 4G, min 512M, swap-shrink False " \
            "(version 1)"
        assert model.audit[0][0] == "ci"
        # The wire carries KiB and plain values, parsed before sending.
        assert model.calls[0][0].as_dict() == {  # type: ignore[union-attr]
            "max_kb": 4 * GiB_KB, "min_kb": 512 * 1024, "swap_shrink": False
        }

        code, out, err = await _cli("fleet", "policy", "set", "dom0-a", "web-1", "--min", "6G",
                                    *base)
        assert code == 1
        assert err.strip().startswith("error: host 'dom0-a' refused the change to 'web-1': ")
        assert "is above max" in err and len(err.strip().splitlines()) == 1

        code, out, err = await _cli("fleet", "policy", "unset", "dom0-a", "web-1", "min",
                                    "swap-shrink", "--json", *base)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["ok"] is True and doc["policy"] == {"max_kb": 4 * GiB_KB}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["status", "-b", "http://x"], "must start with mqtt://"),
        (["status", "-b", "mqtt://x", "--watch", "--json"], "use --json without --watch"),
        (["policy", "set", "h", "vm", "-b", "mqtt://x"], "nothing to set"),
        (["policy", "set", "h", "vm", "--min", "lots", "-b", "mqtt://x"], "invalid size 'lots'"),
        (["policy", "set", "h", "vm", "--mode", "turbo", "-b", "mqtt://x"], "mode must be one"),
        (["policy", "unset", "h", "vm", "colour", "-b", "mqtt://x"], "unknown policy field"),
        (["policy", "unset", "h", "vm", "paused", "-b", "mqtt://x"], "not a per-VM"),
    ],
    ids=["scheme", "watch-json", "no-fields", "bad-size", "bad-mode", "bad-field", "host-field"],
)
def test_usage_errors_are_one_line(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, ["fleet", *args])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_unreachable_and_silent(mqtt_broker: tuple[str, int], prefix: str) -> None:
    code, _, err = await _cli("fleet", "status", "-b", f"mqtt://127.0.0.1:{free_port()}")
    assert code == 1 and err.startswith("error: cannot reach the MQTT broker")
    code, _, err = await _cli("fleet", "policy", "set", "ghost", "vm", "--weight", "2",
                              "-b", _url(mqtt_broker), "--prefix", prefix, "--timeout", "0.3")
    assert code == 1 and "no reply from host 'ghost' within 0.3 s" in err


async def test_watch_redraws_until_interrupted(
    mqtt_broker: tuple[str, int], prefix: str
) -> None:
    # The watcher's own end-of-snapshot marker says it is subscribed.
    marker = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", mqtt_broker[0], "-p", str(mqtt_broker[1]),
        "-t", f"{prefix}/_fleet/+/sync", "-C", "1", "-W", "30",
        stdout=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.2)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ballast")), "fleet", "status", "--watch",
         "--refresh", "0.2", "-b", _url(mqtt_broker), "--prefix", prefix],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        assert await asyncio.wait_for(marker.wait(), 30) == 0
        async with Telemetry(_settings(mqtt_broker, prefix, "late-host")) as telemetry:
            # A host that appears while watching shows up without a restart.
            telemetry.publish_status(_status())
            telemetry.publish_vm_state("vm-a", _state(GiB_KB))
            await eventually(lambda: telemetry.stats.published >= 2, what="publishes")
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.to_thread(proc.communicate, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        if marker.returncode is None:
            marker.kill()
    assert proc.returncode == 0, err
    assert "late-host" in out and "vm-a" in out and "online" in out
