"""Host side of ./scripts/e2e-xen: boot the images, follow the run, judge it.

It starts QEMU (software emulation: ``-accel tcg -cpu qemu64,+svm``; ``-cpu
max`` crashes a PV dom0 because of SMAP) with Xen as the multiboot kernel and
dom0's kernel and initramfs as modules, timestamps every console line with
the host's clock, shows the harness's own lines as they come, and enforces a
deadline. When QEMU has exited it unpacks the results disk, runs the same
xenstore conformance probes against Ballast's own server on this machine,
compares them with what the real daemon answered, and prints PASS or FAIL
per check with the wall time of every phase.

Exit status: 0 all checks passed, 1 a check failed, 5 the VM run did not
produce results (boot failure or deadline); see docs/e2e-xen.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xs_conformance as xc
import xs_known

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_NO_RESULTS = 5

# QEMU machine: 2 vCPUs, 2 GiB, of which dom0 gets 768 MiB (Python, the
# controller and the guests' images live in its RAM) and Xen keeps the rest
# for guests.
QEMU_MEM_MIB = 2048
DOM0_MEM_MIB = 768
RESULTS_DISK_MIB = 64
# Seconds the VM needs after its runner stopped: stop the controller, save
# the results, power off.
SAVE_ALLOWANCE_S = 20
# The checks each scenario runs; the others are reported as skipped.
SCENARIO_CHECKS = {
    "full": ("1", "2", "3", "4", "5", "6", "7"),
    "conformance": ("7",),
    "workload": ("1", "2", "3", "4", "5", "6"),
}
CHECK_NAMES = {
    "1": "controller discovers every guest and reads its real reports",
    "2": "target rises with allocation and falls at the law's pace",
    "3": "`ballast policy set GUEST --max` caps the guest",
    "4": "a short host: minimums hold, the rest shared by weight",
    "5": "`ballast status` and `ballast history` show what happened",
    "6": "agent killed: stale and held; garbage report: nothing gained",
    "7": "Ballast's xenstore server answers the probes as the real xenstored does",
}


def qemu_argv(work: Path, *, xenstored: str, deadline: int, scenario: str) -> list[str]:
    xen_args = (f"console=com1 com1=115200,8n1 dom0_mem={DOM0_MEM_MIB}M,max:{DOM0_MEM_MIB}M "
                "loglvl=warning guest_loglvl=warning")
    dom0_args = (f"console=hvc0 earlyprintk=xen quiet loglevel=3 e2e.xenstored={xenstored} "
                 f"e2e.deadline={deadline} e2e.scenario={scenario}")
    # In -initrd, modules are separated by "," and the first word of each is its path.
    modules = f"{work}/vmlinuz {dom0_args},{work}/dom0-initrd.gz"
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64,+svm", "-smp", "2",
        "-m", str(QEMU_MEM_MIB), "-display", "none", "-no-reboot", "-monitor", "none",
        "-serial", "stdio", "-kernel", str(work / "xen"), "-append", xen_args,
        "-initrd", modules,
        "-drive", f"file={work / 'results.img'},format=raw,if=virtio",
    ]


@dataclass
class Timeline:
    """Host-clock times of the marks, phases and checks the VM announced."""

    started: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)
    phase_begin: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def feed(self, at: float, line: str) -> None:
        words = line.split()
        if not words:
            return
        if words[0] == "E2E-MARK" and len(words) > 1:
            self.marks.setdefault(words[1], at)
        elif words[0] == "E2E-PHASE-BEGIN" and len(words) > 1:
            self.phase_begin[words[1]] = at
        elif words[0] == "E2E-PHASE-END" and len(words) > 1 and words[1] in self.phase_begin:
            self.phases[words[1]] = at - self.phase_begin[words[1]]
        elif words[0] == "E2E-CHECK":
            try:
                entry = json.loads(line.split(" ", 1)[1])
            except (IndexError, ValueError):
                return
            if isinstance(entry, dict):
                self.checks.append(entry)


def run_vm(work: Path, *, timeout_s: float, xenstored: str, scenario: str,
           quiet: bool) -> tuple[int, Timeline]:
    """Boot, follow and wait for QEMU; return its exit status and the timeline."""
    disk = work / "results.img"
    with open(disk, "wb") as f:
        f.truncate(RESULTS_DISK_MIB * 1024 * 1024)
    timeline = Timeline()
    log = open(work / "serial.log", "w", errors="replace")  # noqa: SIM115 - closed below
    # The scenario runner gets the deadline less what saving and powering off
    # take, so it saves its results before the host gives up on the VM.
    deadline = int(time.time() + timeout_s - SAVE_ALLOWANCE_S)
    proc = subprocess.Popen(qemu_argv(work, xenstored=xenstored, deadline=deadline,
                                      scenario=scenario),
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    killer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
    killer.start()
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            at = time.monotonic() - timeline.started
            line = raw.decode(errors="replace").rstrip("\r\n")
            log.write(f"[{at:7.2f}] {line}\n")
            log.flush()
            timeline.feed(at, line)
            if not quiet and line.startswith(("E2E-", "(XEN) ***", "Kernel panic")):
                shown = line if len(line) < 400 else line[:400] + "..."
                print(f"  [{at:6.1f}s] {shown}", flush=True)
        rc = proc.wait()
    finally:
        killer.cancel()
        log.close()
    if time.monotonic() - timeline.started >= timeout_s:
        rc = 124
    return rc, timeline


def unpack_results(work: Path) -> Path | None:
    out = work / "results"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    try:
        with tarfile.open(work / "results.img") as tar:
            tar.extractall(out, filter="data")
    except (tarfile.TarError, OSError):
        return None
    return out


def probe_local_server(work: Path, ballast: str) -> tuple[dict[str, str] | None, str]:
    """The conformance probes against ``ballast xenstored`` on this machine."""
    sock_dir = Path(tempfile.mkdtemp(prefix="e2e-xs-", dir="/tmp"))
    with open(work / "xs-ballast.log", "w") as errors:
        server = subprocess.Popen([ballast, "xenstored", "--dir", str(sock_dir)],
                                  stdout=subprocess.DEVNULL, stderr=errors)
    try:
        deadline = time.monotonic() + 20
        while not (sock_dir / "socket").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                return None, f"`{ballast} xenstored` did not start (see xs-ballast.log)"
            time.sleep(0.1)
        started = time.monotonic()
        obs = xc.probe_ballast(str(sock_dir))
        return obs, f"{time.monotonic() - started:.1f} s"
    except (xc.XsError, xc.Closed, OSError, TimeoutError) as exc:
        return None, f"probing Ballast's server failed: {type(exc).__name__}: {exc}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(sock_dir, ignore_errors=True)


def check7(work: Path, results: Path, ballast: str,
           daemon: str = "oxenstored") -> tuple[bool, str, float]:
    started = time.monotonic()
    real_path = results / "xs-real.json"
    if not real_path.exists():
        return False, "no observations from the real xenstored", time.monotonic() - started
    real = json.loads(real_path.read_text())
    ours, how = probe_local_server(work, ballast)
    if ours is None:
        return False, how, time.monotonic() - started
    (work / "xs-ballast.json").write_text(json.dumps(ours, indent=1, sort_keys=True))
    diffs = xc.compare(real, ours)
    (work / "xs-diff.txt").write_text("".join(d.line() + "\n" for d in diffs))
    ok, detail = judge_differences(diffs, set(real), daemon)
    return ok, f"{detail} ({how})", time.monotonic() - started


def judge_differences(diffs: list[xc.Difference], probes: set[str],
                      daemon: str) -> tuple[bool, str]:
    """Check 7's verdict: every difference must be a known one, with its reason."""
    known = xs_known.BY_DAEMON[daemon]
    new = [d for d in diffs if d.key not in known and d.key not in xc.TRANSPORT]
    if new:
        listed = "\n      ".join(d.line() for d in new)
        return (False, f"{len(new)} of {len(probes)} probes differ in ways not known before "
                f"(all differences in e2e/work/xs-diff.txt):\n      {listed}")
    gone = sorted((set(known) & probes) - {d.key for d in diffs})
    note = f"; no longer different, remove from e2e/xs_known.py: {gone}" if gone else ""
    return (True, f"{len(probes) - len(diffs)} of {len(probes)} probes agree; the other "
            f"{len(diffs)} are known differences (e2e/xs_known.py, "
            f"xs_conformance.TRANSPORT), each with its reason, listed in "
            f"e2e/work/xs-diff.txt{note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=480.0,
                        help="seconds the VM may run (default 480)")
    parser.add_argument("--xenstored", choices=("oxenstored", "xenstored"), default="oxenstored")
    parser.add_argument("--ballast", default="ballast", help="the ballast command on this host")
    parser.add_argument("--quiet", action="store_true", help="do not echo the VM's progress")
    parser.add_argument("--scenario", choices=tuple(SCENARIO_CHECKS), default="full",
                        help="full (default), or only the conformance probes (check 7) or "
                             "only the workload checks (1-6), to iterate faster")
    parser.add_argument("--phase-times", type=Path,
                        help="JSON file of host-side phase times to include (image build)")
    args = parser.parse_args(argv)
    work: Path = args.work.resolve()

    print(f"==> booting Xen under QEMU (TCG), deadline {args.timeout:.0f} s", flush=True)
    rc, timeline = run_vm(work, timeout_s=args.timeout, xenstored=args.xenstored,
                          scenario=args.scenario, quiet=args.quiet)
    vm_s = time.monotonic() - timeline.started
    results = unpack_results(work)
    checks_file = results / "checks.json" if results else None
    if results is None or checks_file is None or not checks_file.exists():
        print(f"FAIL: the VM produced no results (QEMU exit {rc} after {vm_s:.0f} s; "
              f"see {work / 'serial.log'})")
        return EXIT_NO_RESULTS
    recorded = json.loads(checks_file.read_text())
    by_id = {c["id"]: c for c in recorded["checks"]}

    ok7, detail7, seconds7 = False, "not run", 0.0
    if "7" in SCENARIO_CHECKS[args.scenario]:
        print("==> probing Ballast's own xenstore server with the same script", flush=True)
        ok7, detail7, seconds7 = check7(work, results, args.ballast, args.xenstored)
    real7 = by_id.get("7-real")

    print()
    print("==> results")
    failed = False
    for c in recorded["checks"]:
        if c["id"] not in CHECK_NAMES:  # harness stages: guests, 7-real
            print(f"{'PASS' if c['ok'] else 'FAIL'}: [{c['id']}] {c['name']} "
                  f"({c['seconds']} s): {c['detail']}")
            failed |= not c["ok"]
    for check_id, name in CHECK_NAMES.items():
        if check_id not in SCENARIO_CHECKS[args.scenario]:
            print(f"SKIP: [{check_id}] {name} (scenario {args.scenario})")
            continue
        if check_id == "7":
            ok = ok7 and bool(real7 and real7["ok"])
            detail = detail7 if real7 and real7["ok"] else "the real side did not run"
            print(f"{'PASS' if ok else 'FAIL'}: [7] {name} ({seconds7:.1f} s local): {detail}")
            failed |= not ok
            continue
        c = by_id.get(check_id)
        if c is None:
            print(f"FAIL: [{check_id}] {name}: not run")
            failed = True
            continue
        print(f"{'PASS' if c['ok'] else 'FAIL'}: [{check_id}] {name} ({c['seconds']} s): "
              f"{c['detail']}")
        failed |= not c["ok"]
    for note in recorded.get("notes", []):
        print(f"note: {note}")

    phases: dict[str, float] = {}
    if args.phase_times and args.phase_times.exists():
        phases.update(json.loads(args.phase_times.read_text()))
    boot = timeline.marks.get("control-plane-up")
    if boot is not None:
        phases["boot to dom0 control plane"] = boot
    phases.update({k: v for k, v in timeline.phases.items()})
    phases["vm total"] = vm_s
    phases["check 7 local probes"] = seconds7
    (work / "phases.json").write_text(json.dumps(phases, indent=1))
    print()
    print("==> wall time per phase (s)")
    for name, seconds in phases.items():
        print(f"  {name:32s} {seconds:7.1f}")
    print()
    print(f"e2e-xen: {'FAIL' if failed else 'PASS'}")
    return EXIT_FAIL if failed else EXIT_PASS


if __name__ == "__main__":
    sys.exit(main())
