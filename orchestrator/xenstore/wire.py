"""Sans-I/O codec of the xenstore wire protocol (Xen 4.17 ``xs_wire.h``).

A message is a 16-byte header of four little-endian u32 (type, req_id, tx_id,
len) followed by ``len`` bytes of payload, at most 4096. Payloads are
NUL-separated strings, except WRITE's value and READ's reply, which are raw
bytes. This module turns bytes into :class:`Packet` and typed requests and
replies, and back; it owns no socket, so the server, the minimal client and
the tests share one definition of the format.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, TypeAlias

from orchestrator.xenstore.errors import OversizedPacketError, ProtocolError
from orchestrator.xenstore.perms import DOMID_MAX, Perm

# XENSTORE_PAYLOAD_MAX, xs_wire.h.
PAYLOAD_MAX = 4096
HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size
U32_MAX = 0xFFFFFFFF
NUL = b"\0"


class Op(IntEnum):
    """Message types (enum xsd_sockmsg_type, Xen 4.17 xs_wire.h)."""

    CONTROL = 0
    DEBUG = 0  # the old name of CONTROL, kept as an alias by xs_wire.h
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was XS_RESTRICT, removed from the protocol.
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


# XS_INVALID, xs_wire.h: guaranteed never to be a valid type.
INVALID_OP = 0xFFFF

# xsd_errors[], xs_wire.h: the errno names a daemon may send in an ERROR reply.
ERROR_NAMES = (
    "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
    "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
)  # fmt: skip

ACK = b"OK\0"


class Packet(NamedTuple):
    """One message; ``op`` stays a plain int so unknown types survive decoding.

    A named tuple rather than a dataclass: the server builds one per request,
    and tuples are the cheapest immutable record Python has.
    """

    op: int
    req_id: int
    tx_id: int
    payload: bytes


def encode(packet: Packet) -> bytes:
    """The bytes of ``packet`` on the wire."""
    if len(packet.payload) > PAYLOAD_MAX:
        raise ProtocolError(
            f"payload of {len(packet.payload)} bytes exceeds {PAYLOAD_MAX}", errno_name="E2BIG"
        )
    try:
        header = HEADER.pack(packet.op, packet.req_id, packet.tx_id, len(packet.payload))
    except struct.error as exc:
        raise ProtocolError(f"header field out of u32 range: {packet!r}") from exc
    return header + packet.payload


class Decoder:
    """Incremental decoder: feed it byte chunks of any size, get whole packets.

    A header announcing more than ``max_payload`` bytes raises
    :class:`OversizedPacketError`; the decoder is then unusable, as the
    connection must be closed.
    """

    __slots__ = ("_broken", "_buf", "_max")

    def __init__(self, *, max_payload: int = PAYLOAD_MAX) -> None:
        self._buf = bytearray()
        self._max = max_payload
        self._broken = False

    def feed(self, data: bytes) -> list[Packet]:
        """Add ``data`` and return every packet now complete, in order."""
        if self._broken:
            raise OversizedPacketError("decoder already saw an oversized packet")
        buf = self._buf
        buf += data
        out: list[Packet] = []
        start = 0
        end = len(buf)
        unpack = HEADER.unpack_from
        while end - start >= HEADER_SIZE:
            op, req_id, tx_id, size = unpack(buf, start)
            if size > self._max:
                self._broken = True
                raise OversizedPacketError(
                    f"packet announces {size} payload bytes, more than {self._max}"
                )
            stop = start + HEADER_SIZE + size
            if stop > end:
                break
            out.append(Packet(op, req_id, tx_id, bytes(buf[start + HEADER_SIZE : stop])))
            start = stop
        if start:
            del buf[:start]
        return out

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a packet."""
        return len(self._buf)


# --- strings inside payloads ---------------------------------------------------

# Paths and tokens are decoded as latin-1, which maps every byte to one code
# point and back, so nothing is lost before the path rules are applied.
_TEXT = "latin-1"


def join_strings(*items: str) -> bytes:
    """``a\\0b\\0``: each item NUL-terminated."""
    return b"".join(s.encode(_TEXT) + NUL for s in items)


def split_strings(payload: bytes) -> list[str]:
    """Inverse of :func:`join_strings`; the payload must end with NUL."""
    if not payload.endswith(NUL):
        raise ProtocolError("payload strings must be NUL-terminated")
    return [s.decode(_TEXT) for s in payload[:-1].split(NUL)]


def _exact(payload: bytes, count: int, what: str) -> list[str]:
    items = split_strings(payload)
    if len(items) != count:
        raise ProtocolError(f"{what} takes {count} string(s), got {len(items)}")
    return items


