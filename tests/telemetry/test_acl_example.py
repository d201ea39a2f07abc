"""docs/mosquitto-acl.example on a real Mosquitto: each host writes only its own topics."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.telemetry import BrokerSettings, Telemetry, TelemetrySettings
from orchestrator.telemetry.commands import PolicySet
from orchestrator.telemetry.fleet import fetch_fleet, send_policy_command
from orchestrator.telemetry.topics import HostTopics
from tests.telemetry.conftest import PrivateBroker, eventually
from tests.telemetry.test_telemetry_broker import GiB_KB, PolicyHost, _state, _status

pytestmark = pytest.mark.mqtt

ACL = Path(__file__).parents[2] / "docs" / "mosquitto-acl.example"
USERS = {"dom0-a": "pw-a", "dom0-b": "pw-b", "ops": "pw-ops"}


@pytest.fixture
def acl_broker(mqtt_broker: tuple[str, int], tmp_path: Path) -> Iterator[PrivateBroker]:
    passwd = tmp_path / "passwd"
    for user, password in USERS.items():
        create = ["-c"] if not passwd.exists() else []
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(passwd), user, password], check=True
        )
    config = tmp_path / "mosquitto.conf"
    broker = PrivateBroker(config)
    config.write_text(
        f"listener {broker.port} 127.0.0.1\n"
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"acl_file {ACL}\n"
        "persistence false\n"
        # Root would otherwise switch to the mosquitto user and lose tmp_path.
        "user root\n"
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _broker(port: int, user: str, password: str | None = None) -> BrokerSettings:
    return BrokerSettings(port=port, username=user, password=password or USERS[user])


async def test_each_host_writes_only_its_own_topics(acl_broker: PrivateBroker) -> None:
    port = acl_broker.port
    model = PolicyHost(static_max_kb={"web-1": 8 * GiB_KB})
    settings_a = TelemetrySettings(host_name="dom0-a", broker=_broker(port, "dom0-a"))
    # dom0-b's credentials, pretending to be dom0-a.
    impostor = TelemetrySettings(
        host_name="dom0-a",
        broker=BrokerSettings(
            port=port, username="dom0-b", password=USERS["dom0-b"], client_id="impostor"
        ),
    )
    async with Telemetry(settings_a, apply=model.apply) as host_a:
        host_a.publish_status(_status())
        host_a.publish_vm_state("web-1", _state(GiB_KB))
        await eventually(lambda: host_a.stats.published >= 2, what="dom0-a publishes")
        async with Telemetry(impostor) as fake:
            await eventually(lambda: fake.stats.connected, what="impostor connected")
            fake.publish_vm_state("web-1", _state(7 * GiB_KB))
            fake.publish_vm_state("planted", _state(GiB_KB))
            await eventually(lambda: fake.stats.published >= 2, what="impostor publishes")

            ops = _broker(port, "ops")
            view = (await fetch_fleet(ops, "ballast", timeout_s=5)).view(now=time.time())
            (row,) = view.hosts
            assert row.name == "dom0-a" and row.condition == "online"
            assert [(vm.name, vm.state.target_kb if vm.state else 0) for vm in row.vms] == [
                ("web-1", GiB_KB)
            ]

            # The operator account commands; the reply comes back under the host.
            reply = await send_policy_command(
                ops, "ballast", "dom0-a", PolicySet("web-1", (("weight", 7),)),
                client_name="ops", timeout_s=5,
            )
            assert reply.ok and model.policy.vm("uuid-web-1").weight == 7
            # Another host may not command dom0-a: the broker drops its publish
            # (acknowledged first, so a later operator command arrives after it).
            subprocess.run(
                ["mosquitto_pub", "-p", str(port), "-u", "dom0-b", "-P", USERS["dom0-b"],
                 "-q", "1", "-t", HostTopics("ballast", "dom0-a").policy_set,
                 "-m", '{"vm": "web-1", "set": {"weight": 1}}'],
                check=True,
            )
            reply = await send_policy_command(
                ops, "ballast", "dom0-a", PolicySet("web-1", (("weight", 9),)),
                client_name="ops", timeout_s=5,
            )
            assert reply.ok
            assert [c.as_dict() for c, _ in model.calls] == [  # type: ignore[union-attr]
                {"weight": 7}, {"weight": 9}
            ]
        # The impostor's goodbye ("offline" on dom0-a's status) was refused too.
        view = (await fetch_fleet(ops, "ballast", timeout_s=5)).view(now=time.time())
        assert [(row.name, row.condition) for row in view.hosts] == [("dom0-a", "online")]

    # A wrong password is refused, and Telemetry keeps retrying in the background.
    bad = TelemetrySettings(host_name="dom0-a", broker=_broker(port, "dom0-a", "wrong"),
                            reconnect_min_s=0.05, reconnect_max_s=0.1)
    async with Telemetry(bad) as refused:
        await eventually(lambda: refused.stats.last_error, what="a connect error")
        assert not refused.stats.connected
        assert "Not authorized" in (refused.stats.last_error or "")


async def test_fleet_password_from_the_environment(acl_broker: PrivateBroker) -> None:
    url = f"mqtt://ops@127.0.0.1:{acl_broker.port}"

    def run(env: dict[str, str]) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["fleet", "status", "-b", url, "--json"], env=env)
        return result.exit_code, result.stderr

    code, err = await asyncio.to_thread(run, {"BALLAST_MQTT_PASSWORD": USERS["ops"]})
    assert code == 0, err
    code, err = await asyncio.to_thread(run, {"BALLAST_MQTT_PASSWORD": "nope"})
    assert code == 1 and "Not authorized" in err and "nope" not in err
