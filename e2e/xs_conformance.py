"""The same xenstore probes against the real oxenstored and Ballast's server.

Ballast ships a xenstored-compatible server for simulation and tests; this
script is how the project finds out where that server differs from the real
daemon. It sends the same requests, in the same order, once to the real
``oxenstored`` in a real dom0 (as dom0 on ``/run/xenstored/socket``, and as a
guest from inside a real PV guest through ``/dev/xen/xenbus``) and once to
``ballast xenstored`` (on its privileged socket and on a guest's domain
socket), and records what came back as *observations*: a flat mapping of
probe name to a normalised answer (``ok``, ``err:EACCES``, a permission
string, the events a watch delivered...). Two runs are compared key by key
by :func:`compare`.

Requests go through a minimal client written here (exact control over every
byte, works on sockets and on the xenbus device alike); a few probes repeat
the same operation through ``pyxs`` and Debian's ``xenstore-*`` tools, the
clients Ballast itself relies on.

It needs only the standard library and pyxs: it runs unchanged inside the
e2e images. Guest domids differ between runs, so the guest's domid is written
``G`` in every observation, and its home ``/local/domain/G``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

# xs_wire.h (Xen 4.17): message header and types.
HEADER = struct.Struct("<IIII")
PAYLOAD_MAX = 4096  # XENSTORE_PAYLOAD_MAX
OP_DIRECTORY = 1
OP_READ = 2
OP_GET_PERMS = 3
OP_WATCH = 4
OP_UNWATCH = 5
OP_TRANSACTION_START = 6
OP_TRANSACTION_END = 7
OP_INTRODUCE = 8
OP_RELEASE = 9
OP_GET_DOMAIN_PATH = 10
OP_WRITE = 11
OP_MKDIR = 12
OP_RM = 13
OP_SET_PERMS = 14
OP_WATCH_EVENT = 15
OP_ERROR = 16
OP_IS_DOMAIN_INTRODUCED = 17
OP_RESET_WATCHES = 21
OP_DIRECTORY_PART = 22
OP_UNKNOWN = 99  # not a message type in any Xen release

# Scratch subtree of the probes, in the guest's data/ and at the root for dom0.
SCRATCH = "e2e-conf"


@dataclass
class Waits:
    """Seconds to wait for an event that should come, and to be sure one does not."""

    event_s: float = 3.0
    quiet_s: float = 1.0
    settle_s: float = 0.3
    """After the awaited events came, how long to keep listening for extra ones."""


WAITS = Waits()
# How far past a quota the probes push before giving up (C xenstored and
# oxenstored defaults: 1000 nodes, 128 or 100 watches, 10 transactions).
NODE_PROBE_MAX = 1100
WATCH_PROBE_MAX = 200
TRANSACTION_PROBE_MAX = 20
# Children of the DIRECTORY_PART probe: 100 names of 50 characters list to
# 5100 bytes, over the 4096-byte payload limit.
BIG_DIR_CHILDREN = 100
BIG_DIR_NAME_LEN = 50

Observations = dict[str, str]


class XsError(Exception):
    """The daemon answered ERROR with this errno name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Closed(Exception):
    """The daemon closed the connection (or the device refused the request)."""


class Transport(Protocol):
    """A byte pipe to xenstored."""

    def fileno(self) -> int: ...
    def write(self, data: bytes) -> None: ...
    def read(self, size: int) -> bytes: ...
    def close(self) -> None: ...


class SocketTransport:
    """A unix socket: dom0's ``/run/xenstored/socket`` or a Ballast domain socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)

    def fileno(self) -> int:
        return self.sock.fileno()

    def write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise Closed(f"send: {exc}") from exc

    def read(self, size: int) -> bytes:
        return self.sock.recv(size)

    def close(self) -> None:
        self.sock.close()


class XenbusTransport:
    """The Linux xenbus device of a guest (``/dev/xen/xenbus``)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)

    def fileno(self) -> int:
        return self.fd

    def write(self, data: bytes) -> None:
        # The kernel filters what a guest may send; a refused request fails
        # the write() itself (EINVAL) instead of reaching xenstored.
        try:
            os.write(self.fd, data)
        except OSError as exc:
            raise Closed(f"device refused: {errno.errorcode.get(exc.errno or 0, exc)}") from exc

    def read(self, size: int) -> bytes:
        return os.read(self.fd, size)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True, slots=True)
class Event:
    """One WATCH_EVENT: the path that changed and the watch's token."""

    path: str
    token: str


