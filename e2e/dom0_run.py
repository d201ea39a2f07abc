"""The e2e scenario, run inside the real dom0 once Xen's control plane is up.

It creates the guests, runs the xenstore conformance probes against the real
daemon, starts the Ballast controller against ``/run/xenstored/socket`` with
the ``xl`` adapter and a SQLite store, and carries out checks 1-6 of the
e2e issue on real memory. Every phase and check is announced on the console
(``E2E-PHASE-BEGIN``/``-END``, ``E2E-CHECK {json}``) so the host can time it
with its own clock, and everything is also written to the results directory,
which ``dom0-init.sh`` saves to the results disk.

A check whose Ballast command does not exist yet fails, naming the command:
nothing passes by default.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import xs_conformance as xc

XENSTORED_SOCKET = "/run/xenstored/socket"
CONSOLE_DIR = "/var/log/xen/console"
GUEST_KERNEL = "/guest/vmlinuz"
GUEST_INITRD = "/guest/initrd.gz"
CONFIG_PATH = "/etc/ballast/ballast.toml"
DB_PATH = "/var/lib/ballast/ballast.db"
KIB_PER_MIB = 1024

# The workload guests: boot size and ceiling (MiB). They boot at their
# ceiling and Ballast balloons them down to what they need: a PV guest of
# this kernel did not grow past its boot size here (a target above it left
# the balloon where it was and stalled the guest's xenstore traffic; see
# docs/e2e-xen.md). About 1.3 GiB is left for guests, the conformance guest
# included; with the free margin below, one guest can have its ceiling, all
# three cannot.
GUESTS = {"g1": (352, 352), "g2": (352, 352), "g3": (352, 352)}
CONF_GUEST = ("xsconf", 160)
# Controller pacing for the run (host policy): short, so the law's steps can
# be watched in seconds rather than minutes.
INTERVAL_S = 2
STALE_S = 10
DEAD_S = 30
FREE_MARGIN_MIB = 320


def say(line: str) -> None:
    print(line, flush=True)


@dataclass
class Budget:
    """The time this runner has before the host gives up on the VM.

    The host passes its deadline as a Unix time: QEMU starts the machine's
    clock from the host's, and under TCG it keeps pace with it.
    """

    deadline: float = float("inf")

    def remaining(self) -> float:
        return self.deadline - time.time()


BUDGET = Budget()
# What the runner keeps back to stop the controller and save the results.
RESERVE_S = 25.0


# --- results -------------------------------------------------------------------


@dataclass
class Results:
    directory: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, check_id: str, name: str, ok: bool, detail: str, seconds: float) -> None:
        entry = {"id": check_id, "name": name, "ok": ok, "detail": detail,
                 "seconds": round(seconds, 1)}
        self.checks.append(entry)
        say("E2E-CHECK " + json.dumps(entry, sort_keys=True))
        self.save()

    def note(self, text: str) -> None:
        self.notes.append(text)
        say(f"E2E-NOTE {text}")
        self.save()

    def save(self) -> None:
        with open(os.path.join(self.directory, "checks.json"), "w") as f:
            json.dump({"checks": self.checks, "notes": self.notes}, f, indent=1)
        save_to_disk(self.directory)


RESULTS_DISK = "/dev/vda"


def save_to_disk(directory: str) -> None:
    """Write the results so far to the results disk (a raw tar stream), with console logs.

    Done after every check, so a run the host has to cut short still tells
    what happened up to then.
    """
    if not os.path.exists(RESULTS_DISK):
        return
    for name in os.listdir(CONSOLE_DIR) if os.path.isdir(CONSOLE_DIR) else []:
        with open(os.path.join(CONSOLE_DIR, name), "rb") as fin, \
                open(os.path.join(directory, name), "wb") as fout:
            fout.write(fin.read())
    run(["tar", "cf", RESULTS_DISK, "-C", directory, "."], timeout_s=30)
    run(["sync"], timeout_s=30)


@contextmanager
def phase(name: str) -> Iterator[None]:
    started = time.monotonic()
    say(f"E2E-PHASE-BEGIN {name}")
    try:
        yield
    finally:
        say(f"E2E-PHASE-END {name} {time.monotonic() - started:.1f}")


class CheckFailed(Exception):
    """A check's expectation did not hold; the message says what was seen."""


