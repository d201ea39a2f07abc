"""The wire-level simulator's parts that need no sockets: the virtual clock, the
simulated host's physics (hypervisor and guest models moving together), the
agent's memory source and actuator over the model, the host-process protocol."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agents.schema import Directive
from agents.source import to_report
from orchestrator.errors import UsageError
from orchestrator.hypervisor import DomainMemory, HostMemory
from orchestrator.sim import scenario as scenarios
from orchestrator.sim.model import KB_PER_MB, ModelParams, report
from orchestrator.sim.scenario import Scenario
from orchestrator.sim.wire.clock import VirtualClock
from orchestrator.sim.wire.guests import (
    ModelShrinkActuator,
    ModelSource,
    SimHost,
    agent_settings,
    plan_domains,
)
from orchestrator.sim.wire.hostlink import (
    HostConfig,
    decode,
    encode,
    memory_message,
    outcome_message,
    parse_memory,
    parse_outcome,
)
from orchestrator.sim.wire.run import default_agent_interval_s, scenario_policies

GIB_KB = 1024 * KB_PER_MB
EPOCH = datetime(2026, 3, 1, tzinfo=UTC)


class FakeMonotonic:
    """The one seam faked here: the wall clock the virtual clock reads."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def write_scenario(directory: Path, rows: dict[str, str], *, memory_mb: int = 16384,
                   extra: str = "") -> Scenario:
    """A scenario with one VM per trace (4 GiB static max each)."""
    (directory / "traces").mkdir(exist_ok=True)
    vms = []
    for name, csv in rows.items():
        (directory / "traces" / f"{name}.csv").write_text(
            "t_s,unreclaimable_mb,hot_cache_mb,cold_cache_mb,committed_mb\n" + csv)
        vms.append(f'[[vm]]\nname = "{name}"\nstatic_max_mb = 4096\nswap_mb = 1024\n'
                   f'trace = "traces/{name}.csv"\n{extra}\n')
    toml = directory / "small.toml"
    toml.write_text(f"[host]\nmemory_mb = {memory_mb}\ndom0_reserve_mb = 1024\n"
                    f"duration_s = 3600\n\n" + "\n".join(vms))
    return scenarios.load_file(toml)


def test_virtual_clock_runs_speed_times_the_wall_clock() -> None:
    wall = FakeMonotonic()
    clock = VirtualClock(speed=720, epoch=EPOCH, monotonic=wall)
    clock.start()
    wall.now_s += 2.5
    assert clock.now_s() == pytest.approx(1800.0)
    assert clock.wall_elapsed_s() == pytest.approx(2.5)
    assert clock.wall_s(3600) == pytest.approx(5.0)
    assert clock.wall_time() == EPOCH + timedelta(seconds=1800)
    # A second process given the same origin reads the same virtual time.
    other = VirtualClock(speed=720, epoch=EPOCH, monotonic=wall)
    other.start(clock.origin_s)
    assert other.now_s() == clock.now_s()


@pytest.mark.parametrize("speed", [0, -1, 1e9])
def test_virtual_clock_refuses_impossible_speeds(speed: float) -> None:
    with pytest.raises(UsageError):
        VirtualClock(speed=speed, epoch=EPOCH)


def test_agent_intervals_are_virtual_seconds_given_in_wall_seconds(tmp_path: Path) -> None:
    settings = agent_settings(tmp_path / "socket", speed=600, interval_s=2.0)
    assert settings.sample_interval_s == pytest.approx(2.0 / 600)
    assert settings.policy.heartbeat_s == pytest.approx(30.0 / 600)
    assert settings.policy.min_interval_s == pytest.approx(1.0 / 600)
    assert settings.xenstore_timeout_s == 5.0  # real I/O: not scaled
    assert default_agent_interval_s(60) == 1.0
    assert default_agent_interval_s(720) > 1.0


def test_a_lowered_target_shrinks_the_guest_and_the_hypervisor_together(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, {"idle": "0,300,100,2000,600\n"})
    now = [0.0]
    host = SimHost(scenario, clock=lambda: now[0], host_name="h")
    (dom,) = host.domains
    assert host.hv.actual_kb(dom.domid) == dom.start_kb == 4096 * KB_PER_MB
    host.set_target(dom.domid, 2 * GIB_KB)
    now[0] = 10.0
    rate = ModelParams().balloon_rate_kb_s
    state = host.state(dom.domid)
    # Ten virtual seconds at the balloon rate, cold cache given up on the way.
    assert state.alloc_kb == host.hv.actual_kb(dom.domid) == dom.start_kb - 10 * rate
    now[0] = 60.0
    assert host.state(dom.domid).alloc_kb == host.hv.actual_kb(dom.domid) == 2 * GIB_KB
    sample = ModelSource(host, dom.domid).sample()
    assert sample.balloon_current_kb == 2 * GIB_KB
    assert sample.balloon_target_kb == 2 * GIB_KB
    assert sample.uptime_s == 60.0
    # The real agent reports exactly what the model renders (schema v1).
    expected = replace(report(host.state(dom.domid)), seq=1, directive_ack=None)
    assert to_report(sample, seq=1, ack=None) == expected


