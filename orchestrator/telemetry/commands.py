"""Policy commands over MQTT: decoding requests and encoding replies (sans-I/O).

An operator (``ballast fleet policy set``, or any MQTT client) publishes to
``<prefix>/<host>/policy/set`` or ``.../policy/unset``::

    {"vm": "web-1", "set": {"min_kb": 524288, "weight": 2}, "id": "r-42", "client": "ops@desk"}
    {"vm": "web-1", "unset": ["min_kb"], "id": "r-43"}

This module rejects what it can judge alone — size, JSON, shape, types (each
value a number, string or boolean), field-name syntax — with
:class:`CommandError`. What needs the policy model or the host's state
(unknown fields or VMs, "512M" or "lots", min above max) is for the apply
callback the controller injects: :func:`as_policy_change` turns a command into
the policy model's :class:`~orchestrator.control.policy.PolicyChange`, which
``apply_change`` validates with the same code as the CLI.

Replies go to the MQTT 5 response topic with its correlation data, else to
``<prefix>/<host>/policy/reply/<id>`` (``.../policy/reply`` without an id);
:func:`reply_topic` makes that choice. docs/mqtt.md is the full contract.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from orchestrator.control.policy import PolicyChange
from orchestrator.telemetry._json import (
    InvalidPayload,
    check_keys,
    dump,
    get_bool,
    get_int,
    get_str,
    json_type,
    load_object,
)
from orchestrator.telemetry.topics import MAX_NAME_BYTES, HostTopics

WIRE_VERSION: Final = 1
MAX_FIELDS: Final = 32
MAX_REQUEST_ID_CHARS: Final = 64
MAX_CLIENT_CHARS: Final = 128
MAX_STRING_VALUE_CHARS: Final = 200
MAX_ERROR_CHARS: Final = 500
MAX_REPLY_BYTES: Final = 16_384
# MQTT 3.1.1 §1.5.3: a topic is a UTF-8 string of at most 65535 bytes.
MAX_TOPIC_BYTES: Final = 65535

_FIELD_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

PolicyValue = bool | int | float | str
ReplyValue = None | bool | int | float | str


class CommandError(InvalidPayload):
    """A command this module refuses; carries the request id when it was readable."""

    def __init__(self, message: str, *, request_id: str | None = None, vm: str | None = None):
        super().__init__(message)
        self.request_id = request_id
        self.vm = vm


class ErrorKind(StrEnum):
    """Why a command failed, as the reply says it."""

    BAD_REQUEST = "bad_request"
    """The payload is malformed (decoder); nothing was tried."""
    REJECTED = "rejected"
    """The policy change is invalid (unknown VM or field, impossible value)."""
    UNAVAILABLE = "unavailable"
    """A temporary failure (store busy); the same command may work later."""
    INTERNAL = "internal"
    """A bug on the host; it was logged there."""


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Set some policy fields of one VM; the others keep their values."""

    vm: str
    changes: tuple[tuple[str, PolicyValue], ...]
    """(field, value) pairs, sorted by field name."""

    def as_dict(self) -> dict[str, PolicyValue]:
        """The changes as a plain mapping."""
        return dict(self.changes)


@dataclass(frozen=True, slots=True)
class PolicyUnset:
    """Reset some policy fields of one VM to their defaults."""

    vm: str
    fields: tuple[str, ...]
    """Field names, sorted."""


PolicyCommand = PolicySet | PolicyUnset


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who sent a command, as far as Ballast can tell.

    MQTT does not tell a receiver who published a message: ``claimed`` is what
    the sender wrote in its ``client`` field. Whether a sender may command a
    host at all is the broker's decision (its ACL on the command topics).
    """

    claimed: str | None = None

    @property
    def audit_name(self) -> str:
        """The string recorded as ``who`` in the audit log (source ``mqtt``)."""
        return self.claimed if self.claimed else "unidentified"


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A decoded command with what the reply needs."""

    command: PolicyCommand
    client: ClientIdentity
    request_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    """What the apply callback returns for a command it carried out."""

    policy: Mapping[str, ReplyValue] = field(default_factory=dict)
    """The VM's policy fields after the change (explicitly set ones)."""
    version: int | None = None
    """The policy version the change produced, if the store keeps one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandReply:
    """The answer to one command."""

    ok: bool
    request_id: str | None = None
    vm: str | None = None
    policy: Mapping[str, ReplyValue] | None = None
    """On success: the VM's policy after the change."""
    version: int | None = None
    """On success: the policy version, if known."""
    error_kind: ErrorKind | None = None
    error: str | None = None
    """On failure: one line for the operator."""

    @classmethod
    def success(cls, request: CommandRequest, result: ApplyResult) -> CommandReply:
        """The reply to a command that was applied."""
        return cls(
            ok=True,
            request_id=request.request_id,
            vm=request.command.vm,
            policy=dict(result.policy),
            version=result.version,
        )

    @classmethod
    def failure(
        cls, kind: ErrorKind, message: str, *, request_id: str | None, vm: str | None
    ) -> CommandReply:
        """The reply to a command that changed nothing."""
        text = " ".join(message.split())[:MAX_ERROR_CHARS] or kind.value
        return cls(ok=False, request_id=request_id, vm=vm, error_kind=kind, error=text)