@dataclass
class Connection:
    """A synchronous xenstore client: one request in flight, events queued aside."""

    transport: Transport
    timeout_s: float = 10.0
    events: list[Event] = field(default_factory=list)
    _buffer: bytes = b""
    _next_req: int = 1

    def close(self) -> None:
        self.transport.close()

    def send_raw(self, data: bytes) -> None:
        self.transport.write(data)

    def request(self, op: int, payload: bytes, *, tx: int = 0) -> bytes:
        """Send one request; return the reply payload or raise XsError/Closed."""
        req = self._next_req
        self._next_req += 1
        self.transport.write(HEADER.pack(op, req, tx, len(payload)) + payload)
        deadline = time.monotonic() + self.timeout_s
        while True:
            rop, rreq, _rtx, body = self._packet(deadline)
            if rop == OP_WATCH_EVENT:
                self._queue_event(body)
                continue
            if rreq < req:
                continue  # a late reply to a request this client gave up waiting for
            if rop == OP_ERROR:
                raise XsError(body.rstrip(b"\0").decode(errors="replace"))
            if rreq != req:
                raise Closed(f"reply to request {rreq} while waiting for {req}")
            if rop != op:
                raise Closed(f"reply of type {rop} to a request of type {op}")
            return body

    def pipeline(self, requests: list[tuple[int, bytes]]) -> list[bytes | XsError]:
        """Send requests without waiting for each reply; the replies, in order.

        One message per write: the Linux xenbus device takes exactly one
        message per write() call.
        """
        if isinstance(self.transport, XenbusTransport):
            # The Linux xenbus device loses requests sent back to back (seen
            # on Linux 6.1: most of a batch answered EINVAL or never applied),
            # so through it requests go one at a time.
            return [self._one(op, payload) for op, payload in requests]
        first = self._next_req
        self._next_req += len(requests)
        for i, (op, payload) in enumerate(requests):
            self.transport.write(HEADER.pack(op, first + i, 0, len(payload)) + payload)
        replies: dict[int, bytes | XsError] = {}
        deadline = time.monotonic() + self.timeout_s + 0.05 * len(requests)
        while len(replies) < len(requests):
            rop, rreq, _rtx, body = self._packet(deadline)
            if rop == OP_WATCH_EVENT:
                self._queue_event(body)
            elif first <= rreq < first + len(requests):
                replies[rreq] = (XsError(body.rstrip(b"\0").decode(errors="replace"))
                                 if rop == OP_ERROR else body)
        return [replies[first + i] for i in range(len(requests))]

    def _one(self, op: int, payload: bytes) -> bytes | XsError:
        try:
            return self.request(op, payload)
        except XsError as exc:
            return exc

    def _queue_event(self, body: bytes) -> None:
        parts = body.split(b"\0")
        if len(parts) >= 2:
            self.events.append(Event(parts[0].decode(errors="replace"),
                                     parts[1].decode(errors="replace")))

    def _packet(self, deadline: float) -> tuple[int, int, int, bytes]:
        while True:
            if len(self._buffer) >= HEADER.size:
                op, req, tx, size = HEADER.unpack_from(self._buffer)
                if len(self._buffer) >= HEADER.size + size:
                    body = self._buffer[HEADER.size:HEADER.size + size]
                    self._buffer = self._buffer[HEADER.size + size:]
                    return op, req, tx, body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no reply from xenstored")
            ready, _, _ = select.select([self.transport], [], [], remaining)
            if not ready:
                continue
            try:
                chunk = self.transport.read(65536)
            except OSError as exc:
                raise Closed(f"read: {exc}") from exc
            if not chunk:
                raise Closed("connection closed")
            self._buffer += chunk

    def pump(self, wait_s: float) -> None:
        """Collect the events that arrive within ``wait_s`` (and those already buffered)."""
        deadline = time.monotonic() + wait_s
        self._drain_events()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            ready, _, _ = select.select([self.transport], [], [], remaining)
            if not ready:
                return
            try:
                chunk = self.transport.read(65536)
            except OSError as exc:
                raise Closed(f"read: {exc}") from exc
            if not chunk:
                raise Closed("connection closed")
            self._buffer += chunk
            self._drain_events()

    def _drain_events(self) -> None:
        """Queue the complete events at the front of the buffer (no request is waiting)."""
        while len(self._buffer) >= HEADER.size:
            op, _req, _tx, size = HEADER.unpack_from(self._buffer)
            if len(self._buffer) < HEADER.size + size:
                return
            body = self._buffer[HEADER.size:HEADER.size + size]
            self._buffer = self._buffer[HEADER.size + size:]
            if op == OP_WATCH_EVENT:
                self._queue_event(body)

    def take_events(self, token: str, *, wait_s: float, want: int = 1) -> list[str]:
        """Paths of the events for ``token``, waiting until ``want`` came or ``wait_s`` passed."""
        deadline = time.monotonic() + wait_s
        while True:
            got = [e.path for e in self.events if e.token == token]
            remaining = deadline - time.monotonic()
            if len(got) >= want or remaining <= 0:
                if got:
                    self.pump(WAITS.settle_s)  # duplicates and stragglers count too
                got = [e.path for e in self.events if e.token == token]
                self.events = [e for e in self.events if e.token != token]
                return got
            self.pump(min(remaining, 0.2))

    # --- operations --------------------------------------------------------

    def read(self, path: str, *, tx: int = 0) -> bytes:
        return self.request(OP_READ, _z(path), tx=tx)

    def write(self, path: str, value: bytes | str, *, tx: int = 0) -> None:
        data = value.encode() if isinstance(value, str) else value
        self.request(OP_WRITE, path.encode() + b"\0" + data, tx=tx)

    def mkdir(self, path: str) -> None:
        self.request(OP_MKDIR, _z(path))

    def rm(self, path: str, *, tx: int = 0) -> None:
        self.request(OP_RM, _z(path), tx=tx)

    def directory(self, path: str) -> list[str]:
        return _names(self.request(OP_DIRECTORY, _z(path)))

    def get_perms(self, path: str) -> list[str]:
        return _names(self.request(OP_GET_PERMS, _z(path)))

    def set_perms(self, path: str, perms: list[str]) -> None:
        self.request(OP_SET_PERMS, _z(path) + b"".join(_z(p) for p in perms))

    def watch(self, path: str, token: str) -> None:
        self.request(OP_WATCH, _z(path) + _z(token))

    def unwatch(self, path: str, token: str) -> None:
        self.request(OP_UNWATCH, _z(path) + _z(token))

    def start(self) -> int:
        return int(self.request(OP_TRANSACTION_START, b"\0").rstrip(b"\0"))

    def end(self, tx: int, *, commit: bool) -> None:
        self.request(OP_TRANSACTION_END, b"T\0" if commit else b"F\0", tx=tx)

    def domain_path(self, domid: int) -> str:
        return self.request(OP_GET_DOMAIN_PATH, _z(str(domid))).rstrip(b"\0").decode()

    def is_introduced(self, domid: int) -> str:
        return self.request(OP_IS_DOMAIN_INTRODUCED, _z(str(domid))).rstrip(b"\0").decode()

    def directory_part(self, path: str, offset: int) -> tuple[str, list[str], bool]:
        """One DIRECTORY_PART reply: generation, names, and whether it was the last part."""
        body = self.request(OP_DIRECTORY_PART, _z(path) + _z(str(offset)))
        gen, _, rest = body.partition(b"\0")
        last = rest == b"\0" or rest.endswith(b"\0\0") or rest == b""
        names = [n.decode() for n in rest.split(b"\0") if n]
        return gen.decode(), names, last


def _z(text: str) -> bytes:
    return text.encode() + b"\0"


def _names(body: bytes) -> list[str]:
    return [n.decode(errors="replace") for n in body.split(b"\0") if n]


# --- recording ---------------------------------------------------------------


@dataclass
class Recorder:
    """Collects observations, normalising the guest's domid to ``G``."""

    guest_domid: int | None = None
    observations: Observations = field(default_factory=dict)

    def norm(self, text: str) -> str:
        if self.guest_domid is None:
            return text
        g = str(self.guest_domid)
        text = re.sub(rf"/local/domain/{g}(?=/|$)", "/local/domain/G", text)
        text = re.sub(rf"(?:^|(?<=[=,]))([nrwb]){g}(?=$|[ ,])", r"\1G", text)
        return text

    def put(self, key: str, value: str) -> None:
        self.observations[key] = value if value.isdigit() else self.norm(value)

    def probe(self, key: str, action: Callable[[], object]) -> None:
        """Record ``ok``/``ok:<value>`` or ``err:<ERRNO>`` for one request."""
        self.put(key, self.outcome(action))

    def outcome(self, action: Callable[[], object]) -> str:
        try:
            value = action()
        except XsError as exc:
            return f"err:{exc.name}"
        except Closed as exc:
            return f"closed:{exc}" if "refused" in str(exc) else "closed"
        except TimeoutError:
            return "timeout"
        if value is None:
            return "ok"
        if isinstance(value, bytes):
            value = value.rstrip(b"\0").decode(errors="replace")
        if isinstance(value, list):
            return "ok:" + ",".join(self.norm(str(v)) for v in value)
        return f"ok:{self.norm(str(value))}"

    def perms(self, key: str, conn: Connection, path: str) -> None:
        self.probe(key, lambda: conn.get_perms(path))

    def events(self, key: str, paths: list[str]) -> None:
        self.put(key, "|".join(sorted(self.norm(p) for p in paths)) or "none")