def run_check(results: Results, check_id: str, name: str, body: Callable[[], str]) -> bool:
    started = time.monotonic()
    if BUDGET.remaining() < RESERVE_S + 15:
        results.check(check_id, name, False, "not run: the VM's time budget is spent", 0.0)
        return False
    say(f"E2E-PHASE-BEGIN check-{check_id}")
    try:
        detail = body()
        ok = True
    except CheckFailed as exc:
        detail, ok = str(exc), False
    except Exception as exc:
        detail, ok = f"harness error: {type(exc).__name__}: {exc}", False
    say(f"E2E-PHASE-END check-{check_id} {time.monotonic() - started:.1f}")
    results.check(check_id, name, ok, detail, time.monotonic() - started)
    return ok


# --- commands ------------------------------------------------------------------


def run(argv: list[str], *, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout_s:.0f} s")
    except OSError as exc:
        return subprocess.CompletedProcess(argv, 127, "", str(exc))


def must(argv: list[str], *, timeout_s: float = 180.0) -> str:
    done = run(argv, timeout_s=min(timeout_s, max(BUDGET.remaining() - RESERVE_S, 10.0)))
    if done.returncode != 0:
        err = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        raise CheckFailed(f"`{shlex.join(argv)}` exited {done.returncode}: {' | '.join(err)}")
    return done.stdout


def xl_list() -> dict[str, tuple[int, int]]:
    """name -> (domid, MiB) from plain ``xl list``."""
    out: dict[str, tuple[int, int]] = {}
    for line in run(["xl", "list"]).stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6 and parts[-5].isdigit() and parts[-4].isdigit():
            out[" ".join(parts[:-5])] = (int(parts[-5]), int(parts[-4]))
    return out


def xl_info() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in run(["xl", "info"]).stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


# --- xenstore ------------------------------------------------------------------


class Xs:
    """dom0's view through the real daemon (the probes' minimal client)."""

    def __init__(self) -> None:
        self.conn = xc.Connection(xc.SocketTransport(XENSTORED_SOCKET))

    def read(self, path: str) -> str | None:
        try:
            return self.conn.read(path).decode(errors="replace")
        except xc.XsError:
            return None

    def write(self, path: str, value: str) -> None:
        self.conn.write(path, value)

    def target_kb(self, domid: int) -> int | None:
        value = self.read(f"/local/domain/{domid}/memory/target")
        return int(value) if value and value.isdigit() else None

    def state(self, domid: int) -> dict[str, Any]:
        raw = self.read(f"/local/domain/{domid}/data/e2e/state")
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        return data if isinstance(data, dict) else {}

    def report(self, domid: int) -> dict[str, Any] | None:
        raw = self.read(f"/local/domain/{domid}/data/ballast/report")
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def ctl(self, domid: int, **changes: Any) -> None:
        path = f"/local/domain/{domid}/data/e2e/ctl"
        raw = self.read(path)
        try:
            current = json.loads(raw) if raw else {}
        except ValueError:
            current = {}
        current.update(changes)
        self.write(path, json.dumps(current, sort_keys=True))


def wait_for(what: str, probe: Callable[[], Any], *, timeout_s: float,
             every_s: float = 1.0) -> Any:
    """Poll ``probe`` until it returns something truthy; CheckFailed on timeout."""
    timeout_s = min(timeout_s, max(BUDGET.remaining() - RESERVE_S, 1.0))
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every_s)
    raise CheckFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")


# --- guests --------------------------------------------------------------------


