"""Typed settings for MQTT connections, and parsing of broker URLs.

:class:`BrokerSettings` says how to reach a broker (shared by a host's
:class:`~orchestrator.telemetry.Telemetry` and the ``ballast fleet`` commands);
:class:`TelemetrySettings` adds what one host publishes and how. The
controller derives them from ``ballast.toml`` (:func:`settings_from_config`),
the fleet commands from ``--broker URL`` (:func:`broker_from_url`). Bad
combinations are refused when the settings are built, never when the first
connection is tried. The password never shows up in a repr, a log line or an
error message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import unquote, urlsplit

from orchestrator.config import Config, mqtt_password
from orchestrator.errors import UsageError
from orchestrator.telemetry.topics import DEFAULT_PREFIX, encode_segment, validate_prefix

# IANA-registered MQTT ports (1883 plain, 8883 over TLS).
MQTT_PORT: Final = 1883
MQTTS_PORT: Final = 8883
# MQTT 3.1.1 §3.1.2.10: keep-alive is a 16-bit number of seconds. Mosquitto
# refuses keep-alives of 1-4 s.
MIN_KEEPALIVE_S: Final = 5
MAX_KEEPALIVE_S: Final = 65535
# MQTT 3.1.1 §3.1.3.1 guarantees 23-character ids; brokers accept far more.
MAX_CLIENT_ID_CHARS: Final = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """TLS towards the broker (``mqtts://``)."""

    ca_file: str | None = None
    """CA bundle (PEM) to verify the broker; ``None``: the system trust store."""
    cert_file: str | None = None
    """Client certificate (PEM) for mutual TLS."""
    key_file: str | None = None
    """Private key (PEM) of ``cert_file``; ``None`` if it is inside ``cert_file``."""
    insecure: bool = False
    """Skip certificate and host name verification (testing only)."""

    def __post_init__(self) -> None:
        if self.key_file and not self.cert_file:
            raise UsageError("a TLS key file needs a certificate file")


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    """How to reach and log in to an MQTT broker."""

    host: str = "127.0.0.1"
    """Broker host name or address (IPv6 without brackets)."""
    port: int = MQTT_PORT
    """Broker TCP port."""
    client_id: str = ""
    """MQTT client id; empty: the user of these settings picks one."""
    username: str | None = None
    """User name; Mosquitto ACL patterns (``%u``) can key on it."""
    password: str | None = field(default=None, repr=False)
    """Password. Never shown."""
    tls: TlsSettings | None = None
    """TLS settings; ``None`` for plain TCP."""
    protocol: Literal["5", "3.1.1"] = "5"
    """MQTT protocol version; with 3.1.1, command replies use the fallback topic."""
    keepalive_s: int = 30
    """MQTT keep-alive, seconds: a silent broker is noticed within 1.5 times this."""
    timeout_s: float = 10.0
    """How long one connection attempt or one acknowledged publish may take, seconds."""

    def __post_init__(self) -> None:
        if not self.host:
            raise UsageError("the MQTT broker host may not be empty")
        if not 1 <= self.port <= 65535:
            raise UsageError(f"MQTT broker port {self.port} is outside 1..65535")
        if len(self.client_id) > MAX_CLIENT_ID_CHARS:
            raise UsageError(f"MQTT client id is longer than {MAX_CLIENT_ID_CHARS} characters")
        if self.password is not None and self.username is None:
            raise UsageError("an MQTT password needs a user name")
        if self.protocol not in ("5", "3.1.1"):
            raise UsageError(f"MQTT protocol must be '5' or '3.1.1', not {self.protocol!r}")
        if not MIN_KEEPALIVE_S <= self.keepalive_s <= MAX_KEEPALIVE_S:
            raise UsageError(
                f"MQTT keep-alive must be {MIN_KEEPALIVE_S}..{MAX_KEEPALIVE_S} s, "
                f"not {self.keepalive_s}"
            )
        if not self.timeout_s > 0:
            raise UsageError("the MQTT timeout must be positive")

    @property
    def url(self) -> str:
        """``mqtt[s]://[user@]host:port``: safe to log (never the password)."""
        scheme = "mqtts" if self.tls is not None else "mqtt"
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetrySettings:
    """How one Ballast host publishes its state and takes commands."""

    host_name: str
    """This host's name: the second topic level (percent-encoded, see topics.py)."""
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    """Where the broker is and how to log in."""
    topic_prefix: str = DEFAULT_PREFIX
    """First topic level(s) of everything Ballast publishes."""
    qos: Literal[0, 1] = 1
    """QoS of status, state and event publishes (replies and the goodbye use 1)."""
    queue_size: int = 10_000
    """Outgoing messages held while the broker is slow or away; more are dropped."""
    reconnect_min_s: float = 0.5
    """First delay before reconnecting, seconds; doubles per failure."""
    reconnect_max_s: float = 30.0
    """Longest delay between reconnection attempts, seconds."""
    shutdown_timeout_s: float = 3.0
    """How long a clean shutdown may spend flushing and saying goodbye, seconds."""
    max_command_bytes: int = 4096
    """Largest policy command accepted, bytes."""

    def __post_init__(self) -> None:
        encode_segment(self.host_name)
        validate_prefix(self.topic_prefix)
        if self.qos not in (0, 1):
            raise UsageError(f"telemetry QoS must be 0 or 1, not {self.qos!r}")
        if self.queue_size < 1:
            raise UsageError("the telemetry queue must hold at least one message")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise UsageError("reconnect delays must satisfy 0 < min <= max")
        if not self.shutdown_timeout_s > 0:
            raise UsageError("shutdown_timeout_s must be positive")
        if self.max_command_bytes < 256:
            raise UsageError("max_command_bytes below 256 cannot hold a policy command")

    @property
    def client_id(self) -> str:
        """The client id sent to the broker: the configured one or ``ballast-<host>``.

        Very long host names get a digest instead, so the id stays within
        :data:`MAX_CLIENT_ID_CHARS` and still differs from every other host's.
        """
        if self.broker.client_id:
            return self.broker.client_id
        segment = encode_segment(self.host_name)
        if len(segment) <= MAX_CLIENT_ID_CHARS - len("ballast-"):
            return f"ballast-{segment}"
        return "ballast-" + hashlib.sha256(segment.encode()).hexdigest()[:40]


def broker_from_url(
    url: str,
    *,
    client_id: str = "",
    username: str | None = None,
    password: str | None = None,
    tls: TlsSettings | None = None,
    protocol: Literal["5", "3.1.1"] = "5",
    timeout_s: float = 10.0,
) -> BrokerSettings:
    """Parse ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...``.

    ``username``/``password`` given here win over the URL's; ``mqtts://``
    without ``tls`` verifies the broker against the system trust store.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"invalid broker URL: {exc}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise UsageError("broker URL must start with mqtt:// or mqtts://, e.g. mqtt://broker:1883")
    if not parts.hostname:
        raise UsageError("broker URL has no host, e.g. mqtt://broker:1883")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError("broker URL may hold only user, password, host and port")
    secure = parts.scheme == "mqtts"
    if tls is not None and not secure:
        raise UsageError("TLS options need an mqtts:// broker URL")
    url_user = unquote(parts.username) if parts.username else None
    url_password = unquote(parts.password) if parts.password is not None else None
    return BrokerSettings(
        host=parts.hostname,
        port=port if port is not None else (MQTTS_PORT if secure else MQTT_PORT),
        client_id=client_id,
        username=username if username is not None else url_user,
        password=password if password is not None else url_password,
        tls=(tls or TlsSettings()) if secure else None,
        protocol=protocol,
        timeout_s=timeout_s,
    )


def settings_from_config(config: Config) -> TelemetrySettings:
    """Telemetry settings for the controller from ``ballast.toml``.

    Raises :class:`UsageError` when ``[mqtt] broker`` is empty (MQTT is off).
    """
    mqtt = config.mqtt
    if not mqtt.broker:
        raise UsageError("MQTT is not configured: set [mqtt] broker in ballast.toml")
    secure = mqtt.broker.strip().startswith("mqtts://")
    tls = None
    if secure:
        tls = TlsSettings(
            ca_file=mqtt.tls_ca or None,
            cert_file=mqtt.tls_cert or None,
            key_file=mqtt.tls_key or None,
        )
    password = mqtt_password(mqtt)
    broker = broker_from_url(
        mqtt.broker,
        client_id=mqtt.client_id,
        username=mqtt.username or None,
        password=password or None,
        tls=tls,
    )
    return TelemetrySettings(
        host_name=config.controller.host_name, broker=broker, topic_prefix=mqtt.topic_prefix
    )
