"""Loading ballast.toml: defaults, validation, overrides, secrets, file safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator import config as cfg
from orchestrator.cli.main import app
from orchestrator.controller.telemetry_sink import telemetry_settings
from orchestrator.errors import UsageError


def _write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "ballast.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    config = cfg.load(tmp_path / "absent.toml")
    assert config.controller.interval_s == 5.0
    assert config.controller.xenstore == "/run/xenstored/socket"
    with pytest.raises(UsageError, match="does not exist"):
        cfg.load(tmp_path / "absent.toml", required=True)


def test_values_are_read_and_ints_accepted_for_floats(tmp_path: Path) -> None:
    path = _write(tmp_path, '[controller]\ninterval_s = 2\nhost_name = "h1"\n'
                            '[mqtt]\nbroker = "mqtt://10.0.0.1:1883"\npassword = "s3cret"\n')
    config = cfg.load(path)
    assert config.controller.interval_s == 2.0 and config.controller.host_name == "h1"
    assert "s3cret" not in repr(config)
    shown = cfg.render_toml(config)
    assert "s3cret" not in shown and 'password = "********"' in shown
    assert "s3cret" not in json.dumps(cfg.as_dict(config))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[controler]\n", "unknown section"),
        ("[controller]\nintervall_s = 5\n", "unknown key 'intervall_s'"),
        ('[controller]\ninterval_s = "fast"\n', "must be a float"),
        ("[controller]\ninterval_s = 0\n", "interval_s must be between"),
        ("[controller]\nfree_margin_mb = -1\n", "negative"),
        ('[mqtt]\nbroker = "http://x"\n', "mqtt://"),
        ('[mqtt]\nbroker = "mqtt://u:p@x"\n', "not in the broker URL"),
        ('[mqtt]\npassword = "a"\npassword_file = "/b"\n', "either password"),
        ("[metrics]\nport = 70000\n", "port"),
        ("controller = 3\n", "must be a table"),
        ("[controller\n", "not valid TOML"),
        ('[mqtt]\nprotocol = "4"\n', "protocol"),
        ("[mqtt]\nprotocol = 5\n", "must be a str"),
        ("[mqtt]\nqos = 2\n", "qos must be 0 or 1"),
        ("[mqtt]\nkeepalive_s = 3\n", "keepalive_s"),
        ("[mqtt]\nqueue_size = 0\n", "queue_size"),
        ('[mqtt]\nbroker = "mqtt://x"\ntls_insecure = true\n', "mqtts://"),
        ("[mqtt]\ntls_insecure = 1\n", "must be a bool"),
    ],
)
def test_bad_files_are_refused_with_the_key_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        cfg.load(_write(tmp_path, text))


def test_world_writable_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "[controller]\n", mode=0o666)
    with pytest.raises(UsageError, match="world-writable"):
        cfg.load(path)


def test_overrides_are_validated(tmp_path: Path) -> None:
    config = cfg.with_overrides(cfg.Config(), controller__interval_s=1.0, store__url=None)
    assert config.controller.interval_s == 1.0
    with pytest.raises(UsageError, match="interval_s"):
        cfg.with_overrides(config, controller__interval_s=-3.0)


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    assert cfg.mqtt_password(cfg.MqttConfig(password_file=str(secret))) == "hunter2"
    with pytest.raises(UsageError, match="password_file"):
        cfg.mqtt_password(cfg.MqttConfig(password_file=str(tmp_path / "none")))


def test_config_show_cli(tmp_path: Path) -> None:
    path = _write(tmp_path, '[controller]\nhost_name = "node7"\n[mqtt]\npassword = "pw1"\n')
    runner = CliRunner()
    result = runner.invoke(app, ["config", "show", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert 'host_name = "node7"' in result.output and "pw1" not in result.output
    result = runner.invoke(app, ["config", "show", "--config", str(path), "--json"])
    assert json.loads(result.output)["controller"]["host_name"] == "node7"
    bad = _write(tmp_path, "[nope]\n")
    result = runner.invoke(app, ["config", "show", "--config", str(bad)])
    assert result.exit_code == 1
    assert "unknown section" in result.output
    assert "Traceback" not in result.output
    os.chmod(bad, 0o600)


def test_mqtt_tuning_reaches_the_telemetry_settings(tmp_path: Path) -> None:
    path = _write(tmp_path, '[controller]\nhost_name = "h1"\n'
                            '[mqtt]\nbroker = "mqtts://broker.lan"\ntls_insecure = true\n'
                            'protocol = "3.1.1"\nqos = 0\nkeepalive_s = 12\nqueue_size = 77\n'
                            'topic_prefix = "site-a"\n')
    settings = telemetry_settings(cfg.load(path))
    assert (settings.host_name, settings.topic_prefix) == ("h1", "site-a")
    assert (settings.qos, settings.queue_size) == (0, 77)
    broker = settings.broker
    assert (broker.host, broker.port, broker.protocol, broker.keepalive_s) == (
        "broker.lan", 8883, "3.1.1", 12
    )
    assert broker.tls is not None and broker.tls.insecure
    # The defaults are the telemetry's own.
    plain = telemetry_settings(cfg.Config(mqtt=cfg.MqttConfig(broker="mqtt://b")))
    assert (plain.qos, plain.queue_size, plain.broker.protocol, plain.broker.tls) == (
        1, 10_000, "5", None
    )
    with pytest.raises(UsageError, match="not configured"):
        telemetry_settings(cfg.Config())


def test_xl_timeout_is_configurable(tmp_path: Path) -> None:
    config = cfg.load(_write(tmp_path, "[controller]\nxl_timeout_s = 45\n"))
    assert config.controller.xl_timeout_s == 45
    with pytest.raises(UsageError, match="xl_timeout_s"):
        cfg.load(_write(tmp_path, "[controller]\nxl_timeout_s = 0\n"))
