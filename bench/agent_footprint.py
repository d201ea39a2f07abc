"""What the guest agent costs: CPU time per report and resident memory.

Runs the real agent (``ballast-agent``, a separate process) against the
project's xenstore server on a domain socket, reporting once a second for a
minute, reading this machine's real /proc. Side by side, in the same run:

* a bare Python interpreter doing nothing (the floor any Python agent pays);
* the classic shell reporter of older Xen guest tools: a loop running awk and
  ``xenstore-write data/meminfo_total data/meminfo_free`` every second
  (only when Debian's xenstore-utils are installed).

Targets: under 30 MiB RSS and under 0.5 % of one core at 1 report/s.

    .venv/bin/python bench/agent_footprint.py [--duration 60] [--warmup 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agents.change import ReportPolicy
from agents.core import AgentState, plan_writes
from agents.schema import decode_report
from agents.source import ProcMemorySource
from orchestrator.xenstore.rawclient import RawClient
from orchestrator.xenstore.runner import ServerThread

TARGET_RSS_MIB = 30.0
TARGET_CORE_PERCENT = 0.5
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ns(pid: int) -> int:
    """On-CPU time of one process, ns (/proc/PID/schedstat, first field)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def cpu_with_children_s(pid: int) -> float:
    """utime + stime + cutime + cstime of a process, seconds (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14-17 of proc(5), counted after the ")" that ends the command name.
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


async def report_seq(privileged: Path) -> int:
    async with await RawClient.connect(privileged) as dom0:
        return decode_report(await dom0.read("/local/domain/5/data/ballast/report")).seq


def wait_for_report(privileged: Path, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return asyncio.run(report_seq(privileged))
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class Figures:
    rss_mib: float
    peak_mib: float
    core_percent: float | None = None
    ms_per_report: float | None = None
    reports: int | None = None


def in_process_cost_us(iterations: int) -> float:
    """CPU per sample + decision + encoding, without xenstore, microseconds."""
    source = ProcMemorySource(Path("/"), page_kb=os.sysconf("SC_PAGE_SIZE") // 1024)
    policy = ReportPolicy(heartbeat_s=1.0, min_interval_s=0.0)
    state = AgentState()
    start = time.process_time()
    for i in range(iterations):
        plan = plan_writes(state, source.sample(), now_s=float(i), policy=policy)
        state = state.after_writes(plan, now_s=float(i))
    return (time.process_time() - start) / iterations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="xs-bench-", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with ServerThread(work) as server:
            socket = server.introduce(5)
            server.introduce(6)
            agent = subprocess.Popen(
                [sys.executable, "-c", "from agents.entry import main; main()",
                 "--xenstore", f"unix:{socket}", "--interval", "1s", "--heartbeat", "1s",
                 "--min-interval", "1s", "--shrink", "none", "--log-level", "warning"],
            )
            procs.append(agent)
            bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10**6)"])
            procs.append(bare)
            shell: subprocess.Popen[bytes] | None = None
            if shutil.which("xenstore-write"):
                loop = (
                    "while :; do xenstore-write "
                    "data/meminfo_total $(awk '/^MemTotal:/{print $2}' /proc/meminfo) "
                    "data/meminfo_free $(awk '/^MemFree:/{print $2}' /proc/meminfo); "
                    "sleep 1; done"
                )
                shell = subprocess.Popen(
                    ["sh", "-c", loop],
                    env={**os.environ, "XENSTORED_PATH": str(server.domain_socket(6))},
                )
                procs.append(shell)

            wait_for_report(server.privileged_socket)
            time.sleep(args.warmup)
            seq0 = wait_for_report(server.privileged_socket)
            cpu0 = cpu_ns(agent.pid)
            shell0 = cpu_with_children_s(shell.pid) if shell else 0.0
            peak_rss = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.duration:
                time.sleep(1.0)
                peak_rss = max(peak_rss, status_kib(agent.pid, "VmRSS"))
            elapsed = time.monotonic() - t0
            cpu1 = cpu_ns(agent.pid)
            seq1 = wait_for_report(server.privileged_socket)
            shell1 = cpu_with_children_s(shell.pid) if shell else 0.0
            assert agent.poll() is None, "the agent exited during the measurement"

            reports = seq1 - seq0
            agent_cpu_s = (cpu1 - cpu0) / 1e9
            agent_fig = Figures(
                rss_mib=status_kib(agent.pid, "VmRSS") / 1024,
                peak_mib=max(peak_rss, status_kib(agent.pid, "VmHWM")) / 1024,
                core_percent=agent_cpu_s / elapsed * 100,
                ms_per_report=agent_cpu_s / reports * 1000 if reports else None,
                reports=reports,
            )
            bare_fig = Figures(rss_mib=status_kib(bare.pid, "VmRSS") / 1024,
                               peak_mib=status_kib(bare.pid, "VmHWM") / 1024)
            shell_fig: Figures | None = None
            if shell is not None:
                shell_cpu_s = shell1 - shell0
                loops = round(elapsed)
                shell_fig = Figures(
                    rss_mib=status_kib(shell.pid, "VmRSS") / 1024,
                    peak_mib=status_kib(shell.pid, "VmHWM") / 1024,
                    core_percent=shell_cpu_s / elapsed * 100,
                    ms_per_report=shell_cpu_s / loops * 1000,
                    reports=loops,
                )
            # Ask the agent to stop the way systemd does, and time it.
            stop_t = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(10)
            stop_s = time.monotonic() - stop_t
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)

    cost_us = in_process_cost_us(2000)

    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = [("", "agent", "bare python", "shell+xenstore-write")]
    figs = [agent_fig, bare_fig, shell_fig]
    rows.append(("RSS now (MiB)", *(cell(f.rss_mib if f else None, ".1f") for f in figs)))
    rows.append(("RSS peak (MiB)", *(cell(f.peak_mib if f else None, ".1f") for f in figs)))
    rows.append(("CPU, % of one core",
                 *(cell(f.core_percent if f else None, ".3f") for f in figs)))
    rows.append(("CPU per report (ms)",
                 *(cell(f.ms_per_report if f else None, ".2f") for f in figs)))
    rows.append(("reports in window",
                 *(cell(f.reports if f else None, "d") for f in figs)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"agent footprint: {args.duration:.0f} s at 1 report/s, this machine's /proc")
    for row in rows:
        print("  " + "  ".join(v.rjust(w) if i else v.ljust(w)
                               for i, (v, w) in enumerate(zip(row, widths, strict=True))))
    print(f"  ratio agent/bare-python RSS: {agent_fig.rss_mib / bare_fig.rss_mib:.2f}x")
    if shell_fig is not None and shell_fig.core_percent and agent_fig.core_percent is not None:
        print(f"  ratio agent/shell-reporter CPU: "
              f"{agent_fig.core_percent / shell_fig.core_percent:.3f}x")
    print(f"  in-process sample+decide+encode: {cost_us:.0f} us per sample (no xenstore)")
    print(f"  SIGTERM to exit: {stop_s * 1000:.0f} ms, exit status {code}")
    rss_ok = agent_fig.peak_mib < TARGET_RSS_MIB
    cpu_ok = agent_fig.core_percent is not None and agent_fig.core_percent < TARGET_CORE_PERCENT
    print(f"  target RSS < {TARGET_RSS_MIB:.0f} MiB: {'met' if rss_ok else 'MISSED'}; "
          f"CPU < {TARGET_CORE_PERCENT} % of a core: {'met' if cpu_ok else 'MISSED'}")


if __name__ == "__main__":
    main()