def _domid(text: str) -> int:
    if not text.isdigit() or not text.isascii() or int(text) > DOMID_MAX:
        raise ProtocolError(f"invalid domid {text!r}")
    return int(text)


def _u32(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii() or int(text) > U32_MAX:
        raise ProtocolError(f"invalid {what} {text!r}")
    return int(text)


# --- typed requests --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Control:
    """CONTROL (DEBUG): a command for the daemon and its arguments."""

    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Directory:
    """DIRECTORY: names of the children of ``path``."""

    path: str


@dataclass(frozen=True, slots=True)
class DirectoryPart:
    """DIRECTORY_PART: children of ``path`` from byte ``offset`` of the list."""

    path: str
    offset: int


@dataclass(frozen=True, slots=True)
class Read:
    """READ: the value of ``path``."""

    path: str


@dataclass(frozen=True, slots=True)
class GetPerms:
    """GET_PERMS: the permission list of ``path``."""

    path: str


@dataclass(frozen=True, slots=True)
class Watch:
    """WATCH: report changes at and below ``path`` tagged with ``token``."""

    path: str
    token: str


@dataclass(frozen=True, slots=True)
class Unwatch:
    """UNWATCH: remove the watch registered with ``path`` and ``token``."""

    path: str
    token: str


@dataclass(frozen=True, slots=True)
class TransactionStart:
    """TRANSACTION_START: open a transaction; the reply carries its id."""


@dataclass(frozen=True, slots=True)
class TransactionEnd:
    """TRANSACTION_END: commit (``T``) or abort (``F``) the header's transaction."""

    commit: bool


@dataclass(frozen=True, slots=True)
class Introduce:
    """INTRODUCE: start serving a domain (its ring page and event channel)."""

    domid: int
    mfn: int
    port: int


@dataclass(frozen=True, slots=True)
class Release:
    """RELEASE: stop serving a domain."""

    domid: int


@dataclass(frozen=True, slots=True)
class GetDomainPath:
    """GET_DOMAIN_PATH: the home path of a domain."""

    domid: int


@dataclass(frozen=True, slots=True)
class Write:
    """WRITE: set the value of ``path``, creating it and missing parents."""

    path: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Mkdir:
    """MKDIR: create ``path`` (and parents) with an empty value if missing."""

    path: str


@dataclass(frozen=True, slots=True)
class Rm:
    """RM: remove ``path`` and everything below it."""

    path: str


@dataclass(frozen=True, slots=True)
class SetPerms:
    """SET_PERMS: replace the permission list of ``path``."""

    path: str
    perms: tuple[Perm, ...]


@dataclass(frozen=True, slots=True)
class IsDomainIntroduced:
    """IS_DOMAIN_INTRODUCED: whether the daemon serves ``domid``."""

    domid: int


@dataclass(frozen=True, slots=True)
class Resume:
    """RESUME: clear a domain's shutdown flag."""

    domid: int


@dataclass(frozen=True, slots=True)
class SetTarget:
    """SET_TARGET: give ``domid`` (a device model) the rights of ``target``."""

    domid: int
    target: int


@dataclass(frozen=True, slots=True)
class ResetWatches:
    """RESET_WATCHES: drop every watch and transaction of the connection."""


Request: TypeAlias = (
    Control | Directory | DirectoryPart | Read | GetPerms | Watch | Unwatch | TransactionStart
    | TransactionEnd | Introduce | Release | GetDomainPath | Write | Mkdir | Rm | SetPerms
    | IsDomainIntroduced | Resume | SetTarget | ResetWatches
)  # fmt: skip


def encode_request(request: Request) -> tuple[Op, bytes]:
    """The message type and payload of a typed request."""
    match request:
        case Control(args):
            return Op.CONTROL, join_strings(*args)
        case Directory(path):
            return Op.DIRECTORY, join_strings(path)
        case DirectoryPart(path, offset):
            return Op.DIRECTORY_PART, join_strings(path, str(offset))
        case Read(path):
            return Op.READ, join_strings(path)
        case GetPerms(path):
            return Op.GET_PERMS, join_strings(path)
        case Watch(path, token):
            return Op.WATCH, join_strings(path, token)
        case Unwatch(path, token):
            return Op.UNWATCH, join_strings(path, token)
        case TransactionStart():
            return Op.TRANSACTION_START, NUL
        case TransactionEnd(commit):
            return Op.TRANSACTION_END, b"T\0" if commit else b"F\0"
        case Introduce(domid, mfn, port):
            return Op.INTRODUCE, join_strings(str(domid), str(mfn), str(port))
        case Release(domid):
            return Op.RELEASE, join_strings(str(domid))
        case GetDomainPath(domid):
            return Op.GET_DOMAIN_PATH, join_strings(str(domid))
        case Write(path, value):
            return Op.WRITE, path.encode(_TEXT) + NUL + value
        case Mkdir(path):
            return Op.MKDIR, join_strings(path)
        case Rm(path):
            return Op.RM, join_strings(path)
        case SetPerms(path, perms):
            return Op.SET_PERMS, join_strings(path, *(str(p) for p in perms))
        case IsDomainIntroduced(domid):
            return Op.IS_DOMAIN_INTRODUCED, join_strings(str(domid))
        case Resume(domid):
            return Op.RESUME, join_strings(str(domid))
        case SetTarget(domid, target):
            return Op.SET_TARGET, join_strings(str(domid), str(target))
        case ResetWatches():
            return Op.RESET_WATCHES, NUL
    raise ProtocolError(f"not a request: {request!r}")  # pragma: no cover - exhaustive


def request_packet(request: Request, *, req_id: int, tx_id: int = 0) -> Packet:
    """A :class:`Packet` carrying ``request``."""
    op, payload = encode_request(request)
    return Packet(int(op), req_id, tx_id, payload)


def decode_request(op: int, payload: bytes) -> Request:
    """The typed request of a client message.

    Raises :class:`ProtocolError` with ``errno_name`` ``ENOSYS`` for a type
    that is not a request, ``EINVAL`` for a malformed payload (as xenstored).
    """
    try:
        kind = Op(op)
    except ValueError:
        raise ProtocolError(f"unknown message type {op}", errno_name="ENOSYS") from None
    match kind:
        case Op.CONTROL:
            return Control(tuple(split_strings(payload)))
        case Op.DIRECTORY:
            return Directory(*_exact(payload, 1, "DIRECTORY"))
        case Op.DIRECTORY_PART:
            path, offset = _exact(payload, 2, "DIRECTORY_PART")
            return DirectoryPart(path, _u32(offset, "offset"))
        case Op.READ:
            return Read(*_exact(payload, 1, "READ"))
        case Op.GET_PERMS:
            return GetPerms(*_exact(payload, 1, "GET_PERMS"))
        case Op.WATCH:
            path, token = _exact(payload, 2, "WATCH")
            return Watch(path, token)
        case Op.UNWATCH:
            path, token = _exact(payload, 2, "UNWATCH")
            return Unwatch(path, token)
        case Op.TRANSACTION_START:
            return TransactionStart()
        case Op.TRANSACTION_END:
            (flag,) = _exact(payload, 1, "TRANSACTION_END")
            if flag not in ("T", "F"):
                raise ProtocolError(f"TRANSACTION_END takes T or F, got {flag!r}")
            return TransactionEnd(flag == "T")
        case Op.INTRODUCE:
            domid, mfn, port = _exact(payload, 3, "INTRODUCE")
            return Introduce(_domid(domid), _u32(mfn, "mfn"), _u32(port, "event channel"))
        case Op.RELEASE:
            return Release(_domid(_exact(payload, 1, "RELEASE")[0]))
        case Op.GET_DOMAIN_PATH:
            return GetDomainPath(_domid(_exact(payload, 1, "GET_DOMAIN_PATH")[0]))
        case Op.WRITE:
            cut = payload.find(NUL)
            if cut < 0:
                raise ProtocolError("WRITE needs a NUL-terminated path before the value")
            return Write(payload[:cut].decode(_TEXT), payload[cut + 1 :])
        case Op.MKDIR:
            return Mkdir(*_exact(payload, 1, "MKDIR"))
        case Op.RM:
            return Rm(*_exact(payload, 1, "RM"))
        case Op.SET_PERMS:
            items = split_strings(payload)
            if len(items) < 2:
                raise ProtocolError("SET_PERMS needs a path and at least one permission")
            try:
                perms = tuple(Perm.parse(t) for t in items[1:])
            except ValueError as exc:
                raise ProtocolError(str(exc)) from None
            return SetPerms(items[0], perms)
        case Op.IS_DOMAIN_INTRODUCED:
            return IsDomainIntroduced(_domid(_exact(payload, 1, "IS_DOMAIN_INTRODUCED")[0]))
        case Op.RESUME:
            return Resume(_domid(_exact(payload, 1, "RESUME")[0]))
        case Op.SET_TARGET:
            domid, target = _exact(payload, 2, "SET_TARGET")
            return SetTarget(_domid(domid), _domid(target))
        case Op.RESET_WATCHES:
            return ResetWatches()
        case Op.WATCH_EVENT | Op.ERROR:
            raise ProtocolError(f"{kind.name} is not a request", errno_name="ENOSYS")
    raise ProtocolError(f"unknown message type {op}", errno_name="ENOSYS")  # pragma: no cover


# --- replies ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """WATCH_EVENT: ``path`` changed, reported to the watch registered with ``token``."""

    path: str
    token: str


@dataclass(frozen=True, slots=True)
class DirectoryChunk:
    """One DIRECTORY_PART reply: the node's generation and a slice of its children."""

    generation: int
    names: tuple[str, ...]
    complete: bool


def encode_watch_event(event: WatchEvent) -> bytes:
    """Payload of a WATCH_EVENT message."""
    return join_strings(event.path, event.token)


def decode_watch_event(payload: bytes) -> WatchEvent:
    """Inverse of :func:`encode_watch_event`."""
    path, token = _exact(payload, 2, "WATCH_EVENT")
    return WatchEvent(path, token)


def encode_error(errno_name: str) -> bytes:
    """Payload of an ERROR reply."""
    return errno_name.encode("ascii") + NUL


def decode_error(payload: bytes) -> str:
    """The errno name of an ERROR reply (``EINVAL`` if unreadable, as libxenstore)."""
    name = payload.rstrip(NUL).decode(_TEXT)
    return name if name in ERROR_NAMES else "EINVAL"


def encode_names(names: list[str] | tuple[str, ...]) -> bytes:
    """Payload of a DIRECTORY reply (and of GET_PERMS with permission strings)."""
    return join_strings(*names)


def decode_names(payload: bytes) -> list[str]:
    """Inverse of :func:`encode_names`; an empty payload is an empty list."""
    if not payload:
        return []
    return split_strings(payload)


def encode_perms(perms: tuple[Perm, ...] | list[Perm]) -> bytes:
    """Payload of a GET_PERMS reply."""
    return join_strings(*(str(p) for p in perms))


def decode_perms(payload: bytes) -> tuple[Perm, ...]:
    """Inverse of :func:`encode_perms`."""
    try:
        return tuple(Perm.parse(t) for t in split_strings(payload))
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def encode_directory_chunk(chunk: DirectoryChunk) -> bytes:
    """Payload of a DIRECTORY_PART reply: ``gen\\0`` names, and ``\\0`` after the last."""
    body = join_strings(str(chunk.generation), *chunk.names)
    return body + NUL if chunk.complete else body


def decode_directory_chunk(payload: bytes) -> DirectoryChunk:
    """Inverse of :func:`encode_directory_chunk`."""
    cut = payload.find(NUL)
    if cut < 0:
        raise ProtocolError("DIRECTORY_PART reply lacks its generation")
    generation = _u64(payload[:cut].decode(_TEXT))
    rest = payload[cut + 1 :]
    complete = rest == NUL or rest.endswith(b"\0\0")
    if complete:
        rest = rest[:-1]
    names = tuple(split_strings(rest)) if rest else ()
    return DirectoryChunk(generation, names, complete)


def _u64(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ProtocolError(f"invalid generation {text!r}")
    return int(text)


def encode_int(value: int) -> bytes:
    """Payload of a TRANSACTION_START reply (and other single numbers)."""
    return f"{value}\0".encode("ascii")


def decode_int(payload: bytes) -> int:
    """Inverse of :func:`encode_int`."""
    return _u32(payload.rstrip(NUL).decode(_TEXT), "number")


def encode_bool(value: bool) -> bytes:
    """Payload of an IS_DOMAIN_INTRODUCED reply."""
    return b"T\0" if value else b"F\0"


def decode_bool(payload: bytes) -> bool:
    """Inverse of :func:`encode_bool`."""
    text = payload.rstrip(NUL)
    if text not in (b"T", b"F"):
        raise ProtocolError(f"expected T or F, got {payload!r}")
    return text == b"T"


def encode_text(text: str) -> bytes:
    """Payload of a GET_DOMAIN_PATH reply."""
    return text.encode(_TEXT) + NUL


def decode_text(payload: bytes) -> str:
    """Inverse of :func:`encode_text`."""
    return payload.rstrip(NUL).decode(_TEXT)


__all__ = [
    "ACK",
    "ERROR_NAMES",
    "HEADER_SIZE",
    "INVALID_OP",
    "PAYLOAD_MAX",
    "Control",
    "Decoder",
    "Directory",
    "DirectoryChunk",
    "DirectoryPart",
    "GetDomainPath",
    "GetPerms",
    "Introduce",
    "IsDomainIntroduced",
    "Mkdir",
    "Op",
    "Packet",
    "Read",
    "Release",
    "Request",
    "ResetWatches",
    "Resume",
    "Rm",
    "SetPerms",
    "SetTarget",
    "TransactionEnd",
    "TransactionStart",
    "Unwatch",
    "Watch",
    "WatchEvent",
    "Write",
    "decode_request",
    "encode",
    "encode_request",
    "request_packet",
]
