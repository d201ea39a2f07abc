"""Broker URLs and settings: parsing, validation, secrets kept out of reprs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.config import Config, ControllerConfig, MqttConfig
from orchestrator.errors import UsageError
from orchestrator.telemetry.settings import (
    MAX_CLIENT_ID_CHARS,
    BrokerSettings,
    TelemetrySettings,
    TlsSettings,
    broker_from_url,
    settings_from_config,
)


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "user", "password"),
    [
        ("mqtt://broker", "broker", 1883, False, None, None),
        ("mqtt://broker:1999", "broker", 1999, False, None, None),
        ("mqtts://broker", "broker", 8883, True, None, None),
        ("mqtt://ops:s%40cret@broker", "broker", 1883, False, "ops", "s@cret"),
        ("mqtt://ops@[::1]:1884", "::1", 1884, False, "ops", None),
        ("  mqtt://10.0.0.1/  ", "10.0.0.1", 1883, False, None, None),
    ],
    ids=["plain", "port", "tls", "credentials", "ipv6", "trailing-slash"],
)
def test_urls(
    url: str, host: str, port: int, tls: bool, user: str | None, password: str | None
) -> None:
    broker = broker_from_url(url)
    assert (broker.host, broker.port, broker.tls is not None) == (host, port, tls)
    assert (broker.username, broker.password) == (user, password)


@pytest.mark.parametrize(
    "url",
    [
        "http://broker",
        "broker:1883",
        "mqtt://",
        "mqtt://broker:99999",
        "mqtt://broker:x",
        "mqtt://broker/topic",
        "mqtt://broker?x=1",
        "mqtt://:pw@broker",
    ],
    ids=["scheme", "no-scheme", "no-host", "port-range", "port-text", "path", "query", "pw-only"],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(UsageError):
        broker_from_url(url)


def test_tls_options_need_mqtts() -> None:
    with pytest.raises(UsageError, match="mqtts"):
        broker_from_url("mqtt://broker", tls=TlsSettings(ca_file="/x"))


def test_password_never_in_repr_or_url() -> None:
    settings = TelemetrySettings(
        host_name="h1", broker=broker_from_url("mqtts://ops:hunter2@broker")
    )
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)
    assert settings.broker.url == "mqtts://ops@broker:8883"
    assert settings.broker.password == "hunter2"


@pytest.mark.parametrize(
    "changes",
    [
        {"port": 0},
        {"host": ""},
        {"password": "x"},
        {"keepalive_s": 2},
        {"protocol": "4"},
        {"timeout_s": 0},
        {"client_id": "c" * (MAX_CLIENT_ID_CHARS + 1)},
    ],
    ids=["port", "host", "password-without-user", "keepalive", "protocol", "timeout", "client-id"],
)
def test_bad_broker_settings(changes: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        BrokerSettings(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"host_name": ""},
        {"topic_prefix": "a/+"},
        {"qos": 2},
        {"queue_size": 0},
        {"reconnect_min_s": 5.0, "reconnect_max_s": 1.0},
        {"max_command_bytes": 10},
    ],
    ids=["host", "prefix", "qos", "queue", "backoff", "command-size"],
)
def test_bad_telemetry_settings(changes: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        TelemetrySettings(**{"host_name": "h1", **changes})  # type: ignore[arg-type]


def test_client_id() -> None:
    assert TelemetrySettings(host_name="dom0/a").client_id == "ballast-dom0%2Fa"
    named = TelemetrySettings(host_name="h", broker=BrokerSettings(client_id="mine"))
    assert named.client_id == "mine"
    long_a = TelemetrySettings(host_name="a" * 200 + "1").client_id
    long_b = TelemetrySettings(host_name="a" * 200 + "2").client_id
    assert len(long_a) <= MAX_CLIENT_ID_CHARS and long_a != long_b


def test_key_needs_cert() -> None:
    with pytest.raises(UsageError):
        TlsSettings(key_file="/k.pem")


def test_from_config(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    config = Config(
        controller=ControllerConfig(host_name="dom0-a"),
        mqtt=MqttConfig(
            broker="mqtts://broker.example:8884",
            username="dom0-a",
            password_file=str(secret),
            tls_ca="/etc/ssl/ca.pem",
            topic_prefix="fleet1",
        ),
    )
    settings = settings_from_config(config)
    assert settings.host_name == "dom0-a" and settings.topic_prefix == "fleet1"
    assert (settings.broker.host, settings.broker.port) == ("broker.example", 8884)
    assert settings.broker.username == "dom0-a" and settings.broker.password == "from-file"
    assert settings.broker.tls == TlsSettings(ca_file="/etc/ssl/ca.pem")
    with pytest.raises(UsageError, match="not configured"):
        settings_from_config(replace(config, mqtt=MqttConfig()))