def guest_config(name: str, memory_mib: int, maxmem_mib: int, role: str) -> str:
    path = f"/root/{name}.cfg"
    with open(path, "w") as f:
        f.write(
            f'name = "{name}"\ntype = "pv"\nkernel = "{GUEST_KERNEL}"\n'
            f'ramdisk = "{GUEST_INITRD}"\n'
            # Kernel warnings reach the workload guests' console logs; the
            # conformance guest's console carries its observations, so quiet.
            f'extra = "console=hvc0 loglevel={1 if role == "conf" else 4} e2e.role={role}"\n'
            f"memory = {memory_mib}\nmaxmem = {maxmem_mib}\nvcpus = 1\n"
            'on_crash = "preserve"\n'
        )
    return path


def console_tail(name: str, lines: int = 6) -> str:
    try:
        with open(f"{CONSOLE_DIR}/guest-{name}.log", errors="replace") as f:
            return " | ".join(line.strip() for line in f.read().splitlines()[-lines:])[-600:]
    except OSError:
        return "no console log"


def conformance(results: Results, after_introduce: Callable[[], None]) -> None:
    name, mem = CONF_GUEST
    cfg = guest_config(name, mem, mem, "conf")
    xc.PROGRESS = True
    lifecycle = xc.GuestConsole(config=cfg, name=name, console_dir=CONSOLE_DIR,
                                timeout_s=max(30.0, min(200.0, BUDGET.remaining() / 2)))
    started = time.monotonic()
    try:
        obs = xc.dom0_probes(lambda: xc.Connection(xc.SocketTransport(XENSTORED_SOCKET)),
                             lifecycle, tools_env={"XENSTORED_PATH": XENSTORED_SOCKET},
                             pyxs_connect=xc._pyxs_unix(XENSTORED_SOCKET),
                             after_introduce=after_introduce)
    except Exception as exc:
        results.check("7-real", "conformance probes ran against the real xenstored", False,
                      f"{type(exc).__name__}: {exc}", time.monotonic() - started)
        return
    with open(os.path.join(results.directory, "xs-real.json"), "w") as f:
        json.dump(obs, f, indent=1, sort_keys=True)
    crashed = {k: v for k, v in obs.items() if k.endswith("crashed")}
    guest_seen = any(k.startswith("guest.") and not k.endswith("crashed") for k in obs)
    ok = not crashed and guest_seen
    detail = (f"{len(obs)} observations (dom0 and guest); sections: "
              + json.dumps(xc.SECTION_SECONDS))
    if crashed:
        detail = f"sections crashed: {crashed}"
    elif not guest_seen:
        detail = "the guest printed no observations"
    results.check("7-real", "conformance probes ran against the real xenstored", ok, detail,
                  time.monotonic() - started)


