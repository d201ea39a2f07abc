"""MQTT telemetry and commands: the only Ballast code that imports aiomqtt.

A host publishes a retained status (with a last will marking it offline), a
retained state per VM and an event stream, and takes policy commands; the
fleet view reads all hosts' retained states. Modules:

* ``topics`` — topic names and the percent-encoding of host and VM names;
* ``messages`` — status, VM state and event documents (sans-I/O codecs);
* ``commands`` — policy command decoding and reply encoding (sans-I/O);
* ``settings`` — typed broker and telemetry settings, broker URLs;
* ``client`` — :class:`Telemetry`, the controller's non-blocking publisher;
* ``fleet`` — building the fleet table and sending commands, for the CLI.

docs/mqtt.md is the wire contract.
"""

from orchestrator.telemetry.client import ApplyCallback, Telemetry, TelemetryStats
from orchestrator.telemetry.commands import (
    ApplyResult,
    ClientIdentity,
    CommandReply,
    ErrorKind,
    PolicyCommand,
    PolicySet,
    PolicyUnset,
)
from orchestrator.telemetry.messages import EventMsg, HostOfflineMsg, HostStatusMsg, VmStateMsg
from orchestrator.telemetry.settings import (
    BrokerSettings,
    TelemetrySettings,
    TlsSettings,
    broker_from_url,
    settings_from_config,
)

__all__ = [
    "ApplyCallback",
    "ApplyResult",
    "BrokerSettings",
    "ClientIdentity",
    "CommandReply",
    "ErrorKind",
    "EventMsg",
    "HostOfflineMsg",
    "HostStatusMsg",
    "PolicyCommand",
    "PolicySet",
    "PolicyUnset",
    "Telemetry",
    "TelemetrySettings",
    "TelemetryStats",
    "TlsSettings",
    "VmStateMsg",
    "broker_from_url",
    "settings_from_config",
]