# ---- decoding requests -------------------------------------------------------


def _check_field_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidPayload(f"policy field names must be strings, not {json_type(name)}")
    if not _FIELD_RE.match(name):
        raise InvalidPayload(
            f"policy field {name[:60]!r} is not a field name "
            "(lower-case letters, digits, '_', at most 48)"
        )
    return name


def _check_value(name: str, value: object) -> PolicyValue:
    # Only the JSON shape is judged here; what a value means ("512M", "on",
    # a weight's range) is the policy model's, the same code the CLI runs.
    if value is None or isinstance(value, list | dict):
        raise InvalidPayload(
            f"policy field {name!r} must be a number, string or boolean, not {json_type(value)}"
        )
    if isinstance(value, str) and len(value) > MAX_STRING_VALUE_CHARS:
        raise InvalidPayload(
            f"policy field {name!r} is longer than {MAX_STRING_VALUE_CHARS} characters"
        )
    assert isinstance(value, bool | int | float | str)
    return value


def _decode_vm(doc: dict[str, Any]) -> str:
    vm = get_str(doc, "vm", max_chars=MAX_NAME_BYTES, allow_empty=False)
    assert vm is not None
    if len(vm.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidPayload(f"field 'vm' is longer than {MAX_NAME_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in vm):
        raise InvalidPayload("field 'vm' holds a control character")
    return vm


def _request_id(doc: dict[str, Any]) -> str | None:
    value = doc.get("id")
    if isinstance(value, str) and _REQUEST_ID_RE.match(value):
        return value
    return None


def decode_command(
    payload: bytes, *, unset: bool, max_bytes: int = 4096
) -> CommandRequest:
    """Decode a ``policy/set`` (``unset=False``) or ``policy/unset`` command.

    Raises :class:`CommandError` (with the request id and VM when readable).
    """
    topic_key, other_key = ("unset", "set") if unset else ("set", "unset")
    request_id: str | None = None
    vm: str | None = None
    try:
        doc = load_object(payload, "command", max_bytes=max_bytes)
        request_id = _request_id(doc)
        if isinstance(doc.get("vm"), str):
            vm = doc["vm"]
        if other_key in doc:
            raise InvalidPayload(
                f"field {other_key!r} belongs on the policy/{other_key} topic, "
                f"this is policy/{topic_key}"
            )
        check_keys(doc, frozenset({"v", "vm", topic_key, "id", "client"}), "command")
        if "v" in doc and get_int(doc, "v", low=0, high=1_000_000) != WIRE_VERSION:
            raise InvalidPayload(f"command version must be {WIRE_VERSION}")
        if "id" in doc and request_id is None:
            raise InvalidPayload(
                "field 'id' must be 1-64 letters, digits, '.', '_' or '-'"
            )
        client = get_str(doc, "client", max_chars=MAX_CLIENT_CHARS, required=False)
        if client is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in client):
            raise InvalidPayload("field 'client' holds a control character")
        vm = _decode_vm(doc)
        command: PolicyCommand
        if unset:
            command = PolicyUnset(vm, _decode_unset(doc.get("unset")))
        else:
            command = PolicySet(vm, _decode_set(doc.get("set")))
    except InvalidPayload as exc:
        raise CommandError(str(exc), request_id=request_id, vm=vm) from None
    return CommandRequest(command, ClientIdentity(client or None), request_id)


def _decode_set(value: object) -> tuple[tuple[str, PolicyValue], ...]:
    if value is None:
        raise InvalidPayload("required field 'set' is missing")
    if not isinstance(value, dict):
        raise InvalidPayload(f"field 'set' must be an object, not {json_type(value)}")
    if not value:
        raise InvalidPayload("field 'set' names no policy field")
    if len(value) > MAX_FIELDS:
        raise InvalidPayload(f"field 'set' holds {len(value)} fields, over {MAX_FIELDS}")
    return tuple(
        sorted((_check_field_name(k), _check_value(k, v)) for k, v in value.items())
    )


def _decode_unset(value: object) -> tuple[str, ...]:
    if value is None:
        raise InvalidPayload("required field 'unset' is missing")
    if not isinstance(value, list):
        raise InvalidPayload(f"field 'unset' must be an array of names, not {json_type(value)}")
    if not value:
        raise InvalidPayload("field 'unset' names no policy field")
    if len(value) > MAX_FIELDS:
        raise InvalidPayload(f"field 'unset' holds {len(value)} names, over {MAX_FIELDS}")
    names = [_check_field_name(name) for name in value]
    if len(set(names)) != len(names):
        raise InvalidPayload("field 'unset' names a field twice")
    return tuple(sorted(names))


def as_policy_change(command: PolicyCommand, *, vm_id: str) -> PolicyChange:
    """The policy model's change for ``command``, once the caller resolved the VM.

    ``vm_id`` is the key the policy uses (the VM's uuid); the command names
    the VM as the operator does.
    """
    if isinstance(command, PolicySet):
        return PolicyChange(vm=vm_id, set=command.as_dict())
    return PolicyChange(vm=vm_id, unset=command.fields)


def encode_command(
    command: PolicyCommand, *, request_id: str | None = None, client: str | None = None
) -> bytes:
    """The JSON payload of a command (what ``ballast fleet policy`` sends)."""
    doc: dict[str, Any] = {"v": WIRE_VERSION, "vm": command.vm}
    if isinstance(command, PolicySet):
        doc["set"] = command.as_dict()
    else:
        doc["unset"] = list(command.fields)
    if request_id is not None:
        doc["id"] = request_id
    if client is not None:
        doc["client"] = client
    return dump(doc)


# ---- replies -----------------------------------------------------------------


def encode_reply(reply: CommandReply) -> bytes:
    """JSON of a reply."""
    doc: dict[str, Any] = {"v": WIRE_VERSION, "ok": reply.ok, "id": reply.request_id}
    doc["vm"] = reply.vm
    if reply.ok:
        doc["policy"] = dict(reply.policy or {})
        doc["version"] = reply.version
    else:
        doc["error"] = {
            "kind": (reply.error_kind or ErrorKind.INTERNAL).value,
            "message": reply.error or "",
        }
    return dump(doc)


def decode_reply(payload: bytes) -> CommandReply:
    """Decode a reply (what ``ballast fleet policy`` prints)."""
    doc = load_object(payload, "reply", max_bytes=MAX_REPLY_BYTES)
    ok = get_bool(doc, "ok")
    request_id = get_str(doc, "id", max_chars=MAX_REQUEST_ID_CHARS, required=False)
    vm = get_str(doc, "vm", max_chars=4 * MAX_NAME_BYTES, required=False)
    if ok:
        policy = doc.get("policy", {})
        if not isinstance(policy, dict):
            raise InvalidPayload(f"reply field 'policy' must be an object, not {json_type(policy)}")
        for key, value in policy.items():
            if isinstance(value, list | dict):
                raise InvalidPayload(f"reply policy field {key!r} is not a scalar")
        version = get_int(doc, "version", low=0, high=(1 << 63) - 1, required=False)
        return CommandReply(ok=True, request_id=request_id, vm=vm, policy=policy, version=version)
    error = doc.get("error")
    if not isinstance(error, dict):
        raise InvalidPayload("a failed reply must carry an 'error' object")
    kind_text = get_str(error, "kind", max_chars=32)
    try:
        kind = ErrorKind(kind_text or "")
    except ValueError:
        kind = ErrorKind.INTERNAL
    message = get_str(error, "message", max_chars=MAX_ERROR_CHARS)
    return CommandReply(
        ok=False, request_id=request_id, vm=vm, error_kind=kind, error=message or kind.value
    )


def reply_topic(topics: HostTopics, response_topic: str | None, request_id: str | None) -> str:
    """Where the reply to a command goes.

    The MQTT 5 response topic when it is a valid publish topic and not one of
    this host's command topics (a reply must never become a command); else the
    fallback ``<prefix>/<host>/policy/reply[/<id>]``.
    """
    if response_topic and _valid_response_topic(response_topic, topics):
        return response_topic
    return topics.reply(request_id)


def _valid_response_topic(topic: str, topics: HostTopics) -> bool:
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return (
        size <= MAX_TOPIC_BYTES
        and not topic.startswith("$")
        and "+" not in topic
        and "#" not in topic
        and "\0" not in topic
        and topic not in (topics.policy_set, topics.policy_unset)
    )
