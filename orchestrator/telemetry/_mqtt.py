"""The one place that builds aiomqtt clients from Ballast's broker settings.

Everything MQTT-specific about connecting (TLS context, protocol version,
last will, MQTT 5 properties) is translated here, so the rest of the telemetry
package speaks in Ballast terms. Only this package imports aiomqtt.
"""

from __future__ import annotations

import ssl
from typing import Final

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from orchestrator.errors import UsageError
from orchestrator.telemetry.settings import BrokerSettings, TlsSettings

# Incoming messages held before aiomqtt discards more: bounds memory when a
# host is flooded with commands, or a fleet view with states.
MAX_INCOMING_MESSAGES: Final = 100_000
# QoS 1 publishes in flight at once; paho's default of 20 throttles a burst
# of 1,000 VM states to round trips.
MAX_INFLIGHT: Final = 50

def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """An SSL context from Ballast's TLS settings; bad files are a UsageError."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load MQTT TLS files: {exc}") from None
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def make_client(
    broker: BrokerSettings,
    *,
    client_id: str,
    context: ssl.SSLContext | None,
    will: aiomqtt.Will | None = None,
    max_incoming: int = MAX_INCOMING_MESSAGES,
) -> aiomqtt.Client:
    """An unconnected aiomqtt client (enter it to connect)."""
    v5 = broker.protocol == "5"
    protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password,
        identifier=client_id,
        protocol=protocol,
        will=will,
        # A host must not get commands queued while it was away: they would
        # apply long after their sender gave up waiting.
        clean_session=None if v5 else True,
        clean_start=True if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        timeout=broker.timeout_s,
        keepalive=broker.keepalive_s,
        max_queued_incoming_messages=max_incoming,
        max_inflight_messages=MAX_INFLIGHT,
        tls_context=context,
    )
    # aiomqtt warns above 10 unacknowledged calls; Ballast pipelines up to
    # MAX_INFLIGHT publishes on purpose.
    client.pending_calls_threshold = 2 * MAX_INFLIGHT
    return client


def subscription(topic: str, broker: BrokerSettings, *, retained: bool) -> tuple[str, int] | tuple[
    str, SubscribeOptions
]:
    """A QoS 1 subscription; with MQTT 5, ``retained=False`` asks for no retained replay."""
    if broker.protocol == "5":
        handling = (
            SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
            if retained
            else SubscribeOptions.RETAIN_DO_NOT_SEND
        )
        return topic, SubscribeOptions(qos=1, retainHandling=handling)
    return topic, 1


def publish_properties(
    broker: BrokerSettings,
    *,
    response_topic: str | None = None,
    correlation: bytes | None = None,
) -> Properties | None:
    """MQTT 5 PUBLISH properties (response topic, correlation data), else None."""
    if broker.protocol != "5" or (response_topic is None and correlation is None):
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


def response_info(message: aiomqtt.Message) -> tuple[str | None, bytes | None]:
    """The response topic and correlation data of an MQTT 5 message, if any."""
    props = message.properties
    if props is None:
        return None, None
    topic = getattr(props, "ResponseTopic", None)
    correlation = getattr(props, "CorrelationData", None)
    return (
        topic if isinstance(topic, str) else None,
        bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
    )