SECTION_SECONDS: dict[str, float] = {}


def _guarded(rec: Recorder, section: str, body: Callable[[], None]) -> None:
    """Run one section of probes; a crash is itself an observation, the rest go on."""
    started = time.monotonic()
    try:
        body()
    except (XsError, Closed, TimeoutError, OSError, ValueError) as exc:
        rec.put(f"{section}.crashed", f"{type(exc).__name__}:{exc}")
    SECTION_SECONDS[section] = round(time.monotonic() - started, 2)
    if PROGRESS:
        print(f"E2E-XS-SECTION {section} {SECTION_SECONDS[section]} s", flush=True)


# Print each section's time as it completes (inside the VMs, for the console).
PROGRESS = False


# --- the probes a guest runs ---------------------------------------------------


def guest_probes(conn: Connection, *, domid: int, tools_env: Mapping[str, str] | None,
                 pyxs_connect: Callable[[], object] | None) -> Observations:
    """Everything a guest can find out about its own view of xenstore."""
    rec = Recorder(guest_domid=domid)
    home = f"/local/domain/{domid}"
    base = f"{home}/data/{SCRATCH}"
    with _suppress():
        conn.rm(base)

    def layout() -> None:
        rec.probe("guest.read_rel_domid_is_self",
                  lambda: conn.read("domid") == str(domid).encode())
        rec.probe("guest.home_children", lambda: sorted(
            n for n in conn.directory(home) if n in ("memory", "data", "domid", "name")))
        for rel in ("", "/memory", "/memory/target", "/memory/static-max", "/data", "/domid"):
            rec.perms(f"guest.perms.home{rel}", conn, home + rel)
        rec.probe("guest.read_target_is_int",
                  lambda: "int" if conn.read(f"{home}/memory/target").isdigit() else "other")

    def memory_is_read_only() -> None:
        rec.probe("guest.write_memory_target", lambda: conn.write(f"{home}/memory/target", "1"))
        rec.probe("guest.write_memory_new", lambda: conn.write(f"{home}/memory/e2e", "1"))
        rec.probe("guest.mkdir_memory_sub", lambda: conn.mkdir(f"{home}/memory/e2e"))
        rec.probe("guest.rm_memory_target", lambda: conn.rm(f"{home}/memory/target"))
        rec.probe("guest.set_perms_memory_target",
                  lambda: conn.set_perms(f"{home}/memory/target", [f"b{domid}"]))
        rec.probe("guest.write_home_new", lambda: conn.write(f"{home}/e2e", "1"))
        rec.probe("guest.rm_home_domid", lambda: conn.rm(f"{home}/domid"))

    def data_is_writable() -> None:
        rec.probe("guest.write_data", lambda: conn.write(f"{base}/x", "1"))
        rec.perms("guest.perms.created_node", conn, f"{base}/x")
        rec.perms("guest.perms.created_parent", conn, base)
        rec.probe("guest.write_rel", lambda: conn.write(f"data/{SCRATCH}/rel", "r"))
        rec.probe("guest.read_rel_back", lambda: conn.read(f"{base}/rel"))
        rec.probe("guest.read_missing", lambda: conn.read(f"{base}/missing"))
        rec.probe("guest.rm_missing_leaf", lambda: conn.rm(f"{base}/missing"))
        rec.probe("guest.rm_missing_parent", lambda: conn.rm(f"{base}/nope/missing"))
        rec.probe("guest.mkdir_existing", lambda: conn.mkdir(base))
        rec.probe("guest.write_empty_value", lambda: conn.write(f"{base}/empty", b""))
        rec.probe("guest.read_empty_value", lambda: conn.read(f"{base}/empty"))
        rec.probe("guest.set_perms_own_node",
                  lambda: conn.set_perms(f"{base}/x", [f"n{domid}", "r0"]))
        rec.perms("guest.perms.after_set", conn, f"{base}/x")
        rec.probe("guest.set_perms_give_away",
                  lambda: conn.set_perms(f"{base}/x", ["n0"]))
        rec.probe("guest.write_after_give_away", lambda: conn.write(f"{base}/x", "2"))

    def foreign() -> None:
        # Fixtures laid by the dom0 probes before this guest was introduced.
        rec.probe("guest.read_foreign_private", lambda: conn.read(f"/{SCRATCH}/private"))
        rec.probe("guest.read_foreign_public", lambda: conn.read(f"/{SCRATCH}/public"))
        rec.probe("guest.write_foreign_public", lambda: conn.write(f"/{SCRATCH}/public", "x"))
        rec.probe("guest.write_foreign_new", lambda: conn.write(f"/{SCRATCH}/by-guest", "x"))
        rec.probe("guest.directory_foreign", lambda: sorted(conn.directory(f"/{SCRATCH}")))
        rec.probe("guest.get_perms_foreign_private",
                  lambda: conn.get_perms(f"/{SCRATCH}/private"))
        rec.probe("guest.read_dom0_home", lambda: conn.read("/local/domain/0"))
        rec.probe("guest.write_dom0_home", lambda: conn.write("/local/domain/0/e2e", "x"))
        rec.probe("guest.directory_local_domain_has_self",
                  lambda: str(domid) in conn.directory("/local/domain"))
        rec.probe("guest.write_root", lambda: conn.write("/e2e-guest", "x"))

    def paths() -> None:
        rec.probe("guest.path_space", lambda: conn.write(f"{base}/a b", "x"))
        rec.probe("guest.path_double_slash", lambda: conn.write(f"{base}//a", "x"))
        rec.probe("guest.path_trailing_slash", lambda: conn.write(f"{base}/a/", "x"))
        rec.probe("guest.path_empty", lambda: conn.read(""))
        rec.probe("guest.path_rel_1000", lambda: conn.write(f"data/{SCRATCH}/" + "p" * 990, "x"))
        rec.probe("guest.path_rel_2100", lambda: conn.write(f"data/{SCRATCH}/" + "p" * 2090, "x"))
        rec.probe("guest.path_abs_long",
                  lambda: conn.write(f"{base}/" + "/".join(["q" * 100] * 12), "x"))
        with _suppress():
            conn.rm(f"{base}/" + "q" * 100)

    def watches() -> None:
        w = f"{base}/w"
        conn.watch(w, "abs")
        rec.events("guest.watch.initial", conn.take_events("abs", wait_s=WAITS.event_s))
        conn.write(f"{w}/child", "1")
        rec.events("guest.watch.child_write", conn.take_events("abs", wait_s=WAITS.event_s))
        conn.write(f"{base}/wx", "1")
        rec.events("guest.watch.sibling_prefix",
                   conn.take_events("abs", wait_s=WAITS.quiet_s))
        conn.rm(w)
        rec.events("guest.watch.rm_subtree",
                   conn.take_events("abs", wait_s=2 * WAITS.quiet_s, want=99))
        conn.unwatch(w, "abs")
        conn.write(f"{w}/after", "1")
        rec.events("guest.watch.after_unwatch", conn.take_events("abs", wait_s=WAITS.quiet_s))

        conn.watch(f"data/{SCRATCH}/r", "rel")
        rec.events("guest.watch.rel_initial", conn.take_events("rel", wait_s=WAITS.event_s))
        conn.write(f"{base}/r", "1")
        rec.events("guest.watch.rel_write", conn.take_events("rel", wait_s=WAITS.event_s))
        conn.unwatch(f"data/{SCRATCH}/r", "rel")

        rec.probe("guest.watch.foreign_private", lambda: conn.watch(f"/{SCRATCH}/private", "fp"))
        rec.events("guest.watch.foreign_private_initial",
                   conn.take_events("fp", wait_s=WAITS.event_s))
        rec.probe("guest.watch.memory_target", lambda: conn.watch(f"{home}/memory/target", "mt"))
        rec.events("guest.watch.memory_target_initial",
                   conn.take_events("mt", wait_s=WAITS.event_s))
        for special, tok in (("@introduceDomain", "gi"), ("@releaseDomain", "gr")):
            rec.probe(f"guest.watch.{special}", functools.partial(conn.watch, special, tok))
            rec.events(f"guest.watch.{special}_initial",
                       conn.take_events(tok, wait_s=WAITS.event_s))
            with _suppress():
                conn.unwatch(special, tok)
        for path, tok in ((f"/{SCRATCH}/private", "fp"), (f"{home}/memory/target", "mt")):
            with _suppress():
                conn.unwatch(path, tok)
        rec.probe("guest.unwatch_unknown", lambda: conn.unwatch(f"{base}/never", "nt"))
        rec.probe("guest.watch_bad_path", lambda: conn.watch(f"{base}/a b", "bad"))

    def transactions() -> None:
        t = f"{base}/t"
        conn.write(t, "v0")
        tx = conn.start()
        conn.read(t, tx=tx)
        conn.write(t, "v1")
        rec.probe("guest.tx.read_sees_snapshot", lambda: conn.read(t, tx=tx))
        conn.write(t, "v2", tx=tx)
        rec.probe("guest.tx.conflict_commit", lambda: conn.end(tx, commit=True))
        rec.probe("guest.tx.after_conflict", lambda: conn.read(t))
        tx = conn.start()
        conn.write(t, "v3", tx=tx)
        rec.probe("guest.tx.outside_before_commit", lambda: conn.read(t))
        rec.probe("guest.tx.clean_commit", lambda: conn.end(tx, commit=True))
        rec.probe("guest.tx.after_commit", lambda: conn.read(t))
        tx = conn.start()
        conn.write(t, "v4", tx=tx)
        rec.probe("guest.tx.abort", lambda: conn.end(tx, commit=False))
        rec.probe("guest.tx.after_abort", lambda: conn.read(t))
        rec.probe("guest.tx.write_foreign_in_tx", lambda: _in_tx(
            conn, lambda tx: conn.write(f"{home}/memory/target", "1", tx=tx)))

    def quotas() -> None:
        q = f"{base}/q"
        rec.probe("guest.quota.value_2048", lambda: conn.write(f"{base}/v", "v" * 2048))
        rec.probe("guest.quota.value_2049", lambda: conn.write(f"{base}/v", "v" * 2049))
        rec.probe("guest.quota.value_4000", lambda: conn.write(f"{base}/v", "v" * 4000))
        created, error = _until_refused(
            conn, [(OP_WRITE, f"{q}/n{i}\0".encode()) for i in range(NODE_PROBE_MAX)])
        rec.put("guest.quota.nodes_error", error)
        rec.put("guest.quota.nodes_created", str(created))
        rec.probe("guest.quota.last_node_readable",
                  lambda: conn.read(f"{q}/n{created - 1}") == b"" if created else "none")
        with _suppress():
            conn.rm(q)
        # One at a time: a guest's WATCH is handled by its kernel's xenbus
        # device, which registers the watch with xenstored itself.
        registered, error = 0, "none"
        for i in range(WATCH_PROBE_MAX):
            try:
                conn.watch(f"{base}/wq/{i}", f"wq{i}")
            except XsError as exc:
                error = exc.name
                break
            except Closed as exc:
                error = f"closed:{exc}"
                break
            registered += 1
        conn.pump(WAITS.quiet_s)
        conn.events.clear()
        rec.put("guest.quota.watches_error", error)
        rec.put("guest.quota.watches_registered", str(registered))
        for i in range(registered):
            with _suppress():
                conn.unwatch(f"{base}/wq/{i}", f"wq{i}")
        conn.events.clear()
        opened: list[int] = []
        error = "none"
        for _ in range(TRANSACTION_PROBE_MAX):
            try:
                opened.append(conn.start())
            except XsError as exc:
                error = exc.name
                break
        rec.put("guest.quota.transactions_error", error)
        rec.put("guest.quota.transactions_opened", str(len(opened)))
        for tx in opened:
            with _suppress():
                conn.end(tx, commit=False)

    def big_directory() -> None:
        big = f"{base}/big"
        names = [f"{i:03d}".ljust(BIG_DIR_NAME_LEN, "x") for i in range(BIG_DIR_CHILDREN)]
        rec.put("guest.big.create", _summary(
            conn.pipeline([(OP_WRITE, f"{big}/{n}\0".encode()) for n in names])))
        rec.probe("guest.big.directory", lambda: len(conn.directory(big)))
        rec.probe("guest.big.directory_part", lambda: _all_parts(conn, big))
        if tools_env is not None:
            rec.put("guest.big.xenstore_list", _tool_count(["xenstore-list", big], tools_env))
        with _suppress():
            conn.rm(big)

    def tools() -> None:
        if tools_env is None:
            return
        rec.put("guest.tool.write", _tool(["xenstore-write", f"{base}/tool", "t"], tools_env))
        rec.put("guest.tool.read", _tool(["xenstore-read", f"{base}/tool"], tools_env))
        rec.put("guest.tool.read_rel", _tool(["xenstore-read", f"data/{SCRATCH}/tool"], tools_env))
        rec.put("guest.tool.write_target",
                _tool(["xenstore-write", f"{home}/memory/target", "1"], tools_env))
        rec.put("guest.tool.chmod", _tool(["xenstore-chmod", f"{base}/tool", f"n{domid}", "r0"],
                                          tools_env))
        rec.put("guest.tool.watch_initial",
                rec.norm(_tool(["xenstore-watch", "-n", "1", f"{base}/tool"], tools_env)))

    def with_pyxs() -> None:
        if pyxs_connect is None:
            return
        rec.put("guest.pyxs", _pyxs_probe(pyxs_connect, home, base))

    for section, body in (("layout", layout), ("memory", memory_is_read_only),
                          ("data", data_is_writable), ("foreign", foreign), ("paths", paths),
                          ("watches", watches), ("tx", transactions), ("quota", quotas),
                          ("big", big_directory), ("tools", tools), ("pyxs", with_pyxs)):
        _guarded(rec, f"guest.{section}", body)
    with _suppress():
        conn.rm(base)
    return rec.observations


