"""The controller's configuration: one TOML file, typed, validated at load.

``/etc/ballast/ballast.toml`` by default. Every key has a default, so an empty
or missing file gives a working controller on a standard dom0. Flags on the
command line override the file (:func:`with_overrides`). Unknown sections or
keys are errors, so a typo never silently falls back to a default.

Secrets (the MQTT password) are never printed: :func:`render_toml` masks
them, and :class:`MqttConfig`'s repr leaves them out. A configuration file
that other users may write is refused: whoever can write it controls every
VM's memory.
"""

from __future__ import annotations

import os
import socket
import stat
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from orchestrator.errors import UsageError

DEFAULT_CONFIG_PATH = Path("/etc/ballast/ballast.toml")
# Where a real dom0's xenstored listens (Xen 4.x: XEN_RUN_STORED/socket).
DEFAULT_XENSTORE_SOCKET = "/run/xenstored/socket"
DEFAULT_DB_PATH = Path("/var/lib/ballast/ballast.db")
# xen-selfballoon.c: selfballoon_interval defaults to 5 (seconds).
KERNEL_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerConfig:
    """How the controller connects and how often it runs."""

    host_name: str = field(default_factory=socket.gethostname)
    """Name of this host in telemetry and in the history database."""
    xenstore: str = DEFAULT_XENSTORE_SOCKET
    """xenstored socket, or a directory holding Ballast's server ``socket``."""
    hypervisor: str = "xl"
    """Where allocations come from: ``xl`` on a real dom0."""
    xl_path: str = "xl"
    """The ``xl`` binary."""
    xl_timeout_s: float = 10.0
    """Longest wait for one ``xl`` command, seconds (a cycle is skipped past it)."""
    interval_s: float = KERNEL_INTERVAL_S
    """Seconds between reconcile cycles when nothing wakes the loop earlier."""
    dom0_reserve_mb: int = 0
    """Memory kept back for dom0 on top of what it has now, MiB."""
    free_margin_mb: int = 256
    """Host memory never handed to guests, MiB (headroom for domain builds)."""
    log_level: str = "info"
    """Log level: debug, info, warning, error."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """The history database."""

    url: str = f"sqlite:///{DEFAULT_DB_PATH}"
    """SQLAlchemy URL: ``sqlite:////path`` or ``postgresql+psycopg://...``."""
    busy_timeout_s: float = 5.0
    """How long one write waits for a lock another process holds, seconds; the
    history writer then retries with backoff (control never waits for it)."""
    max_queued_samples: int = 100_000
    """Samples held while the database is locked, full or away; beyond this the
    oldest are dropped, counted, and recorded as a gap (decisions never are)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttConfig:
    """Telemetry and commands over MQTT; off unless ``broker`` is set."""

    broker: str = ""
    """``mqtt://host[:port]`` or ``mqtts://host[:port]``; empty disables MQTT."""
    username: str = ""
    """User name for the broker, if it asks for one."""
    password: str = field(default="", repr=False)
    """Password for the broker. Never logged or printed."""
    password_file: str = ""
    """Read the password from this file instead (first line)."""
    tls_ca: str = ""
    """CA bundle to verify the broker (mqtts://); empty: system store."""
    tls_cert: str = ""
    """Client certificate for mutual TLS."""
    tls_key: str = ""
    """Client key for mutual TLS."""
    topic_prefix: str = "ballast"
    """First topic level of everything Ballast publishes."""
    client_id: str = ""
    """MQTT client id; empty: ``ballast-<host_name>``."""
    tls_insecure: bool = False
    """Skip verifying the broker's certificate and name (mqtts://; testing only)."""
    protocol: str = "5"
    """MQTT protocol version, ``"5"`` or ``"3.1.1"`` (older brokers)."""
    qos: int = 1
    """QoS of status, VM state and event publishes: 0 or 1."""
    keepalive_s: int = 30
    """MQTT keep-alive, seconds: a silent broker is noticed within 1.5 times this."""
    queue_size: int = 10_000
    """Messages held while the broker is slow or away; more are dropped and counted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """The Prometheus endpoint."""

    port: int = 0
    """TCP port for ``/metrics``; 0 disables it."""
    bind: str = "127.0.0.1"
    """Address to listen on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything the controller reads from ``ballast.toml``."""

    controller: ControllerConfig = field(default_factory=ControllerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


_SECTIONS: dict[str, type[Any]] = {
    "controller": ControllerConfig,
    "store": StoreConfig,
    "mqtt": MqttConfig,
    "metrics": MetricsConfig,
}
_SECRET_KEYS = frozenset({("mqtt", "password")})
_LOG_LEVELS = ("debug", "info", "warning", "error")

_T = TypeVar("_T")


def _build_section(name: str, cls: type[_T], values: Any, source: str) -> _T:
    if not isinstance(values, dict):
        raise UsageError(f"{source}: [{name}] must be a table")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise UsageError(
                f"{source}: unknown key {key!r} in [{name}]; known keys: {', '.join(sorted(known))}"
            )
        default = getattr(cls(), key)
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise UsageError(
                f"{source}: [{name}] {key} must be a {type(default).__name__}, "
                f"not {type(value).__name__}"
            )
        kwargs[key] = value
    return cls(**kwargs)


def validate(config: Config, source: str = "configuration") -> Config:
    """Reject values no controller can run with, naming the key to fix."""
    c = config.controller
    if not c.host_name or "/" in c.host_name or len(c.host_name) > 64:
        raise UsageError(f"{source}: [controller] host_name must be 1-64 characters without '/'")
    if not 0.1 <= c.interval_s <= 3600:
        raise UsageError(f"{source}: [controller] interval_s must be between 0.1 and 3600")
    if not 0.1 <= c.xl_timeout_s <= 600:
        raise UsageError(f"{source}: [controller] xl_timeout_s must be between 0.1 and 600")
    if c.dom0_reserve_mb < 0 or c.free_margin_mb < 0:
        raise UsageError(f"{source}: [controller] reserves must not be negative")
    if c.hypervisor not in ("xl",):
        raise UsageError(f"{source}: [controller] hypervisor must be 'xl'")
    if c.log_level not in _LOG_LEVELS:
        raise UsageError(
            f"{source}: [controller] log_level must be one of {', '.join(_LOG_LEVELS)}"
        )
    if not config.store.url:
        raise UsageError(f"{source}: [store] url must not be empty")
    if not 0 < config.store.busy_timeout_s <= 600:
        raise UsageError(f"{source}: [store] busy_timeout_s must be between 0 and 600")
    if not 1 <= config.store.max_queued_samples <= 10_000_000:
        raise UsageError(f"{source}: [store] max_queued_samples must be between 1 and 10000000")
    m = config.mqtt
    if m.broker:
        parts = urlsplit(m.broker)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise UsageError(
                f"{source}: [mqtt] broker must look like mqtt://host:1883 or mqtts://host:8883"
            )
        if parts.password:
            raise UsageError(
                f"{source}: [mqtt] put the password in 'password' or 'password_file', "
                "not in the broker URL"
            )
    if m.password and m.password_file:
        raise UsageError(f"{source}: [mqtt] set either password or password_file, not both")
    if not m.topic_prefix or any(ch in m.topic_prefix for ch in "+#/\0"):
        raise UsageError(f"{source}: [mqtt] topic_prefix must be one topic level without + # /")
    if m.protocol not in ("5", "3.1.1"):
        raise UsageError(f"{source}: [mqtt] protocol must be \"5\" or \"3.1.1\"")
    if m.qos not in (0, 1):
        raise UsageError(f"{source}: [mqtt] qos must be 0 or 1")
    # MQTT 3.1.1 §3.1.2.10: a 16-bit number of seconds; Mosquitto refuses 1-4 s.
    if not 5 <= m.keepalive_s <= 65535:
        raise UsageError(f"{source}: [mqtt] keepalive_s must be between 5 and 65535")
    if m.queue_size < 1:
        raise UsageError(f"{source}: [mqtt] queue_size must be at least 1")
    if m.tls_insecure and not m.broker.strip().startswith("mqtts://"):
        raise UsageError(f"{source}: [mqtt] tls_insecure needs an mqtts:// broker")
    if not 0 <= config.metrics.port <= 65535:
        raise UsageError(f"{source}: [metrics] port must be between 0 and 65535")
    return config


def check_file_safety(path: Path) -> None:
    """Refuse a configuration file that other users can write, or replace: its
    directory (and, for a symlink, the target's) writable by others without the
    sticky bit."""
    info = path.stat()
    for directory in dict.fromkeys((path.absolute().parent, path.resolve().parent)):
        mode = directory.stat().st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            raise UsageError(
                f"{directory} is world-writable: anyone could replace {path.name} and steer "
                f"every VM's memory. Run: chmod o-w {directory}"
            )
    if info.st_mode & stat.S_IWOTH:
        raise UsageError(
            f"{path} is world-writable; anyone could steer every VM's memory. "
            f"Run: chmod o-w {path}"
        )
    if info.st_mode & stat.S_IWGRP and info.st_gid != 0:
        raise UsageError(
            f"{path} is writable by group {info.st_gid}; run: chmod g-w {path}"
        )


def load(path: Path | None = None, *, required: bool = False) -> Config:
    """Load and validate ``path`` (default ``/etc/ballast/ballast.toml``).

    A missing file gives the defaults unless ``required`` (the user named it).
    """
    path = path or Path(os.environ.get("BALLAST_CONFIG", DEFAULT_CONFIG_PATH))
    source = str(path)
    try:
        check_file_safety(path)
        with path.open("rb") as handle:
            doc = tomllib.load(handle)
    except FileNotFoundError:
        if required:
            raise UsageError(f"configuration file {path} does not exist") from None
        return validate(Config(), "defaults")
    except PermissionError:
        raise UsageError(f"cannot read {path}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}") from None
    sections: dict[str, Any] = {}
    for name, values in doc.items():
        if name not in _SECTIONS:
            raise UsageError(
                f"{source}: unknown section [{name}]; known: {', '.join(sorted(_SECTIONS))}"
            )
        sections[name] = _build_section(name, _SECTIONS[name], values, source)
    return validate(Config(**sections), source)


def with_overrides(config: Config, **overrides: Any) -> Config:
    """Apply command-line overrides given as ``section__key=value``; None is "not given"."""
    result = config
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition("__")
        current = getattr(result, section)
        result = replace(result, **{section: replace(current, **{key: value})})
    return validate(result, "command line")


def mqtt_password(config: MqttConfig) -> str:
    """The MQTT password, read from ``password_file`` when that is set."""
    if not config.password_file:
        return config.password
    try:
        return Path(config.password_file).read_text().splitlines()[0].strip()
    except (OSError, IndexError) as exc:
        raise UsageError(f"cannot read MQTT password_file {config.password_file}: {exc}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_toml(config: Config) -> str:
    """The effective configuration as TOML, with secrets masked."""
    lines: list[str] = []
    for name in _SECTIONS:
        section = getattr(config, name)
        lines.append(f"[{name}]")
        for f in fields(section):
            value = getattr(section, f.name)
            if (name, f.name) in _SECRET_KEYS and value:
                value = "********"
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def as_dict(config: Config, *, mask_secrets: bool = True) -> dict[str, dict[str, Any]]:
    """The configuration as plain data (for ``--json``), secrets masked."""
    result: dict[str, dict[str, Any]] = {}
    for name in _SECTIONS:
        section = getattr(config, name)
        values = {f.name: getattr(section, f.name) for f in fields(section)}
        if mask_secrets:
            for sec_name, key in _SECRET_KEYS:
                if sec_name == name and values.get(key):
                    values[key] = "********"
        result[name] = values
    return result
