"""The e2e workload inside a real guest: the Ballast agent plus a memory hog on command.

dom0's scenario runner steers each guest through one xenstore key the guest
can read, ``~/data/e2e/ctl`` (JSON: how many MiB to hold, whether the agent
runs, whether to write a garbage report), and reads back what the guest
itself sees in ``~/data/e2e/state``: its real MemTotal, MemAvailable and
Committed_AS, the balloon driver's target and current size, what it holds,
and whether the agent is alive. Both keys sit under ``~/data``, the part of
the tree a guest may write, next to (not inside) the agent's own keys.

Memory is held the way programs hold it: an anonymous private mapping is
reserved first (Committed_AS rises at once, which is what the controller
sees as demand) and its pages are touched only while the guest has room,
so a guest waiting for its balloon to grow is never pushed into the OOM
killer. Freeing unmaps from the end.
"""

from __future__ import annotations

import json
import mmap
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from xs_conformance import Closed, Connection, XenbusTransport, XsError

CHUNK_MIB = 32
# Pages are touched only while MemAvailable stays above this (MiB): room for
# the agent, the kernel and page cache while the balloon catches up.
TOUCH_MARGIN_MIB = 40
# At most this much is touched per loop, so the loop keeps answering dom0.
TOUCH_STEP_MIB = 16
POLL_S = 2.0
PAGE = mmap.PAGESIZE
BALLOON = "/sys/devices/system/xen_memory/xen_memory0"
GARBAGE = [
    b"\x00\xff not json at all",
    b'{"v": 1, "seq": 1, "mem_total_kb": -4096}',
    b'{"v": 1, "seq": 99999999999999999999999, "committed_as_kb": 1e300}',
    b"[" * 1000,
]


def meminfo_kb() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                out[key] = int(fields[0])
    return out


def uptime_s() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def sysfs_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


@dataclass
class Hog:
    """Anonymous memory reserved in chunks and touched as room allows."""

    chunks: list[mmap.mmap] = field(default_factory=list)
    touched: list[int] = field(default_factory=list)  # bytes touched per chunk

    @property
    def reserved_mib(self) -> int:
        return len(self.chunks) * CHUNK_MIB

    @property
    def touched_mib(self) -> int:
        return sum(self.touched) // (1024 * 1024)

    def resize(self, want_mib: int) -> None:
        while self.reserved_mib + CHUNK_MIB <= want_mib:
            self.chunks.append(mmap.mmap(-1, CHUNK_MIB * 1024 * 1024,
                                         flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
            self.touched.append(0)
        while self.reserved_mib > want_mib:
            self.chunks.pop().close()
            self.touched.pop()

    def touch_some(self) -> None:
        budget = TOUCH_STEP_MIB * 1024 * 1024
        for i, chunk in enumerate(self.chunks):
            while self.touched[i] < len(chunk) and budget > 0:
                if meminfo_kb().get("MemAvailable", 0) < TOUCH_MARGIN_MIB * 1024:
                    return
                step = min(1024 * 1024, len(chunk) - self.touched[i], budget)
                for off in range(self.touched[i], self.touched[i] + step, PAGE):
                    chunk[off] = 1
                self.touched[i] += step
                budget -= step


@dataclass
class AgentProcess:
    """The Ballast agent, started and stopped on command."""

    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    exit_note: str = ""

    def ensure(self, want: bool) -> None:
        if want and self.proc is None and not self.exit_note:
            log = open("/tmp/agent.log", "ab")  # noqa: SIM115 - handed to the child
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        if not want and self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            self.exit_note = "killed"

    def status(self) -> str:
        if self.proc is None:
            return self.exit_note or "stopped"
        rc = self.proc.poll()
        if rc is None:
            return "running"
        self.proc = None
        try:
            with open("/tmp/agent.log", errors="replace") as f:
                last = [line.strip() for line in f if line.strip()][-1:]
        except OSError:
            last = []
        self.exit_note = f"exited rc={rc}: {last[0] if last else ''}"[:300]
        print(f"E2E-GUEST agent {self.exit_note}", flush=True)
        return self.exit_note


def main() -> int:
    conn = Connection(XenbusTransport("/dev/xen/xenbus"))
    domid = int(conn.read("domid"))
    agent = AgentProcess([
        "/usr/bin/ballast-agent", "--xenstore", "xenbus", "--interval", "1s",
        "--heartbeat", "5s", "--log-level", "info",
    ])
    hog = Hog()
    garbage_done = -1
    print(f"E2E-GUEST ctl up domid={domid}", flush=True)
    while True:
        try:
            ctl = json.loads(conn.read("data/e2e/ctl") or b"{}")
        except XsError:
            ctl = {}
        except (ValueError, Closed):
            ctl = {}
        want_agent = bool(ctl.get("agent", True))
        agent.ensure(want_agent)
        hog.resize(int(ctl.get("alloc_mib", 0)))
        hog.touch_some()
        garbage = int(ctl.get("garbage", -1))
        if garbage >= 0 and garbage != garbage_done:
            agent.ensure(False)
            conn.write("data/ballast/report", GARBAGE[garbage % len(GARBAGE)])
            garbage_done = garbage
        mem = meminfo_kb()
        state = {
            "domid": domid,
            "agent": agent.status(),
            "reserved_mib": hog.reserved_mib,
            "touched_mib": hog.touched_mib,
            "mem_total_kb": mem.get("MemTotal"),
            "mem_available_kb": mem.get("MemAvailable"),
            "committed_as_kb": mem.get("Committed_AS"),
            "balloon_target_kb": sysfs_int(f"{BALLOON}/target_kb"),
            "balloon_current_kb": sysfs_int(f"{BALLOON}/info/current_kb"),
            "garbage": garbage_done,
            "uptime_s": uptime_s(),
        }
        try:
            conn.write("data/e2e/state", json.dumps(state, sort_keys=True))
        except (XsError, Closed) as exc:
            print(f"E2E-GUEST cannot write state: {exc}", flush=True)
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main())