# --- the probes dom0 runs ------------------------------------------------------


class Lifecycle(Protocol):
    """How a test domain comes and goes on the daemon under test."""

    def introduce(self) -> int:
        """Create (real) or INTRODUCE (Ballast) a guest; return its domid."""
        ...

    def guest_observations(self, domid: int) -> Observations:
        """Run :func:`guest_probes` inside that guest and return what it saw."""
        ...

    def release(self, domid: int) -> None:
        """Destroy (real) or RELEASE (Ballast) the guest."""
        ...


def dom0_probes(connect: Callable[[], Connection], lifecycle: Lifecycle, *,
                tools_env: Mapping[str, str] | None,
                pyxs_connect: Callable[[], object] | None,
                after_introduce: Callable[[], None] | None = None) -> Observations:
    """Privileged probes, the domain lifecycle, and the guest's own probes.

    The guest is introduced first and its own probes are collected last, so
    on real Xen it boots while dom0 probes. ``after_introduce`` runs once the
    introduction was seen (the e2e runner starts its other guests there).
    """
    conn = connect()
    rec = Recorder()
    fixtures = f"/{SCRATCH}"
    root = f"/{SCRATCH}-dom0"  # dom0's own probes, apart from what the guest lists
    for path in (fixtures, root):
        with _suppress():
            conn.rm(path)
    # Fixtures the guest probes read: a private and a public node.
    conn.write(f"{fixtures}/private", "secret")
    conn.set_perms(f"{fixtures}/private", ["n0"])
    conn.write(f"{fixtures}/public", "hello")
    conn.set_perms(f"{fixtures}/public", ["r0"])
    conn.set_perms(fixtures, ["r0"])
    conn.write(f"{root}/public", "hello")
    conn.set_perms(f"{root}/public", ["r0"])

    # The guest comes first: on real Xen it boots while dom0 probes.
    watcher = connect()
    watcher.watch("@introduceDomain", "intro")
    rec.events("dom0.intro.initial", watcher.take_events("intro", wait_s=WAITS.event_s))
    watcher.watch("@releaseDomain", "release")
    rec.events("dom0.release.initial", watcher.take_events("release", wait_s=WAITS.event_s))
    domid = lifecycle.introduce()
    rec.guest_domid = domid
    rec.events("dom0.intro.on_introduce", watcher.take_events("intro", wait_s=30.0))
    if after_introduce is not None:
        after_introduce()
    home = f"/local/domain/{domid}"
    for rel in ("", "/memory", "/memory/target", "/memory/static-max", "/data", "/domid"):
        rec.perms(f"dom0.perms.guest_home{rel}", conn, home + rel)
    rec.probe("dom0.guest_domain_path", lambda: conn.domain_path(domid))
    rec.probe("dom0.guest_is_introduced", lambda: conn.is_introduced(domid))
    # A narrow watch: a dom0 connection that does not read while the guest
    # writes a thousand nodes would meet oxenstored's pending-event limit.
    watcher.watch(f"{home}/data/{SCRATCH}/x", "gdata")
    watcher.take_events("gdata", wait_s=WAITS.event_s)

    def basics() -> None:
        rec.probe("dom0.root_has_local", lambda: "local" in conn.directory("/"))
        rec.perms("dom0.perms.root", conn, "/")
        rec.perms("dom0.perms.local_domain", conn, "/local/domain")
        rec.perms("dom0.perms.created_at_root", conn, f"{fixtures}/private")
        rec.probe("dom0.read_missing", lambda: conn.read(f"{root}/missing"))
        rec.probe("dom0.rm_missing_leaf", lambda: conn.rm(f"{root}/missing"))
        rec.probe("dom0.rm_missing_parent", lambda: conn.rm(f"{root}/nope/missing"))
        rec.probe("dom0.mkdir_existing", lambda: conn.mkdir(root))
        rec.probe("dom0.path_space", lambda: conn.write(f"{root}/a b", "x"))
        rec.probe("dom0.path_double_slash", lambda: conn.write(f"{root}//a", "x"))
        rec.probe("dom0.path_trailing_slash", lambda: conn.write(f"{root}/a/", "x"))
        rec.probe("dom0.path_relative", lambda: conn.write(f"{SCRATCH}/rel", "x"))
        rec.probe("dom0.path_relative_read", lambda: conn.read(f"/local/domain/0/{SCRATCH}/rel"))
        with _suppress():
            conn.rm(f"/local/domain/0/{SCRATCH}")
        rec.probe("dom0.set_perms_bad", lambda: conn.set_perms(f"{root}/public", ["x5"]))
        rec.probe("dom0.set_perms_empty", lambda: conn.set_perms(f"{root}/public", []))
        rec.probe("dom0.write_no_separator",
                  lambda: conn.request(OP_WRITE, f"{root}/nosep".encode()))
        rec.probe("dom0.read_bad_tx", lambda: conn.read(f"{root}/public", tx=424242))
        rec.probe("dom0.end_bad_tx", lambda: conn.end(424242, commit=True))
        rec.probe("dom0.domain_path_7", lambda: conn.domain_path(7))
        rec.probe("dom0.is_introduced_0", lambda: conn.is_introduced(0))
        rec.probe("dom0.is_introduced_999", lambda: conn.is_introduced(999))
        rec.probe("dom0.value_3000", lambda: conn.write(f"{root}/v", "v" * 3000))
        rec.probe("dom0.value_4000", lambda: conn.write(f"{root}/v", "v" * 4000))
        created, error = _until_refused(
            conn, [(OP_WRITE, f"{root}/q/n{i}\0".encode()) for i in range(NODE_PROBE_MAX)])
        rec.put("dom0.nodes_error", error)
        rec.put("dom0.nodes_created", str(created))
        conn.rm(f"{root}/q")

    def watches() -> None:
        w = f"{root}/w"
        conn.watch(w, "d")
        rec.events("dom0.watch.initial", conn.take_events("d", wait_s=WAITS.event_s))
        rec.probe("dom0.watch.duplicate", lambda: conn.watch(w, "d"))
        rec.probe("dom0.watch.same_path_other_token", lambda: conn.watch(w, "d2"))
        conn.take_events("d2", wait_s=WAITS.event_s)
        conn.unwatch(w, "d2")
        conn.write(w, "1")
        rec.events("dom0.watch.write", conn.take_events("d", wait_s=WAITS.event_s))
        conn.write(w, "1")
        rec.events("dom0.watch.same_value_write", conn.take_events("d", wait_s=WAITS.event_s))
        conn.write(f"{w}/a/b", "1")
        rec.events("dom0.watch.deep_create",
                   conn.take_events("d", wait_s=2 * WAITS.quiet_s, want=99))
        conn.set_perms(f"{w}/a", ["n0"])
        rec.events("dom0.watch.set_perms", conn.take_events("d", wait_s=WAITS.event_s))
        conn.mkdir(f"{w}/m")
        rec.events("dom0.watch.mkdir", conn.take_events("d", wait_s=WAITS.event_s))
        conn.rm(f"{w}/a")
        rec.events("dom0.watch.rm_subtree",
                   conn.take_events("d", wait_s=2 * WAITS.quiet_s, want=99))
        tx = conn.start()
        conn.write(f"{w}/t", "1", tx=tx)
        rec.events("dom0.watch.tx_before_commit", conn.take_events("d", wait_s=WAITS.quiet_s))
        conn.end(tx, commit=True)
        rec.events("dom0.watch.tx_after_commit", conn.take_events("d", wait_s=WAITS.event_s))
        conn.watch(SCRATCH, "rel")
        rec.events("dom0.watch.rel_initial", conn.take_events("rel", wait_s=WAITS.event_s))
        conn.unwatch(SCRATCH, "rel")
        rec.probe("dom0.unwatch_unknown", lambda: conn.unwatch(f"{root}/never", "n"))
        rec.probe("dom0.unwatch_wrong_token", lambda: conn.unwatch(w, "other"))
        rec.probe("dom0.watch_unknown_special", lambda: conn.watch("@e2eNothing", "s"))
        conn.take_events("s", wait_s=WAITS.quiet_s)
        rec.probe("dom0.reset_watches", lambda: conn.request(OP_RESET_WATCHES, b""))
        conn.write(w, "2")
        rec.events("dom0.watch.after_reset", conn.take_events("d", wait_s=WAITS.quiet_s))
        with _suppress():
            conn.unwatch(w, "d")

    def transactions() -> None:
        t = f"{root}/t"
        conn.write(t, "v0")
        tx = conn.start()
        conn.read(t, tx=tx)
        conn.write(t, "v1")
        rec.probe("dom0.tx.read_sees_snapshot", lambda: conn.read(t, tx=tx))
        rec.probe("dom0.tx.conflict_commit", lambda: conn.end(tx, commit=True))
        tx = conn.start()
        conn.write(f"{root}/t-other", "1")
        conn.write(t, "v5", tx=tx)
        rec.probe("dom0.tx.unrelated_change_commit", lambda: conn.end(tx, commit=True))
        tx = conn.start()
        rec.probe("dom0.tx.read_missing_in_tx", lambda: conn.read(f"{root}/t-missing", tx=tx))
        conn.write(f"{root}/t-missing", "now")
        conn.write(t, "v6", tx=tx)
        rec.probe("dom0.tx.created_after_missing_read", lambda: conn.end(tx, commit=True))
        tx = conn.start()
        rec.probe("dom0.tx.directory_in_tx",
                  lambda: "t" in _names(conn.request(OP_DIRECTORY, _z(root), tx=tx)))
        conn.end(tx, commit=False)
        opened: list[int] = []
        error = "none"
        for _ in range(TRANSACTION_PROBE_MAX):
            try:
                opened.append(conn.start())
            except XsError as exc:
                error = exc.name
                break
        rec.put("dom0.tx.quota_error", error)
        rec.put("dom0.tx.quota_opened", str(len(opened)))
        for tx in opened:
            with _suppress():
                conn.end(tx, commit=False)

    def big_directory() -> None:
        big = f"{root}/big"
        names = [f"{i:03d}".ljust(BIG_DIR_NAME_LEN, "x") for i in range(BIG_DIR_CHILDREN)]
        rec.put("dom0.big.create", _summary(
            conn.pipeline([(OP_WRITE, f"{big}/{n}\0".encode()) for n in names])))
        rec.probe("dom0.big.directory", lambda: len(conn.directory(big)))
        rec.probe("dom0.big.directory_part", lambda: _all_parts(conn, big))

        def generations() -> str:
            first = conn.directory_part(big, 0)[0]
            again = conn.directory_part(big, 0)[0]
            conn.write(f"{big}/zz-new", "")
            added = conn.directory_part(big, 0)[0]
            conn.write(f"{big}/zz-new", "v")
            child_written = conn.directory_part(big, 0)[0]
            return (f"int={first.isdigit()} stable={first == again} "
                    f"changes_on_add={added != first} "
                    f"changes_on_child_write={child_written != added}")

        rec.probe("dom0.big.part_generation", generations)
        rec.probe("dom0.big.part_offset_past_end",
                  lambda: conn.directory_part(big, 100000)[1])
        conn.pipeline([(OP_WRITE, f"{root}/small/{n}\0".encode()) for n in ("a", "b", "c")])
        rec.probe("dom0.big.part_small_dir", lambda: _all_parts(conn, f"{root}/small"))
        if tools_env is not None:
            rec.put("dom0.big.xenstore_list", _tool_count(["xenstore-list", big], tools_env))
            rec.put("dom0.big.xenstore_ls_lines", _tool_count(["xenstore-ls", big], tools_env))
        conn.rm(big)

    def wire() -> None:
        rec.probe("dom0.wire.unknown_type", lambda: conn.request(OP_UNKNOWN, b"x\0"))
        rec.probe("dom0.wire.after_unknown_type", lambda: conn.read(f"{root}/public"))
        for key, size in (("dom0.wire.oversized", PAYLOAD_MAX + 1),):
            extra = connect()
            extra.timeout_s = 3.0  # a daemon that ignores the request would cost the full wait
            try:
                payload = f"{root}/max\0".encode().ljust(size, b"m")
                rec.probe(key, functools.partial(extra.request, OP_WRITE, payload))
                rec.probe(f"{key}_then_read",
                          functools.partial(extra.request, OP_READ, _z(f"{root}/public")))
            finally:
                extra.close()

    def tools() -> None:
        if tools_env is None:
            return
        rec.put("dom0.tool.write", _tool(["xenstore-write", f"{root}/tool", "t"], tools_env))
        rec.put("dom0.tool.read", _tool(["xenstore-read", f"{root}/tool"], tools_env))
        rec.put("dom0.tool.chmod", _tool(["xenstore-chmod", f"{root}/tool", "n0", "r5"],
                                         tools_env))
        rec.put("dom0.tool.ls_perms", _tool(["xenstore-ls", "-p", root], tools_env,
                                            lines=lambda ls: [x for x in ls if "tool" in x]))
        rec.put("dom0.tool.exists_missing", _tool(["xenstore-exists", f"{root}/nope"], tools_env))
        rec.put("dom0.tool.rm", _tool(["xenstore-rm", f"{root}/tool"], tools_env))
        rec.put("dom0.tool.watch_initial",
                _tool(["xenstore-watch", "-n", "1", f"{root}/public"], tools_env))

    def with_pyxs() -> None:
        if pyxs_connect is None:
            return
        rec.put("dom0.pyxs", _pyxs_probe(pyxs_connect, "/local/domain/0", root))

    for section, body in (("basics", basics), ("watches", watches), ("tx", transactions),
                          ("big", big_directory), ("wire", wire), ("tools", tools),
                          ("pyxs", with_pyxs)):
        _guarded(rec, f"dom0.{section}", body)

    guest: Observations = {}

    def end_of_life() -> None:
        guest.update(lifecycle.guest_observations(domid))
        rec.put("dom0.guest_writes_seen_by_dom0_watch",
                "yes" if watcher.take_events("gdata", wait_s=WAITS.quiet_s) else "no")
        with _suppress():
            watcher.unwatch(f"{home}/data/{SCRATCH}/x", "gdata")
        lifecycle.release(domid)
        rec.events("dom0.release.on_release", watcher.take_events("release", wait_s=30.0))
        rec.probe("dom0.released_is_introduced", lambda: conn.is_introduced(domid))

    _guarded(rec, "dom0.lifecycle", end_of_life)
    watcher.close()
    for path in (fixtures, root):
        with _suppress():
            conn.rm(path)
    conn.close()
    return {**rec.observations, **guest}


