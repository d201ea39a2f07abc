"""Wire-level runs: the project's xenstore server, the real agents over their
own domain sockets in the host process, the real controller and a real
SQLite history, all in virtual time; and ``ballast sim`` stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.control.policy import DEFAULT_STALE_S
from orchestrator.sim import scenario as scenarios
from orchestrator.sim.model import KB_PER_MB, ModelParams
from orchestrator.sim.wire import SimResult, SimSettings, run_sim

HOST = "wire-host"
STEP_S = 300.0
RAMP_ROWS = 14  # 300 -> 3100 MB of unreclaimable memory, 600 -> 3400 MB committed
RAMP_END_S = STEP_S + 10 * RAMP_ROWS
RUN_S = 1200.0
SPEED = 100.0
INTERVAL_S = 5.0
# Report ages a cycle may see: the agents' heartbeat is 30 virtual seconds;
# the law calls a report stale at 60 s. A wall-clock hiccup of h seconds in
# one of the processes ages a report by SPEED * h virtual seconds, so the
# bound is the law's own, with the heartbeat's 30 s of slack for busy machines.
MAX_AGE_S = DEFAULT_STALE_S


def small_scenario(directory: Path) -> Path:
    """Two 4 GiB guests: one idle with a 1 GiB floor, one whose demand ramps up."""
    traces = directory / "traces"
    traces.mkdir(parents=True)
    header = "t_s,unreclaimable_mb,hot_cache_mb,cold_cache_mb,committed_mb\n"
    (traces / "idle.csv").write_text(header + "0,300,100,1500,600\n")
    # From STEP_S the workload grows by 3 GB at 20 MB/s (a row every 10 s).
    ramp = "".join(f"{STEP_S + 10 * i:g},{300 + 200 * i},100,{1500 if i == 0 else 0},"
                   f"{600 + 200 * i}\n" for i in range(1, RAMP_ROWS + 1))
    (traces / "grow.csv").write_text(header + "0,300,100,1500,600\n" + ramp)
    toml = directory / "two.toml"
    toml.write_text(
        f"[host]\nmemory_mb = 12288\ndom0_reserve_mb = 1024\nduration_s = {RUN_S:g}\n\n"
        '[[vm]]\nname = "idle"\nstatic_max_mb = 4096\nswap_mb = 1024\n'
        'trace = "traces/idle.csv"\nmin_mb = 1024\n\n'
        '[[vm]]\nname = "grow"\nstatic_max_mb = 4096\nswap_mb = 1024\n'
        'trace = "traces/grow.csv"\n'
    )
    return toml


def small_scenario_path(db: Path) -> Path:
    """The scenario of the run whose history is ``db``."""
    return db.parent / "scenario" / "two.toml"


def cli_json(db: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--db", str(db), "--host-name", HOST, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(scope="module")
def wire_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimResult, Path]]:
    work = Path(tmp_path_factory.mktemp("wire", numbered=True))
    toml = small_scenario(work / "scenario")
    settings = SimSettings(
        scenario=scenarios.load_file(toml), speed=SPEED, directory=work / "run",
        db=str(work / "ballast.db"), host_name=HOST,
        # An hour ago: within the store's raw retention, and wholly in the past.
        epoch=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1),
        interval_s=INTERVAL_S,
    )
    result = asyncio.run(run_sim(settings))
    yield result, work / "ballast.db"


@pytest.mark.slow
def test_the_controller_keeps_virtual_time(wire_run: tuple[SimResult, Path]) -> None:
    result, _db = wire_run
    assert result.completed and result.virtual_s == RUN_S
    # One virtual second per 1/SPEED wall second, give or take start and stop.
    assert result.wall_s == pytest.approx(RUN_S / SPEED, rel=0.1)
    # The loop waits its interval in virtual time: cycles come once per 5 s.
    assert result.timer_gap_p50_s is not None
    assert INTERVAL_S * 0.99 <= result.timer_gap_p50_s <= INTERVAL_S * 1.5
    assert result.cycles >= 0.6 * RUN_S / INTERVAL_S
    assert result.failed_cycles == 0
    # Agents report in virtual time: at least a heartbeat every 30 s (two
    # guests; more when figures move), and nothing stale.
    assert result.reports >= 0.8 * 2 * RUN_S / 30
    assert 0 < result.max_report_age_s < MAX_AGE_S
    assert result.stale_observations == 0
    assert result.metrics is not None and result.metrics.ooms == 0


@pytest.mark.slow
def test_targets_follow_demand_in_the_history(wire_run: tuple[SimResult, Path]) -> None:
    result, db = wire_run
    since = result.epoch.isoformat()
    until = (result.epoch + timedelta(seconds=RUN_S + 60)).isoformat()

    def points(vm: str) -> list[dict[str, Any]]:
        doc = cli_json(db, "history", vm, "--since", since, "--until", until,
                       "--resolution", "raw", "--figure", "target,actual,committed")
        return list(doc["points"])

    idle, grow = points("idle"), points("grow")
    # History is recorded at epoch + virtual time: the whole run, minutes apart.
    for series in (idle, grow):
        times = [datetime.fromisoformat(p["time"]) for p in series]
        assert min(times) >= result.epoch
        assert max(times) - min(times) >= timedelta(seconds=0.9 * RUN_S)
    static_kb = 4096 * KB_PER_MB
    # Both guests start at their maximum with the same idle demand and are
    # ballooned down; the idle one never below its scenario minimum.
    assert idle[-1]["target"] < 0.9 * static_kb
    assert min(p["target"] for p in idle) >= 1024 * KB_PER_MB
    at_step = result.epoch + timedelta(seconds=STEP_S)
    before = [p for p in grow if datetime.fromisoformat(p["time"]) < at_step]
    ramped = result.epoch + timedelta(seconds=RAMP_END_S + 60)
    after = [p for p in grow if datetime.fromisoformat(p["time"]) > ramped]
    assert before and after
    # The ramp reached the controller through the agent's reports: Committed_AS
    # is the trace's, exactly, before and after.
    committed = {p["committed"] for p in before if p["committed"] is not None}
    assert committed == {600 * KB_PER_MB}
    assert {p["committed"] for p in after} == {3400 * KB_PER_MB}
    # The growing guest gets what its demand needs from then on (the host has
    # room for both), while the idle one keeps less.
    spec = next(vm for vm in scenarios.load_file(small_scenario_path(db)).vms if vm.name == "grow")
    need_kb = spec.guest_config(ModelParams()).need_kb(spec.trace.demand_at(RUN_S))
    assert before[-1]["target"] < need_kb <= after[-1]["target"]
    assert after[-1]["actual"] >= need_kb
    assert idle[-1]["target"] < after[-1]["target"]
    # Decisions and the scenario's policy are in the store too.
    decisions = cli_json(db, "decisions", "grow", "--since", since, "--until", until)
    assert any(d["new_target_kb"] > d["old_target_kb"] for d in decisions)
    assert any(d["new_target_kb"] < d["old_target_kb"] for d in decisions)
    policy = cli_json(db, "policy", "show", "idle")
    assert policy["policy"]["min_kb"] == 1024 * KB_PER_MB
    assert policy["changes"][-1]["who"] == "ballast sim"
    status = cli_json(db, "status")
    assert {vm["name"]: vm["state"] for vm in status["vms"]} == {"idle": "ok", "grow": "ok"}


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_sigterm_stops_ballast_sim_cleanly(tmp_path: Path) -> None:
    toml = small_scenario(tmp_path / "scenario")
    db = tmp_path / "ballast.db"
    work = tmp_path / "run"
    exe = Path(sys.executable).with_name("ballast")
    proc = subprocess.Popen(
        [str(exe), "sim", "--scenario", str(toml), "--speed", "60", "--duration", "6h",
         "--db", str(db), "--dir", str(work), "--host-name", HOST, "--no-live"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # until the controller has recorded both guests, reporting
            assert proc.poll() is None, proc.communicate()
            if db.exists():
                result = CliRunner().invoke(
                    app, ["status", "--db", str(db), "--host-name", HOST, "--json"])
                if result.exit_code == 0:
                    vms = json.loads(result.output).get("vms", [])
                    if len(vms) == 2 and all(vm["state"] == "ok" for vm in vms):
                        break
            assert time.monotonic() < deadline, "the simulation never showed two guests"
            time.sleep(0.2)
        assert _processes_mentioning(str(work)), "xenstored and the host process run"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "stopped early" in text and "Traceback" not in err.decode()
    assert "history: " + str(db) in text
    # Its children went with it.
    deadline = time.monotonic() + 5
    while _processes_mentioning(str(work)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(str(work)) == []
    now = datetime.now(UTC)
    # Virtual time runs ahead of the wall clock from --start now.
    events = cli_json(db, "events", "--since", (now - timedelta(hours=1)).isoformat(),
                      "--until", (now + timedelta(days=1)).isoformat())
    kinds = {e["kind"] for e in events}
    assert {"controller_started", "controller_stopped"} <= kinds


def test_cli_refuses_bad_options_in_one_line(tmp_path: Path) -> None:
    for args, words in (
        (["--scenario", "no-such-scenario"], "unknown scenario"),
        (["--speed", "0"], "speed"),
        (["--duration", "soon"], "invalid duration"),
        (["--start", "yesterday-ish"], "invalid time"),
    ):
        result = CliRunner().invoke(app, ["sim", *args, "--no-live", "--dir", str(tmp_path)])
        assert result.exit_code != 0
        assert words in result.output and "Traceback" not in result.output