def test_a_guest_cannot_be_ballooned_below_what_it_can_give(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, {"busy": "0,3000,200,0,3200\n"})
    now = [0.0]
    host = SimHost(scenario, clock=lambda: now[0], host_name="h")
    (dom,) = host.domains
    host.set_target(dom.domid, 512 * KB_PER_MB)
    now[0] = 600.0
    state = host.state(dom.domid)
    floor = state.config.floor_kb(state.pages.unreclaimable_kb)
    assert state.alloc_kb == floor > 512 * KB_PER_MB
    assert host.hv.actual_kb(dom.domid) == state.alloc_kb  # Xen agrees with the guest
    assert state.counters.ooms == 0


def test_growth_is_bounded_by_what_the_host_has_free(tmp_path: Path) -> None:
    # 9 GiB host, 1 GiB for dom0: two 4 GiB guests fit only if neither holds more.
    scenario = write_scenario(tmp_path, {"a": "0,500,0,0,600\n", "b": "0,500,0,0,600\n"},
                              memory_mb=9216)
    now = [0.0]
    host = SimHost(scenario, clock=lambda: now[0], host_name="h")
    a, b = host.domains
    budget = scenario.budget_kb
    host.set_target(a.domid, 1 * GIB_KB)
    now[0] = 100.0
    host.advance()
    host.set_target(b.domid, 4 * GIB_KB)
    host.set_target(a.domid, 4 * GIB_KB)  # both want everything now
    for t in range(101, 200):
        now[0] = float(t)
        host.advance()
        held = host.hv.actual_kb(a.domid) + host.hv.actual_kb(b.domid)
        assert held <= budget
        assert host.hv.free_kb() >= 0
    assert host.hv.actual_kb(a.domid) + host.hv.actual_kb(b.domid) == budget


def test_the_run_is_scored_like_a_fast_run(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, {"step": "0,300,0,0,400\n600,2500,0,0,2600\n"})
    now = [0.0]
    host = SimHost(scenario, clock=lambda: now[0], host_name="h")
    (dom,) = host.domains
    host.set_target(dom.domid, 1 * GIB_KB)  # too little once the demand steps up
    now[0] = 1200.0
    metrics = host.metrics()
    assert metrics.deficit_mb_s > 0
    assert metrics.footprint_mb < 4096


async def test_the_actuator_pulls_swap_back_into_free_room(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, {"swapper": "0,2000,0,0,2100\n"})
    now = [0.0]
    host = SimHost(scenario, clock=lambda: now[0], host_name="h")
    (dom,) = host.domains
    host.set_target(dom.domid, 1 * GIB_KB)  # anon does not fit: swapped out
    now[0] = 120.0
    swapped = host.state(dom.domid).swapped_kb
    assert swapped > 0
    host.set_target(dom.domid, 4 * GIB_KB)  # room again
    actuator = ModelShrinkActuator(host, dom.domid, poll_s=0.001)

    async def time_passes() -> None:
        while True:
            now[0] += 1.0
            await asyncio.sleep(0.001)

    ticker = asyncio.create_task(time_passes())
    try:
        ack = await asyncio.wait_for(actuator.apply(Directive(seq=7, swap_target_kb=0)), 30)
    finally:
        ticker.cancel()
    assert (ack.seq, ack.outcome) == (7, "done")
    assert host.state(dom.domid).swapped_kb == 0


def test_domains_are_numbered_and_named_stably(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, {"a": "0,500,0,0,600\n", "b": "0,500,0,0,600\n"})
    first = plan_domains(scenario, host_name="h1", params=ModelParams())
    again = plan_domains(scenario, host_name="h1", params=ModelParams())
    other = plan_domains(scenario, host_name="h2", params=ModelParams())
    assert [d.domid for d in first] == [1, 2]
    assert [d.uuid for d in first] == [d.uuid for d in again]
    assert {d.uuid for d in first}.isdisjoint(d.uuid for d in other)


def test_scenario_bounds_become_policy_fields(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, {"a": "0,500,0,0,600\n"},
                              extra="min_mb = 1024\nmax_mb = 3072\nweight = 2.0")
    (fields,) = scenario_policies(scenario).values()
    assert fields["min_kb"] == 1024 * KB_PER_MB
    assert fields["max_kb"] == 3072 * KB_PER_MB
    assert isinstance(fields["weight"], int) and fields["weight"] > 256
    assert scenario_policies(scenarios.load("mixed-day")) == {}


def test_host_protocol_round_trips() -> None:
    host = HostMemory(total_kb=16 * GIB_KB, free_kb=3 * GIB_KB)
    domains = {0: DomainMemory(domid=0, name="Domain-0", uuid=None, actual_kb=GIB_KB),
               5: DomainMemory(domid=5, name="web", uuid="u5", actual_kb=2 * GIB_KB,
                               max_kb=4 * GIB_KB, target_kb=2 * GIB_KB, kind="pv")}
    assert parse_memory(decode(encode(memory_message(host, domains)))) == (host, domains)
    outcome = parse_outcome(decode(encode(outcome_message(12.0, 34, None))))
    assert (outcome.t_s, outcome.reports, outcome.metrics) == (12.0, 34, None)
    config = HostConfig(scenario="/s.toml", speed=720.0, xenstore_dir="/x", control="/c",
                        host_name="h", agent_interval_s=1.5)
    assert HostConfig.from_json(config.to_json()) == config