def _summary(replies: list[bytes | XsError]) -> str:
    """``100 ok`` or ``13 ok, 87 EQUOTA``: the outcome of a pipelined batch."""
    counts: dict[str, int] = {}
    for reply in replies:
        name = reply.name if isinstance(reply, XsError) else "ok"
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))


def _until_refused(conn: Connection, requests: list[tuple[int, bytes]],
                   batch: int = 100) -> tuple[int, str]:
    """How many requests succeed before the first refusal, and its errno name."""
    done = 0
    for start in range(0, len(requests), batch):
        for reply in conn.pipeline(requests[start:start + batch]):
            if isinstance(reply, XsError):
                return done, reply.name
            done += 1
    return done, "none"


def _in_tx(conn: Connection, action: Callable[[int], object]) -> object:
    tx = conn.start()
    try:
        action(tx)
    finally:
        with _suppress():
            conn.end(tx, commit=False)
    return None


def _all_parts(conn: Connection, path: str) -> str:
    names: list[str] = []
    gens: set[str] = set()
    for _ in range(50):
        gen, part, last = conn.directory_part(path, sum(len(n) + 1 for n in names))
        gens.add(gen)
        names.extend(part)
        if last or not part:
            break
    return f"{len(names)} names in {len(gens)} generation(s)"