def start_guests() -> dict[str, subprocess.Popen[str]]:
    """``xl create`` every workload guest, without waiting."""
    say("E2E-NOTE creating the workload guests")
    return {name: subprocess.Popen(["xl", "create", guest_config(name, mem, top, "work")],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name, (mem, top) in GUESTS.items()}


def create_guests(results: Results, xs: Xs,
                  procs: dict[str, subprocess.Popen[str]]) -> dict[str, int]:
    started = time.monotonic()
    if not procs:
        procs.update(start_guests())
    failures = []
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            failures.append(f"{name}: xl create exited {proc.returncode}: {out.strip()[-300:]}")
    domids = {name: xl_list()[name][0] for name in GUESTS if name in xl_list()}
    try:
        wait_for("every guest's workload to report",
                 lambda: all(xs.state(d).get("mem_total_kb") for d in domids.values())
                 and len(domids) == len(GUESTS), timeout_s=180)
    except CheckFailed as exc:
        failures.append(str(exc))
    if failures:
        for name in GUESTS:
            failures.append(f"{name} console: {console_tail(name)}")
    agents = {name: xs.state(d).get("agent") for name, d in domids.items()}
    results.check("guests", "PV guests booted with the workload running", not failures,
                  "; ".join(failures) or f"domids {domids}, agents {agents}",
                  time.monotonic() - started)
    return domids


# --- the controller ------------------------------------------------------------

@dataclass
class Controller:
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""
    problem: str = ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return " | ".join(line.strip() for line in f.readlines()[-lines:])
        except OSError:
            return ""


HOST_NAME = "e2e-dom0"


def provision(root: str, ballast: str) -> None:
    """Lay the controller's configuration and a prepared history database into dom0's image.

    Run on the build host (``--provision``): every ``ballast`` command costs
    many seconds of Python start-up under emulation, so what an operator
    does once before starting the controller is done here, with the same
    commands: ``ballast db upgrade`` and the host policy of the run (short
    pacing, and the kernel law, Committed_AS, as every VM's estimator: the
    workload reserves memory before it touches it).
    """
    config = root + CONFIG_PATH
    db = root + DB_PATH
    os.makedirs(os.path.dirname(config), exist_ok=True)
    os.makedirs(os.path.dirname(db), exist_ok=True)
    with open(config, "w") as f:
        f.write(
            f'[controller]\nhost_name = "{HOST_NAME}"\nxenstore = "{XENSTORED_SOCKET}"\n'
            f'hypervisor = "xl"\nxl_path = "xl"\ninterval_s = {INTERVAL_S}\n'
            f"free_margin_mb = {FREE_MARGIN_MIB}\n"
            f'[store]\nurl = "sqlite:///{DB_PATH}"\n'
        )
    os.chmod(config, 0o644)
    for argv in (
        [ballast, "db", "upgrade", "--db", db],
        [ballast, "policy", "set", "--host", "--db", db, "--host-name", HOST_NAME,
         "-f", f"interval={INTERVAL_S}s", "-f", f"stale={STALE_S}s", "-f", f"dead={DEAD_S}s",
         "-f", f"free-margin={FREE_MARGIN_MIB}M", "-f", "estimator=committed"],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"provisioning failed: `{shlex.join(argv)}`: "
                             f"{(done.stderr or done.stdout).strip()}")


def start_controller(results: Results) -> Controller:
    """``ballast run`` on the real xenstored, with the configuration laid by :func:`provision`."""
    ctl = Controller(log_path=os.path.join(results.directory, "controller.log"))
    log = open(ctl.log_path, "ab")  # noqa: SIM115 - handed to the controller
    try:
        ctl.proc = subprocess.Popen(["ballast", "run", "--xenstore", XENSTORED_SOCKET],
                                    stdout=log, stderr=subprocess.STDOUT)
    except OSError as exc:
        ctl.problem = f"cannot start `ballast run`: {exc}"
        results.note(ctl.problem)
        return ctl
    time.sleep(5)
    if not ctl.alive():
        ctl.problem = f"`ballast run` exited at once: {ctl.tail()}"
        results.note(ctl.problem)
    return ctl


def set_policies(commands: list[list[str]]) -> None:
    """Run policy commands side by side (each starts Python, slow under TCG); retry failures."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    for command, proc in zip(commands, procs, strict=True):
        proc.communicate(timeout=max(BUDGET.remaining() - RESERVE_S, 10))
        if proc.returncode != 0:
            must(command)


def status_json() -> Any:
    return json.loads(must(["ballast", "status", "--json"]))


def find_vm(status: Any, name: str, domid: int) -> dict[str, Any] | None:
    """The status entry of one VM, wherever the JSON keeps it."""
    if isinstance(status, dict):
        if status.get("name") == name or (status.get("domid") == domid and "name" in status):
            return status
        for value in status.values():
            found = find_vm(value, name, domid)
            if found is not None:
                return found
    elif isinstance(status, list):
        for item in status:
            found = find_vm(item, name, domid)
            if found is not None:
                return found
    return None


def vm_state(entry: dict[str, Any]) -> str:
    return str(entry.get("state", entry.get("status", ""))).lower()


# --- checks 1-6 ----------------------------------------------------------------


@dataclass
class Scenario:
    results: Results
    xs: Xs
    domids: dict[str, int]
    controller: Controller
    history: dict[str, list[tuple[float, int | None]]] = field(default_factory=dict)

    def require_controller(self) -> None:
        if self.controller.problem:
            raise CheckFailed(self.controller.problem)
        if not self.controller.alive():
            raise CheckFailed(f"`ballast run` is not running: {self.controller.tail()}")

    def targets(self) -> dict[str, int | None]:
        now = time.monotonic()
        out = {name: self.xs.target_kb(d) for name, d in self.domids.items()}
        for name, value in out.items():
            self.history.setdefault(name, []).append((now, value))
        return out

    def guest_mib(self, name: str) -> int:
        return xl_list().get(name, (0, 0))[1]

    # 1
    def discovery(self) -> str:
        self.require_controller()
        # xl wrote each boot target (memory = 256 MiB); Ballast writes its own.
        booted = {name: GUESTS[name][0] * KIB_PER_MIB for name in self.domids}
        wait_for("Ballast to write every guest's memory/target",
                 lambda: all(t is not None and t != booted[g]
                             for g, t in self.targets().items()), timeout_s=240)
        seen: dict[str, str] = {}
        status = status_json()
        for name, domid in self.domids.items():
            entry = find_vm(status, name, domid)
            if entry is None:
                raise CheckFailed(f"`ballast status --json` does not list {name}: {status}"[:600])
            seen[name] = vm_state(entry)
        figures = []
        for name, domid in self.domids.items():
            # While the balloon moves, the guest's own figure (every 2 s) and
            # its agent's report (on a change past its threshold) are taken
            # at different moments: they must agree once it settles.
            last = ""

            def agree(name: str = name, domid: int = domid) -> dict[str, Any] | None:
                nonlocal last
                report = self.xs.report(domid)
                state = self.xs.state(domid)
                if report is None:
                    last = f"{name}: no valid report in xenstore"
                    return None
                own, reported = state.get("mem_total_kb"), report.get("mem_total_kb")
                if not own or not reported or abs(own - reported) > 0.02 * own:
                    last = (f"{name}: reported mem_total_kb {reported} but the guest's "
                            f"/proc/meminfo says {own}")
                    return None
                return report

            try:
                report = wait_for(f"{name}'s report to agree with its /proc/meminfo", agree,
                                  timeout_s=60)
            except CheckFailed as exc:
                raise CheckFailed(f"{exc}: {last}") from None
            figures.append(f"{name} MemTotal {report.get('mem_total_kb')} kB, Committed_AS "
                           f"{report.get('committed_as_kb')} kB ({seen[name]})")
        return "; ".join(figures)

    # 2
    def rise_and_fall(self) -> str:
        self.require_controller()
        g, domid = "g1", self.domids["g1"]
        # From where Ballast has put an idle g1 (it boots at its ceiling).
        ceiling_kb = GUESTS[g][1] * KIB_PER_MIB
        wait_for("Ballast to shrink idle g1 by 120 MiB",
                 lambda: (t := self.targets()[g]) is not None and t <= ceiling_kb - 120 * 1024,
                 timeout_s=120)
        t0 = self.targets()[g] or 0
        m0 = self.guest_mib(g)
        own0 = self.xs.state(domid).get("mem_total_kb") or 0
        self.xs.ctl(domid, alloc_mib=200)
        t_up = wait_for("g1's memory/target to rise by 120 MiB",
                        lambda: (t := self.targets()[g]) and t >= t0 + 120 * KIB_PER_MIB and t,
                        timeout_s=90)
        try:
            wait_for("xl list to show g1 grown by 100 MiB",
                     lambda: self.guest_mib(g) >= m0 + 100, timeout_s=90)
            wait_for("g1's own MemTotal to grow by 100 MiB",
                     lambda: (self.xs.state(domid).get("mem_total_kb") or 0)
                     >= own0 + 100 * KIB_PER_MIB, timeout_s=90)
        except CheckFailed as exc:
            raise CheckFailed(f"{exc}: target {self.targets()[g]} kB, xl list "
                              f"{self.guest_mib(g)} MiB (was {m0}), Xen free "
                              f"{xl_info().get('free_memory')} MiB, guest sees "
                              f"{self.xs.state(domid)}") from None
        # Under emulation touching pages is slow, and the guest touches only
        # while MemAvailable stays above its margin: well over half is enough
        # to show the memory in use before it is freed.
        wait_for("g1 to touch 128 MiB of its 200", lambda: self.xs.state(domid)
                 .get("touched_mib", 0) >= 128, timeout_s=120)
        m_up = self.guest_mib(g)
        own_up = self.xs.state(domid).get("mem_total_kb")
        peak = max(self.targets()[g] or 0, t_up)
        self.xs.ctl(domid, alloc_mib=0)
        seen = [peak]
        deadline = time.monotonic() + 8 * INTERVAL_S + 10
        while time.monotonic() < deadline:
            time.sleep(INTERVAL_S / 2)
            t = self.targets()[g]
            if t is not None and t != seen[-1]:
                seen.append(t)
        steps = [a - b for a, b in pairwise(seen)]
        if len(steps) < 2 or any(s < 0 for s in steps):
            raise CheckFailed(f"after freeing, target went {seen}: expected several "
                              "decreasing steps")
        total = seen[0] - seen[-1]
        if steps[0] > 0.6 * total:
            raise CheckFailed(f"first shrink step {steps[0]} kB of {total} kB: not paced "
                              f"(targets {seen})")
        wait_for("xl list to show g1 shrinking", lambda: self.guest_mib(g) < m_up - 20,
                 timeout_s=30)
        return (f"target {t0} -> {t_up} kB on allocating 200 MiB (xl list {m0} -> {m_up} MiB, "
                f"guest MemTotal {own0} -> {own_up} kB); on freeing, targets {seen}")

    # 3
    def policy_cap(self) -> str:
        self.require_controller()
        g, domid = "g2", self.domids["g2"]
        cap_mib = 224
        # The cap first, then the demand: a guest already using more than a
        # new cap is ballooned below its use and meets the OOM killer, as the
        # operator asked (seen here: g2's workload was killed that way).
        must(["ballast", "policy", "set", g, "--max", f"{cap_mib}M"])
        wait_for(f"g2's target to be capped at {cap_mib} MiB",
                 lambda: (t := self.targets()[g]) is not None and t <= cap_mib * KIB_PER_MIB,
                 timeout_s=30)
        self.xs.ctl(domid, alloc_mib=256)
        wait_for("g2's demand to show in its report",
                 lambda: ((self.xs.report(domid) or {}).get("committed_as_kb") or 0)
                 > (cap_mib + 40) * KIB_PER_MIB, timeout_s=60)
        observed = []
        for _ in range(3):
            time.sleep(INTERVAL_S)
            observed.append(self.targets()[g])
        if any(t is None or t > cap_mib * KIB_PER_MIB for t in observed):
            raise CheckFailed(f"target left the cap: {observed}")
        wait_for("xl list to show g2 within the cap",
                 lambda: self.guest_mib(g) <= cap_mib + 1, timeout_s=60)
        mib = self.guest_mib(g)
        self.xs.ctl(domid, alloc_mib=0)  # the cap is lifted by check 4's policy
        return f"capped at {cap_mib} MiB while asking for more: targets {observed}, xl {mib} MiB"

    # 4
    def arbitration(self) -> str:
        self.require_controller()
        mins = {"g1": 128, "g2": 128, "g3": 128}
        weights = {"g1": 100, "g2": 400, "g3": 100}
        ceiling = {g: top for g, (_, top) in GUESTS.items()}  # lifts check 3's cap
        set_policies([["ballast", "policy", "set", g, "--min", f"{mins[g]}M",
                       "--weight", str(weights[g]), "--max", f"{ceiling[g]}M"]
                      for g in self.domids])
        for domid in self.domids.values():
            self.xs.ctl(domid, alloc_mib=256)
        problems: list[str] = []
        sample: dict[str, int | None] = {}
        free_mib = -1

        def shared_by_weight() -> bool:
            nonlocal sample, free_mib
            sample = self.targets()
            free_mib = int(xl_info().get("free_memory", "-1"))
            problems.clear()
            problems.extend(f"{g} target {t} kB below its minimum {mins[g]} MiB"
                            for g, t in sample.items()
                            if t is None or t < mins[g] * KIB_PER_MIB)
            above = {g: (t or 0) - mins[g] * KIB_PER_MIB for g, t in sample.items()}
            if above["g2"] <= max(above["g1"], above["g3"]):
                problems.append("weight 400 has no more above its minimum than weight 100: "
                                f"{above} kB")
            # Short host: what Xen has left is about the margin Ballast keeps.
            if free_mib > FREE_MARGIN_MIB + 64:
                problems.append(f"host not short: {free_mib} MiB still free in Xen")
            return not problems

        try:
            wait_for("arbitration", shared_by_weight, timeout_s=60, every_s=INTERVAL_S)
        except CheckFailed:
            wanted = {g: (self.xs.report(d) or {}).get("committed_as_kb")
                      for g, d in self.domids.items()}
            raise CheckFailed("; ".join(problems) + f" (targets {sample} kB, Committed_AS "
                              f"{wanted} kB, Xen free {free_mib} MiB)") from None
        finally:
            for domid in self.domids.values():
                self.xs.ctl(domid, alloc_mib=0)
        return (f"targets {sample} kB with minimums {mins} MiB and weights {weights}; "
                f"Xen free {free_mib} MiB")

    # 6
    def stale_and_garbage(self) -> str:
        self.require_controller()
        g3, d3 = "g3", self.domids["g3"]
        self.xs.ctl(d3, agent=False)

        def stale() -> str | None:
            entry = find_vm(status_json(), g3, d3)
            state = vm_state(entry) if entry else ""
            return state if state in ("stale", "dead") else None

        time.sleep(STALE_S + INTERVAL_S)
        state = wait_for("g3 to be shown stale", stale, timeout_s=30, every_s=2)
        held = self.targets()[g3]
        time.sleep(3 * INTERVAL_S)
        if self.targets()[g3] != held:
            raise CheckFailed(f"stale g3's target moved from {held} to {self.targets()[g3]} "
                              "before the dead timeout")
        g2, d2 = "g2", self.domids["g2"]
        before = self.targets()[g2]
        others_before = {g: t for g, t in self.targets().items() if g != g2}
        for seq in range(4):
            self.xs.ctl(d2, garbage=seq)
            time.sleep(INTERVAL_S + 1)
        after = self.targets()[g2]
        if before is not None and after is not None and after > before:
            raise CheckFailed(f"g2 writing garbage got more memory: {before} -> {after} kB")
        if not self.controller.alive():
            raise CheckFailed(f"the controller died on garbage: {self.controller.tail()}")
        return (f"g3 without agent shown {state!r}, target held at {held} kB; g2's garbage "
                f"reports: target {before} -> {after} kB, others {others_before} -> "
                f"{ {g: t for g, t in self.targets().items() if g != g2} }")

    # 5
    def status_and_history(self) -> str:
        self.require_controller()
        table = must(["ballast", "status"])
        missing = [g for g in self.domids if g not in table]
        if missing:
            raise CheckFailed(f"`ballast status` does not show {missing}")
        raw = must(["ballast", "history", "g1", "--since", "30m", "--resolution", "raw",
                     "--figure", "target", "--json"])
        try:
            rows = json.loads(raw)
        except ValueError as exc:
            raise CheckFailed(f"`ballast history g1 --json` is not JSON: {exc}") from None
        targets = [int(v) for v in _numbers_named(rows, "target")]
        rises = sum(1 for a, b in pairwise(targets) if b > a)
        falls = sum(1 for a, b in pairwise(targets) if b < a)
        if not rises or not falls:
            raise CheckFailed(f"history of g1 does not show the rise and the fall: "
                              f"{len(targets)} targets, {rises} rises, {falls} falls")
        return (f"status lists {sorted(self.domids)}; history of g1 has {len(targets)} "
                f"targets, {rises} rises, {falls} falls")


def _numbers_named(data: Any, stem: str) -> list[float]:
    """Every number under a key starting with ``stem`` (``target``, ``target_kb``...)."""
    out: list[float] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str) and key.startswith(stem) and isinstance(value, int | float):
                out.append(value)
            else:
                out.extend(_numbers_named(value, stem))
    elif isinstance(data, list):
        for item in data:
            out.extend(_numbers_named(item, stem))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="The e2e scenario inside dom0.")
    parser.add_argument("--provision", metavar="ROOT",
                        help="on the build host: prepare dom0's image tree ROOT and exit")
    parser.add_argument("--ballast", default="ballast", help="with --provision: the command")
    parser.add_argument("--results")
    parser.add_argument("--xenstored", default="oxenstored")
    parser.add_argument("--scenario", choices=("full", "conformance", "workload"),
                        default="full", help="all of it, or only the probes or only checks 1-6")
    parser.add_argument("--deadline", type=float, default=0.0,
                        help="Unix time by which the results must be saved (0: no limit)")
    args = parser.parse_args()
    if args.provision:
        provision(args.provision, args.ballast)
        return 0
    if not args.results:
        parser.error("--results is required")
    if args.deadline > 0:
        BUDGET.deadline = args.deadline
        if not 0 < BUDGET.remaining() < 3600:
            say(f"E2E-WARN clock off: {BUDGET.remaining():.0f} s to the deadline; using 300 s")
            BUDGET.deadline = time.time() + 300
    os.makedirs(args.results, exist_ok=True)
    results = Results(args.results)
    info = xl_info()
    results.note(f"xenstored: {args.xenstored}; Xen {info.get('xen_version')}, "
                 f"{info.get('total_memory')} MiB total, {info.get('free_memory')} MiB free, "
                 f"{info.get('nr_cpus')} CPUs")

    creating: dict[str, subprocess.Popen[str]] = {}
    if args.scenario in ("full", "conformance"):
        with phase("conformance"):
            # The workload guests are created as soon as the conformance
            # guest's introduction was seen, so they boot while the probes run.
            start = (lambda: creating.update(start_guests())) if args.scenario == "full" \
                else (lambda: None)
            conformance(results, start)
    if args.scenario == "conformance":
        return 0
    xs = Xs()
    with phase("guests"):
        domids = create_guests(results, xs, creating)
    with phase("controller"):
        controller = start_controller(results)
    scenario = Scenario(results, xs, domids, controller)
    checks: list[tuple[str, str, Callable[[], str]]] = [
        ("1", "controller discovers every guest and reads its real reports", scenario.discovery),
        ("2", "target rises with allocation and falls at the law's pace", scenario.rise_and_fall),
        ("3", "`ballast policy set GUEST --max` caps the guest", scenario.policy_cap),
        ("4", "a short host: minimums hold, the rest shared by weight", scenario.arbitration),
        ("6", "agent killed: stale and held; garbage report: nothing gained",
         scenario.stale_and_garbage),
        ("5", "`ballast status` and `ballast history` show what happened",
         scenario.status_and_history),
    ]
    with phase("checks"):
        for check_id, name, body in checks:
            run_check(results, check_id, name, body)
    with open(os.path.join(args.results, "targets.json"), "w") as f:
        json.dump(scenario.history, f)
    if controller.proc is not None and controller.alive():
        controller.proc.terminate()
        try:
            controller.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            controller.proc.kill()
    for name in GUESTS:
        for src in (f"{CONSOLE_DIR}/guest-{name}.log",):
            if os.path.exists(src):
                with open(src, "rb") as fin, open(os.path.join(args.results, f"guest-{name}.log"),
                                                  "wb") as fout:
                    fout.write(fin.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
