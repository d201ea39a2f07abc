"""MQTT topic names for Ballast hosts and VMs, and the encoding of their segments.

Host and VM names are not under Ballast's control (a Xen domain name may hold
almost anything) but MQTT topic levels may not contain ``/``, and ``+`` and
``#`` are wildcards; brokers also refuse NUL, other control characters and
Unicode non-characters in topics (MQTT 5 §1.5.4; Mosquitto rejects them).
Every name is therefore put into one topic level with percent-encoding:

* ``%``, ``/``, ``+``, ``#``, C0/C1 control characters (U+0000-U+001F,
  U+007F-U+009F) and non-characters (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF) become
  ``%XX`` for each byte of their UTF-8 form (upper-case hex);
* every other character is kept as it is, so ``web-01`` stays ``web-01``;
* an undecodable byte carried in a name as a surrogate escape (``\\udcXX``,
  how Python decodes bad UTF-8 with ``surrogateescape``) becomes ``%XX`` of
  that byte, so it survives the round trip.

``decode_segment(encode_segment(name)) == name`` for every accepted name, so
two names never share a topic. Empty names, names longer than
:data:`MAX_NAME_BYTES` and names with other lone surrogates are rejected with
:class:`InvalidName`. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from orchestrator.errors import UsageError

# Longer than any Linux host name (HOST_NAME_MAX is 64) or DNS name (253
# octets); a Xen domain name this long is a mistake.
MAX_NAME_BYTES: Final = 255
# MQTT topics are at most 65535 bytes (UTF-8 string length prefix, MQTT 3.1.1
# §1.5.3); a prefix needs far less.
MAX_PREFIX_BYTES: Final = 200
DEFAULT_PREFIX: Final = "ballast"

_HEX_RE = re.compile(r"%([0-9A-Fa-f]{2})")


class InvalidName(UsageError):
    """A host or VM name that cannot be put into a topic level."""


class InvalidTopic(UsageError):
    """A topic that is not one of Ballast's, or is malformed."""


def _must_escape(char: str) -> bool:
    code = ord(char)
    return (
        char in "%/+#"
        or code <= 0x1F
        or 0x7F <= code <= 0x9F
        or 0xFDD0 <= code <= 0xFDEF
        or (code & 0xFFFF) in (0xFFFE, 0xFFFF)
        or 0xD800 <= code <= 0xDFFF
    )


# Everything _must_escape accepts, as one character class (the fast path).
_ESCAPE_RE = re.compile(
    "[%/+#\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ud800-\udfff"
    + "".join(f"\\U{plane:04x}fffe\\U{plane:04x}ffff" for plane in range(17))
    + "]"
)