def _suppress() -> contextlib.suppress:
    """Ignore a failed clean-up request."""
    return contextlib.suppress(XsError, Closed, TimeoutError)


def _tool(argv: list[str], env: Mapping[str, str],
          lines: Callable[[list[str]], list[str]] | None = None) -> str:
    """Run one xenstore-* tool; its exit status and output, one line."""
    try:
        done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not run: {type(exc).__name__}"
    out = done.stdout.strip().splitlines()
    if lines is not None:
        out = lines(out)
    err = done.stderr.strip().splitlines()
    text = f"rc={done.returncode}"
    if out:
        text += " out=" + " / ".join(out)
    if err and done.returncode != 0:
        text += " err=" + err[-1]
    return text


def _tool_count(argv: list[str], env: Mapping[str, str]) -> str:
    try:
        done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not run: {type(exc).__name__}"
    if done.returncode != 0:
        return f"rc={done.returncode} err={done.stderr.strip().splitlines()[-1:]}"
    return f"{len(done.stdout.splitlines())} lines"


def _pyxs_probe(connect: Callable[[], object], home: str, base: str) -> str:
    """Write, read, list, a conflicting commit and a missing read, through pyxs."""
    from pyxs.exceptions import PyXSError

    def name(exc: PyXSError) -> str:
        code = exc.args[0] if exc.args else 0
        return errno.errorcode.get(code, str(code)) if isinstance(code, int) else str(code)

    node = f"{base}/pyxs".encode()
    steps: list[str] = []
    try:
        with connect() as a, connect() as b:  # type: ignore[attr-defined]
            a.write(node, b"1")
            steps.append("read=" + a.read(node).decode())
            steps.append("ls=" + str(b"pyxs" in a.list(base.encode())))
            steps.append("perms=" + ",".join(p.decode() for p in a.get_perms(node)))
            a.transaction()
            a.read(node)
            b.write(node, b"x")
            a.write(node, b"2")
            steps.append(f"commit_after_conflict={a.commit()}")
            try:
                a.read(f"{home}/nonexistent-e2e".encode())
                steps.append("missing=ok")
            except PyXSError as exc:
                steps.append(f"missing={name(exc)}")
            a.delete(node)
    except PyXSError as exc:
        steps.append(f"raised={name(exc)}")
    except (OSError, ValueError) as exc:
        steps.append(f"raised={type(exc).__name__}")
    return " ".join(steps)


