"""Unit tests of the e2e harness's own logic: what it compares and how it reads a run.

The harness decides PASS or FAIL from these pieces, so they are tested on
their own, fast, without booting anything: the comparison of two sets of
xenstore observations, the normalisation of guest domids, the parsing of the
console lines a VM prints, and the probes' client against a scripted peer.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from pathlib import Path

from e2e import host
from e2e import xs_conformance as xc


def test_compare_reports_each_differing_probe_and_missing_ones() -> None:
    real = {"a": "ok", "b": "err:EACCES", "c": "ok:1"}
    ours = {"a": "ok", "b": "err:EPERM", "d": "ok"}
    diffs = xc.compare(real, ours)
    assert [(d.key, d.reference, d.candidate) for d in diffs] == [
        ("b", "err:EACCES", "err:EPERM"),
        ("c", "ok:1", None),
        ("d", None, "ok"),
    ]


def test_compare_tolerates_quota_counts_within_their_margin_only() -> None:
    key = "guest.quota.nodes_created"
    assert xc.compare({key: "980"}, {key: "987"}) == []
    assert [d.key for d in xc.compare({key: "980"}, {key: "900"})] == [key]
    # Other counts are exact.
    assert [d.key for d in xc.compare({"dom0.nodes_created": "980"},
                                      {"dom0.nodes_created": "987"})] == ["dom0.nodes_created"]


def test_recorder_writes_the_guest_domid_as_g_everywhere_it_appears() -> None:
    rec = xc.Recorder(guest_domid=12)
    assert rec.norm("/local/domain/12/memory/target") == "/local/domain/G/memory/target"
    assert rec.norm("/local/domain/123/x") == "/local/domain/123/x"
    assert rec.norm("r12") == "rG"
    assert rec.norm("12") == "12"  # a bare number may be any value, not the domid
    assert rec.norm("read=1 perms=n12,r0") == "read=1 perms=nG,r0"
    assert rec.norm("perms=n120") == "perms=n120"
    rec.put("count", "12")  # numbers stay numbers
    assert rec.observations["count"] == "12"


def test_recorder_probe_turns_replies_and_errors_into_observations() -> None:
    rec = xc.Recorder(guest_domid=3)
    rec.probe("ok", lambda: None)
    rec.probe("value", lambda: b"OK\0")
    rec.probe("list", lambda: ["n3", "r0"])
    rec.probe("err", lambda: (_ for _ in ()).throw(xc.XsError("EACCES")))
    assert rec.observations == {"ok": "ok", "value": "ok:OK", "list": "ok:nG,r0",
                                "err": "err:EACCES"}


def test_read_marked_waits_for_a_complete_observation_line(tmp_path: Path) -> None:
    log = tmp_path / "guest-x.log"
    log.write_text("booting\nE2E-XS-OBSERVATIONS {\"guest.a\": \"ok\", \"guest.b\"")
    assert xc.read_marked(str(log)) is None
    log.write_text("booting\r\nE2E-XS-OBSERVATIONS {\"guest.a\": \"ok\", \"guest.n\": 3}\r\n")
    assert xc.read_marked(str(log)) == {"guest.a": "ok", "guest.n": "3"}
    assert xc.read_marked(str(tmp_path / "missing.log")) is None


def test_timeline_times_phases_and_collects_checks_from_console_lines() -> None:
    timeline = host.Timeline()
    check = {"id": "2", "name": "rise", "ok": False, "detail": "no", "seconds": 3.0}
    for at, line in [
        (10.0, "E2E-MARK control-plane-up uptime=9.1"),
        (12.0, "E2E-PHASE-BEGIN conformance"),
        (13.0, "(XEN) noise E2E-PHASE-END conformance"),
        (50.5, "E2E-PHASE-END conformance 38.4"),
        (51.0, "E2E-CHECK " + json.dumps(check)),
        (52.0, "E2E-CHECK {not json"),
        (53.0, "E2E-PHASE-END never-begun 1.0"),
    ]:
        timeline.feed(at, line)
    assert timeline.marks == {"control-plane-up": 10.0}
    assert timeline.phases == {"conformance": 38.5}
    assert timeline.checks == [check]


def _scripted_peer(replies: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    """A socket whose far end reads requests and answers with ``replies`` (raw packets)."""
    ours, theirs = socket.socketpair()

    def serve() -> None:
        for reply in replies:
            header = theirs.recv(16, socket.MSG_WAITALL)
            size = struct.unpack("<IIII", header)[3]
            if size:
                theirs.recv(size, socket.MSG_WAITALL)
            theirs.sendall(reply)
        theirs.recv(1)  # hold the line open until the client closes it
        theirs.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return ours, thread


class _SocketPairTransport(xc.SocketTransport):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


def _packet(op: int, req: int, payload: bytes) -> bytes:
    return struct.pack("<IIII", op, req, 0, len(payload)) + payload


def test_connection_keeps_events_aside_and_skips_late_replies() -> None:
    event = _packet(xc.OP_WATCH_EVENT, 0, b"/a/b\0tok\0")
    sock, thread = _scripted_peer([
        # Reply to request 1 arrives with an event in front of it.
        event + _packet(xc.OP_READ, 1, b"v1"),
        # Request 2 gets a stale reply to request 1 first, then its own error.
        _packet(xc.OP_READ, 1, b"late") + _packet(xc.OP_ERROR, 2, b"ENOENT\0"),
    ])
    conn = xc.Connection(_SocketPairTransport(sock), timeout_s=5)
    assert conn.read("/x") == b"v1"
    try:
        conn.read("/y")
    except xc.XsError as exc:
        assert exc.name == "ENOENT"
    else:
        raise AssertionError("ENOENT expected")
    assert conn.take_events("tok", wait_s=0.1) == ["/a/b"]
    conn.close()
    thread.join(timeout=5)


def test_pipeline_counts_successes_up_to_the_first_refusal() -> None:
    replies = b"".join(_packet(xc.OP_WRITE, i, b"OK\0") for i in (1, 2, 3))
    replies += _packet(xc.OP_ERROR, 4, b"EQUOTA\0") + _packet(xc.OP_ERROR, 5, b"EQUOTA\0")
    sock, thread = _scripted_peer([b""] * 4 + [replies])
    conn = xc.Connection(_SocketPairTransport(sock), timeout_s=5)
    done, error = xc._until_refused(conn, [(xc.OP_WRITE, f"/n{i}\0".encode())
                                           for i in range(5)])
    assert (done, error) == (3, "EQUOTA")
    conn.close()
    thread.join(timeout=5)


def test_check7_passes_known_differences_and_fails_a_new_one() -> None:
    known_key = next(iter(host.xs_known.KNOWN_DIFFERENCES))
    probes = {known_key, "dom0.read", "dom0.write"}
    known = [xc.Difference(known_key, "err:ENOSYS", "ok")]
    ok, detail = host.judge_differences(known, probes, "oxenstored")
    assert ok and "2 of 3 probes agree" in detail
    new = [*known, xc.Difference("dom0.read", "value", "err:ENOENT")]
    ok, detail = host.judge_differences(new, probes, "oxenstored")
    assert not ok and "dom0.read" in detail and known_key not in detail
    # A difference known for oxenstored is new against C xenstored.
    c_only = set(host.xs_known.KNOWN_DIFFERENCES) - set(host.xs_known.C_KNOWN_DIFFERENCES)
    key = sorted(c_only)[0]
    ok, _ = host.judge_differences([xc.Difference(key, "a", "b")], {key}, "xenstored")
    assert not ok
    # A known difference that went away is pointed out, not failed.
    ok, detail = host.judge_differences([], probes, "oxenstored")
    assert ok and "remove from e2e/xs_known.py" in detail and known_key in detail