def encode_segment(name: str) -> str:
    """Put a host or VM name into one topic level (see the module docstring)."""
    if not name:
        raise InvalidName("a host or VM name may not be empty")
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidName(f"name {name!r} holds a lone surrogate and is not text") from None
    if len(raw) > MAX_NAME_BYTES:
        raise InvalidName(f"name {name[:40]!r}... is {len(raw)} bytes, over {MAX_NAME_BYTES}")
    if _ESCAPE_RE.search(name) is None:
        return name
    parts: list[str] = []
    for char in name:
        if _must_escape(char):
            parts.append("".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogateescape")))
        else:
            parts.append(char)
    return "".join(parts)


def decode_segment(segment: str) -> str:
    """Invert :func:`encode_segment`; raise :class:`InvalidName` on bad escapes."""
    if not segment:
        raise InvalidName("empty topic level")
    if "/" in segment or "+" in segment or "#" in segment:
        raise InvalidName(f"topic level {segment!r} holds a separator or wildcard")
    out = bytearray()
    pos = 0
    while pos < len(segment):
        char = segment[pos]
        if char == "%":
            match = _HEX_RE.match(segment, pos)
            if match is None:
                raise InvalidName(f"bad percent escape in topic level {segment!r}")
            out.append(int(match.group(1), 16))
            pos += 3
        else:
            out.extend(char.encode("utf-8", "surrogateescape"))
            pos += 1
    name = out.decode("utf-8", "surrogateescape")
    if len(out) > MAX_NAME_BYTES:
        raise InvalidName(f"name in topic level is {len(out)} bytes, over {MAX_NAME_BYTES}")
    return name


def validate_prefix(prefix: str) -> str:
    """Check a topic prefix such as ``ballast`` or ``site-a/ballast``; return it."""
    if not prefix or len(prefix.encode("utf-8", "surrogatepass")) > MAX_PREFIX_BYTES:
        raise InvalidTopic(f"topic prefix must be 1 to {MAX_PREFIX_BYTES} bytes")
    if prefix.startswith("$"):
        raise InvalidTopic(f"topic prefix {prefix!r} may not start with '$' (broker-reserved)")
    for level in prefix.split("/"):
        if not level:
            raise InvalidTopic(f"topic prefix {prefix!r} has an empty level")
        if any(_must_escape(c) for c in level):
            raise InvalidTopic(
                f"topic prefix {prefix!r} holds a wildcard, '%' or a control character"
            )
    return prefix


class TopicKind(Enum):
    """What a Ballast topic carries."""

    STATUS = "status"
    VM_STATE = "vm_state"
    EVENTS = "events"
    POLICY_SET = "policy_set"
    POLICY_UNSET = "policy_unset"
    POLICY_REPLY = "policy_reply"


@dataclass(frozen=True, slots=True)
class TopicRef:
    """A parsed Ballast topic: which host, what kind, which VM (if any)."""

    host: str
    kind: TopicKind
    vm: str | None = None
    reply_id: str | None = None


@dataclass(frozen=True, slots=True)
class HostTopics:
    """Every topic of one host under one prefix (segments already encoded)."""

    prefix: str
    host: str
    base: str = field(init=False, repr=False, compare=False)
    """``<prefix>/<encoded host>``."""

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)
        object.__setattr__(self, "base", f"{self.prefix}/{encode_segment(self.host)}")

    @property
    def status(self) -> str:
        """Retained host status; also the last-will topic."""
        return f"{self.base}/status"

    @property
    def events(self) -> str:
        """Non-retained event stream."""
        return f"{self.base}/events"

    @property
    def policy_set(self) -> str:
        """Command topic: set policy fields of one VM."""
        return f"{self.base}/policy/set"

    @property
    def policy_unset(self) -> str:
        """Command topic: reset policy fields of one VM to their defaults."""
        return f"{self.base}/policy/unset"

    @property
    def reply_base(self) -> str:
        """Fallback reply topics live below this: ``<base>/policy/reply[/<id>]``."""
        return f"{self.base}/policy/reply"

    def vm_state(self, vm: str) -> str:
        """Retained state of one VM."""
        return f"{self.base}/vm/{encode_segment(vm)}/state"

    def reply(self, reply_id: str | None) -> str:
        """Fallback reply topic for a command carrying ``reply_id`` (or none)."""
        if reply_id is None:
            return self.reply_base
        return f"{self.reply_base}/{encode_segment(reply_id)}"


def fleet_wildcards(prefix: str) -> tuple[str, str]:
    """Subscriptions that see every host's status and every VM's state."""
    validate_prefix(prefix)
    return f"{prefix}/+/status", f"{prefix}/+/vm/+/state"


def parse_topic(prefix: str, topic: str) -> TopicRef:
    """Recognise a Ballast topic under ``prefix``; raise :class:`InvalidTopic` otherwise."""
    head = prefix + "/"
    if not topic.startswith(head):
        raise InvalidTopic(f"topic {topic!r} is not under {prefix!r}")
    levels = topic[len(head) :].split("/")
    try:
        host = decode_segment(levels[0])
        rest = levels[1:]
        match rest:
            case ["status"]:
                return TopicRef(host, TopicKind.STATUS)
            case ["events"]:
                return TopicRef(host, TopicKind.EVENTS)
            case ["vm", vm, "state"]:
                return TopicRef(host, TopicKind.VM_STATE, vm=decode_segment(vm))
            case ["policy", "set"]:
                return TopicRef(host, TopicKind.POLICY_SET)
            case ["policy", "unset"]:
                return TopicRef(host, TopicKind.POLICY_UNSET)
            case ["policy", "reply"]:
                return TopicRef(host, TopicKind.POLICY_REPLY)
            case ["policy", "reply", reply_id]:
                return TopicRef(host, TopicKind.POLICY_REPLY, reply_id=decode_segment(reply_id))
    except InvalidName as exc:
        raise InvalidTopic(f"topic {topic!r}: {exc}") from None
    raise InvalidTopic(f"topic {topic!r} is not a Ballast topic")