# --- comparing two runs --------------------------------------------------------

# Observations whose exact figure depends on how many nodes, watches or
# transactions the toolstack or the guest kernel already hold in that domain,
# not on the daemon: compared within a tolerance.
APPROXIMATE = {
    "guest.quota.nodes_created": 0.05,
    "guest.quota.watches_registered": 0.1,
}


# What a real guest sees through its kernel's xenbus device rather than from
# the daemon: the device answers WATCH and UNWATCH itself and refuses some
# requests before they reach xenstored. Ballast's guests talk on a socket, so
# these are compared but reported apart, as the transport's doing.
TRANSPORT = {
    "guest.unwatch_unknown": "the Linux xenbus device answers UNWATCH itself",
    "guest.watch_bad_path": "the Linux xenbus device refuses the request (write() fails)",
}


@dataclass(frozen=True, slots=True)
class Difference:
    """One probe that answered differently."""

    key: str
    reference: str | None
    candidate: str | None

    def line(self) -> str:
        return f"{self.key}: real={self.reference!r} ballast={self.candidate!r}"


def compare(reference: Mapping[str, str], candidate: Mapping[str, str]) -> list[Difference]:
    """Every probe whose answer differs (or is missing on one side)."""
    out: list[Difference] = []
    for key in sorted(set(reference) | set(candidate)):
        if key.endswith("elapsed_s"):
            continue
        ref, cand = reference.get(key), candidate.get(key)
        if ref == cand:
            continue
        tolerance = APPROXIMATE.get(key)
        if tolerance is not None and ref is not None and cand is not None \
                and ref.isdigit() and cand.isdigit() \
                and abs(int(ref) - int(cand)) <= tolerance * max(int(ref), 1):
            continue
        out.append(Difference(key, ref, cand))
    return out


# --- running it ------------------------------------------------------------------


def _pyxs_unix(path: str) -> Callable[[], object]:
    def connect() -> object:
        from pyxs import Client

        return Client(unix_socket_path=path)
    return connect


def _pyxs_xenbus(path: str) -> Callable[[], object]:
    def connect() -> object:
        from pyxs import Client

        return Client(xen_bus_path=path)
    return connect


class GuestConsole:
    """Real Xen: the conformance guest is created with xl and prints its probes on its console."""

    def __init__(self, *, config: str, name: str, console_dir: str, timeout_s: float) -> None:
        self.config, self.name = config, name
        self.console_log = os.path.join(console_dir, f"guest-{name}.log")
        self.timeout_s = timeout_s

    def introduce(self) -> int:
        subprocess.run(["xl", "create", self.config], check=True, capture_output=True)
        out = subprocess.run(["xl", "domid", self.name], check=True, capture_output=True,
                             text=True).stdout
        return int(out.strip())

    def guest_observations(self, domid: int) -> Observations:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            found = read_marked(self.console_log)
            if found is not None:
                return found
            time.sleep(0.5)
        try:
            with open(self.console_log, errors="replace") as f:
                tail = " | ".join(f.read().splitlines()[-8:])
        except OSError:
            tail = "no console log"
        return {"guest.crashed": f"no probes on the console within {self.timeout_s:.0f} s; "
                                 f"console: {tail}"[:2000]}

    def release(self, domid: int) -> None:
        subprocess.run(["xl", "destroy", self.name], check=True, capture_output=True)


class BallastDomains:
    """Ballast's server: INTRODUCE and RELEASE on the privileged socket, probes on the domain's."""

    def __init__(self, *, directory: str, domid: int, privileged: Connection) -> None:
        self.directory, self.domid, self.privileged = directory, domid, privileged

    def socket_path(self, domid: int) -> str:
        return os.path.join(self.directory, "domain", str(domid), "socket")

    def introduce(self) -> int:
        # What xl does around its INTRODUCE (libxl__domain_make and the build):
        # the domain's name and memory keys, written by dom0. The daemon lays
        # out the home itself.
        self.privileged.request(OP_INTRODUCE, _z(str(self.domid)) + b"0\0" + b"0\0")
        deadline = time.monotonic() + 10.0
        while not os.path.exists(self.socket_path(self.domid)):
            if time.monotonic() > deadline:
                raise Closed(f"no socket for domain {self.domid} after INTRODUCE")
            time.sleep(0.05)
        home = f"/local/domain/{self.domid}"
        for key, value in (("name", "xsconf"), ("memory/static-max", "163840"),
                           ("memory/target", "163840")):
            self.privileged.write(f"{home}/{key}", value)
        return self.domid

    def guest_observations(self, domid: int) -> Observations:
        path = self.socket_path(domid)
        conn = Connection(SocketTransport(path))
        try:
            return guest_probes(conn, domid=domid, tools_env={"XENSTORED_PATH": path},
                                pyxs_connect=_pyxs_unix(path))
        finally:
            conn.close()

    def release(self, domid: int) -> None:
        self.privileged.request(OP_RELEASE, _z(str(domid)))


def probe_ballast(directory: str, *, domid: int = 41, tools: bool = True,
                  quiet_s: float = 0.3) -> Observations:
    """All probes against a running ``ballast xenstored --dir DIRECTORY``.

    A local server answers in microseconds, so waiting ``quiet_s`` for an
    event that should not come is enough.
    """
    WAITS.quiet_s = quiet_s
    WAITS.settle_s = quiet_s / 2
    sock = os.path.join(directory, "socket")
    privileged = Connection(SocketTransport(sock))
    try:
        lifecycle = BallastDomains(directory=directory, domid=domid, privileged=privileged)
        return dom0_probes(lambda: Connection(SocketTransport(sock)), lifecycle,
                           tools_env={"XENSTORED_PATH": sock} if tools else None,
                           pyxs_connect=_pyxs_unix(sock))
    finally:
        privileged.close()


MARK = "E2E-XS-OBSERVATIONS "


def read_marked(path: str) -> Observations | None:
    """The observations a guest printed on its console, once the whole line is there."""
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        line = line.strip("\r")
        start = line.find(MARK)
        if start >= 0:
            try:
                data = json.loads(line[start + len(MARK):])
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                return {str(k): str(v) for k, v in data.items()}
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    g = sub.add_parser("guest", help="probe from inside a guest and print the observations")
    g.add_argument("--xenbus", default="/dev/xen/xenbus")
    g.add_argument("--socket", help="a domain socket instead of the xenbus device")
    g.add_argument("--domid", type=int, help="this guest's domid (default: read ~/domid)")
    d = sub.add_parser("dom0-real", help="probe real xenstored in dom0 with an xl-created guest")
    d.add_argument("--socket", default="/run/xenstored/socket")
    d.add_argument("--guest-config", required=True)
    d.add_argument("--guest-name", required=True)
    d.add_argument("--console-dir", default="/var/log/xen/console")
    d.add_argument("--guest-timeout", type=float, default=240.0)
    d.add_argument("--out", required=True, help="where to write the observations (JSON)")
    b = sub.add_parser("ballast", help="probe a running `ballast xenstored --dir DIR`")
    b.add_argument("--dir", required=True)
    b.add_argument("--domid", type=int, default=41)
    b.add_argument("--out", required=True, help="where to write the observations (JSON)")
    args = parser.parse_args(argv)
    global PROGRESS
    PROGRESS = args.role != "ballast"

    if args.role == "ballast":
        started = time.monotonic()
        obs = probe_ballast(args.dir, domid=args.domid)
        with open(args.out, "w") as f:
            json.dump(obs, f, indent=1, sort_keys=True)
        print(f"E2E-XS {len(obs)} observations in {time.monotonic() - started:.1f} s "
              f"{json.dumps(SECTION_SECONDS)}")
        return 0

    if args.role == "guest":
        if args.socket:
            transport: Transport = SocketTransport(args.socket)
            tools_env: dict[str, str] = {"XENSTORED_PATH": args.socket}
            pyxs_connect = _pyxs_unix(args.socket)
        else:
            transport = XenbusTransport(args.xenbus)
            tools_env = {}
            pyxs_connect = _pyxs_xenbus(args.xenbus)
        conn = Connection(transport)
        domid = args.domid if args.domid is not None else int(conn.read("domid"))
        started = time.monotonic()
        obs = guest_probes(conn, domid=domid, tools_env=tools_env, pyxs_connect=pyxs_connect)
        obs["guest.elapsed_s"] = f"{time.monotonic() - started:.1f}"
        conn.close()
        print(MARK + json.dumps(obs, sort_keys=True), flush=True)
        return 0

    lifecycle = GuestConsole(config=args.guest_config, name=args.guest_name,
                             console_dir=args.console_dir, timeout_s=args.guest_timeout)
    started = time.monotonic()
    obs = dom0_probes(lambda: Connection(SocketTransport(args.socket)), lifecycle,
                      tools_env={"XENSTORED_PATH": args.socket},
                      pyxs_connect=_pyxs_unix(args.socket))
    obs.pop("guest.elapsed_s", None)
    with open(args.out, "w") as f:
        json.dump(obs, f, indent=1, sort_keys=True)
    print(f"E2E-XS {len(obs)} observations in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
