"""Swap-shrink actuators: decisions, refusals and outcomes against fixture trees."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.actuators import (
    NullActuator,
    SelfballoonActuator,
    ShrinkGuard,
    SubprocessSwapCommands,
    SwapoffActuator,
    plan_swapoff,
)
from agents.procfs import SwapDevice
from agents.schema import Directive, DirectiveAck
from agents.source import SELFBALLOON_DIR, MemorySample, ProcMemorySource
from orchestrator.errors import TransientError, UsageError
from tests.agents.guest import FakeSwapCommands, GuestKernel, copy_tree

GUARD = ShrinkGuard()


def margin_kb(mem_total_kb: int) -> int:
    return max(64 * 1024, math.ceil(0.05 * mem_total_kb))


# ---------------------------------------------------------------- the pure plan

def dev(path: str, used_kb: int, *, priority: int = -2) -> SwapDevice:
    return SwapDevice(path=path, kind="partition", size_kb=4 * 1024 * 1024, used_kb=used_kb,
                      priority=priority)


def mem(*, available_kb: int, swap_used_kb: int, psi: float | None = 0.0) -> MemorySample:
    swap_kb = 16 * 1024 * 1024
    return MemorySample(mem_total_kb=8 * 1024 * 1024, mem_available_kb=available_kb,
                        swap_total_kb=swap_kb, swap_free_kb=swap_kb - swap_used_kb,
                        psi_some_avg10=psi)


ROOM_8G = 2_000_000 - margin_kb(8 * 1024 * 1024)  # room when 2 GB are available


def test_plan_prefers_the_smallest_device_that_reaches_the_target() -> None:
    devices = (dev("/a", 500_000), dev("/b", 300_000), dev("/c", 100_000))
    plan = plan_swapoff(devices, mem(available_kb=2_000_000, swap_used_kb=900_000),
                        target_kb=650_000, guard=GUARD)
    assert plan.device == devices[1]  # 300 000 >= the 250 000 excess, smaller than /a


def test_plan_takes_the_fullest_fitting_device_when_none_suffices() -> None:
    devices = (dev("/a", ROOM_8G + 1), dev("/b", 300_000), dev("/c", 100_000))
    plan = plan_swapoff(devices, mem(available_kb=2_000_000, swap_used_kb=2_000_000),
                        target_kb=0, guard=GUARD)
    assert plan.device == devices[1]


def test_plan_refuses_when_nothing_fits() -> None:
    devices = (dev("/a", ROOM_8G + 1),)
    plan = plan_swapoff(devices, mem(available_kb=2_000_000, swap_used_kb=ROOM_8G + 1),
                        target_kb=0, guard=GUARD)
    assert plan.device is None and not plan.done
    assert plan.reason == f"smallest device holds {ROOM_8G + 1} KiB but only {ROOM_8G} KiB fit"


def test_plan_refuses_under_pressure_and_when_blind() -> None:
    devices = (dev("/a", 1000),)
    stalled = plan_swapoff(devices, mem(available_kb=2_000_000, swap_used_kb=1000, psi=10.5),
                           target_kb=0, guard=GUARD)
    assert stalled.device is None
    assert stalled.reason == "guest under memory pressure (PSI some avg10 10.50%)"
    blind = plan_swapoff(devices, MemorySample(swap_total_kb=2000, swap_free_kb=1000),
                         target_kb=0, guard=GUARD)
    assert blind.device is None and "unreadable" in blind.reason


def test_plan_skips_deleted_and_already_cycled_devices() -> None:
    devices = (SwapDevice(path="/gone (deleted)", kind="file", size_kb=10, used_kb=5, priority=-2),
               dev("/a", 1000))
    sample = mem(available_kb=2_000_000, swap_used_kb=1005)
    assert plan_swapoff(devices, sample, target_kb=0, guard=GUARD).device == devices[1]
    again = plan_swapoff(devices, sample, target_kb=0, guard=GUARD, exclude=frozenset({"/a"}))
    assert again.device is None and again.reason == "no swap device left to cycle"


def test_plan_is_done_within_target() -> None:
    plan = plan_swapoff((dev("/a", 1000),), mem(available_kb=10, swap_used_kb=1000),
                        target_kb=1000, guard=GUARD)
    assert plan.done and plan.device is None


@given(
    used=st.lists(st.integers(0, 4_000_000), min_size=1, max_size=5),
    available_kb=st.integers(0, 8 * 1024 * 1024),
    target_kb=st.integers(0, 10_000_000),
    psi=st.floats(0, 100),
)
def test_plan_never_takes_in_more_than_fits(used: list[int], available_kb: int, target_kb: int,
                                            psi: float) -> None:
    devices = tuple(dev(f"/d{i}", u) for i, u in enumerate(used))
    sample = mem(available_kb=available_kb, swap_used_kb=sum(used), psi=psi)
    plan = plan_swapoff(devices, sample, target_kb=target_kb, guard=GUARD)
    if plan.device is not None:
        assert plan.device.used_kb <= available_kb - margin_kb(8 * 1024 * 1024)
        assert psi <= GUARD.max_psi_some_avg10
        assert sum(used) > target_kb


def test_guard_rejects_nonsense() -> None:
    with pytest.raises(UsageError):
        ShrinkGuard(margin_kb=-1)
    with pytest.raises(UsageError):
        ShrinkGuard(max_psi_some_avg10=101)


# ---------------------------------------------------------------- swapoff on a fixture tree
# linux-5.10-xen-hvm: /dev/xvda3 holds 307200 KiB (priority -2), "/var/swap file"
# 51200 KiB (priority 5); MemAvailable 2973212 KiB of 4029904.

HVM_MARGIN = margin_kb(4029904)


@pytest.fixture
def hvm(tmp_path: Path) -> GuestKernel:
    return GuestKernel(copy_tree("linux-5.10-xen-hvm", tmp_path))


def swapoff_actuator(kernel: GuestKernel, commands: FakeSwapCommands) -> SwapoffActuator:
    return SwapoffActuator(ProcMemorySource(kernel.root), kernel.root, commands, guard=GUARD)


async def test_swapoff_reaches_target_with_one_cycle(hvm: GuestKernel) -> None:
    commands = FakeSwapCommands(hvm)
    ack = await swapoff_actuator(hvm, commands).apply(Directive(seq=4, swap_target_kb=100_000))
    assert commands.calls == [("swapoff", "/dev/xvda3", None), ("swapon", "/dev/xvda3", None)]
    assert ack == DirectiveAck(seq=4, outcome="done",
                               detail="cycled /dev/xvda3; 51200 KiB swapped, within the target")
    assert hvm.meminfo("SwapTotal") - hvm.meminfo("SwapFree") == 51200


async def test_swapoff_to_zero_cycles_each_device_and_keeps_priorities(hvm: GuestKernel) -> None:
    commands = FakeSwapCommands(hvm)
    ack = await swapoff_actuator(hvm, commands).apply(Directive(seq=5, swap_target_kb=0))
    assert commands.calls == [
        ("swapoff", "/dev/xvda3", None), ("swapon", "/dev/xvda3", None),
        ("swapoff", "/var/swap file", None), ("swapon", "/var/swap file", 5),
    ]
    assert ack.outcome == "done"
    assert [(d.path, d.used_kb) for d in hvm.swaps()] == [("/dev/xvda3", 0),
                                                          ("/var/swap file", 0)]


async def test_swapoff_refuses_when_no_device_fits(hvm: GuestKernel) -> None:
    hvm.set_meminfo(MemAvailable=HVM_MARGIN + 51199)
    commands = FakeSwapCommands(hvm)
    ack = await swapoff_actuator(hvm, commands).apply(Directive(seq=6, swap_target_kb=0))
    assert commands.calls == []
    assert ack == DirectiveAck(seq=6, outcome="refused",
                               detail="smallest device holds 51200 KiB but only 51199 KiB fit")


async def test_swapoff_does_what_fits_and_reports_partial(hvm: GuestKernel) -> None:
    hvm.set_meminfo(MemAvailable=HVM_MARGIN + 51200)
    commands = FakeSwapCommands(hvm)
    ack = await swapoff_actuator(hvm, commands).apply(Directive(seq=7, swap_target_kb=0))
    assert [c[:2] for c in commands.calls] == [("swapoff", "/var/swap file"),
                                               ("swapon", "/var/swap file")]
    assert ack.outcome == "partial"
    assert ack.detail.startswith("cycled /var/swap file; smallest device holds 307200 KiB")


async def test_swapoff_failure_is_reported(hvm: GuestKernel) -> None:
    commands = FakeSwapCommands(hvm, fail_swapoff=True)
    ack = await swapoff_actuator(hvm, commands).apply(Directive(seq=8, swap_target_kb=0))
    assert ack.outcome == "refused"
    assert ack.detail == "swapoff /dev/xvda3 exited 255: Cannot allocate memory"


async def test_swapon_failure_says_the_device_is_left_off(hvm: GuestKernel) -> None:
    commands = FakeSwapCommands(hvm, fail_swapon=True)
    ack = await swapoff_actuator(hvm, commands).apply(Directive(seq=9, swap_target_kb=0))
    assert ack.outcome == "partial"
    assert ack.detail.startswith("/dev/xvda3 left off: swapon /dev/xvda3 exited 255")


async def test_swapon_completes_even_when_the_agent_is_stopped(hvm: GuestKernel) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    class SlowSwapon(FakeSwapCommands):
        async def swapon(self, path: str, *, priority: int | None) -> None:
            started.set()
            await release.wait()
            await super().swapon(path, priority=priority)

    commands = SlowSwapon(hvm)
    task = asyncio.create_task(swapoff_actuator(hvm, commands).apply(
        Directive(seq=10, swap_target_kb=100_000)))
    await started.wait()
    task.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert commands.calls[-1] == ("swapon", "/dev/xvda3", None)
    assert [d.path for d in hvm.swaps()] == ["/var/swap file", "/dev/xvda3"]


async def test_no_target_means_nothing_to_do(hvm: GuestKernel) -> None:
    commands = FakeSwapCommands(hvm)
    ack = await swapoff_actuator(hvm, commands).apply(Directive(seq=11, swap_target_kb=None))
    assert (ack.outcome, commands.calls) == ("done", [])


async def test_real_swap_commands_report_failures_without_touching_swap() -> None:
    # A path that does not exist: swapoff/swapon fail before the kernel does anything.
    commands = SubprocessSwapCommands(timeout_s=30)
    with pytest.raises(TransientError, match=r"^swapoff -- /nonexistent/ballast-swap exited"):
        await commands.swapoff("/nonexistent/ballast-swap")
    with pytest.raises(TransientError, match=r"^swapon -p 3 -- /nonexistent/ballast-swap exited"):
        await commands.swapon("/nonexistent/ballast-swap", priority=3)


# ---------------------------------------------------------------- legacy self-shrink knobs
# linux-4.19-xen-pv: tmem guest, no frontswap count, so swap in use (184320 KiB)
# is the measure; MemAvailable 1225260 of 2027908 KiB; frontswap_hysteresis 20.

PV_MARGIN = margin_kb(2027908)


class KernelClock:
    """Virtual time: each sleep is one selfballoon worker run of the kernel."""

    def __init__(self, kernel: GuestKernel, *, shrinking: bool = True) -> None:
        self.kernel, self.now_s, self.shrinking = kernel, 0.0, shrinking
        self.knob_seen: list[str] = []

    async def sleep(self, seconds: float) -> None:
        self.now_s += seconds
        self.knob_seen.append(self.kernel.knob("frontswap_selfshrinking"))
        if self.shrinking:
            self.kernel.selfshrink_tick()

    def time(self) -> float:
        return self.now_s


@pytest.fixture
def pv(tmp_path: Path) -> GuestKernel:
    return GuestKernel(copy_tree("linux-4.19-xen-pv", tmp_path))


def selfballoon(kernel: GuestKernel, clock: KernelClock) -> SelfballoonActuator:
    return SelfballoonActuator(ProcMemorySource(kernel.root), kernel.root / SELFBALLOON_DIR,
                               guard=GUARD, poll_s=5.0, max_duration_s=300.0,
                               sleep=clock.sleep, clock=clock.time)


async def test_selfshrink_runs_until_the_target_then_stops(pv: GuestKernel) -> None:
    clock = KernelClock(pv)
    ack = await selfballoon(pv, clock).apply(Directive(seq=3, swap_target_kb=100_000))
    used = pv.meminfo("SwapTotal") - pv.meminfo("SwapFree")
    assert ack == DirectiveAck(seq=3, outcome="done", detail=f"shrank from 184320 to {used} KiB")
    assert used <= 100_000
    assert set(clock.knob_seen) == {"1"}
    assert pv.knob("frontswap_selfshrinking") == "0"
    # Each kernel step sheds 1/20: 12 steps from 184320 KiB to below 100000 KiB.
    assert clock.now_s == 5.0 * 12


async def test_selfshrink_refused_without_room(pv: GuestKernel) -> None:
    # 184320 - 100000 KiB plus one kernel step of 184320/20 must fit.
    need = 184320 - 100_000 + 9216
    pv.set_meminfo(MemAvailable=PV_MARGIN + need - 1)
    clock = KernelClock(pv)
    ack = await selfballoon(pv, clock).apply(Directive(seq=3, swap_target_kb=100_000))
    assert ack == DirectiveAck(seq=3, outcome="refused",
                               detail=f"{need} KiB would come back but only {need - 1} KiB fit")
    assert clock.knob_seen == [] and pv.knob("frontswap_selfshrinking") == "0"


async def test_selfshrink_stops_when_pressure_appears(pv: GuestKernel) -> None:
    clock = KernelClock(pv)
    original = clock.sleep

    async def sleep_then_stall(seconds: float) -> None:
        await original(seconds)
        if len(clock.knob_seen) == 2:
            pv.set_pressure(some_avg10=25.0)

    clock.sleep = sleep_then_stall  # type: ignore[method-assign]
    ack = await selfballoon(pv, clock).apply(Directive(seq=3, swap_target_kb=0))
    assert ack.outcome == "partial"
    assert ack.detail.endswith("guest under memory pressure (PSI some avg10 25.00%)")
    assert pv.knob("frontswap_selfshrinking") == "0"


async def test_selfshrink_gives_up_at_the_deadline(pv: GuestKernel) -> None:
    clock = KernelClock(pv, shrinking=False)
    ack = await selfballoon(pv, clock).apply(Directive(seq=3, swap_target_kb=0))
    assert ack == DirectiveAck(seq=3, outcome="partial",
                               detail="shrank from 184320 to 184320 KiB in 300 s")
    assert clock.now_s == 300.0 and pv.knob("frontswap_selfshrinking") == "0"


async def test_selfshrink_off_and_already_within(pv: GuestKernel) -> None:
    (pv.root / SELFBALLOON_DIR / "frontswap_selfshrinking").write_text("1\n")
    clock = KernelClock(pv)
    off = await selfballoon(pv, clock).apply(Directive(seq=1, swap_target_kb=None))
    assert (off.outcome, pv.knob("frontswap_selfshrinking")) == ("done", "0")
    within = await selfballoon(pv, clock).apply(Directive(seq=2, swap_target_kb=184320))
    assert within.outcome == "done" and clock.knob_seen == []


async def test_selfshrink_knob_not_writable(pv: GuestKernel) -> None:
    (pv.root / SELFBALLOON_DIR / "frontswap_selfshrinking").unlink()
    ack = await selfballoon(pv, KernelClock(pv)).apply(Directive(seq=2, swap_target_kb=0))
    assert ack.outcome == "refused"
    assert ack.detail.startswith("cannot set frontswap_selfshrinking")
    assert not SelfballoonActuator.present(pv.root / SELFBALLOON_DIR)


async def test_null_actuator(pv: GuestKernel) -> None:
    null = NullActuator(ProcMemorySource(pv.root))
    assert (await null.apply(Directive(seq=1, swap_target_kb=0))).outcome == "unsupported"
    assert (await null.apply(Directive(seq=2, swap_target_kb=184320))).outcome == "done"
    assert (await null.apply(Directive(seq=3, swap_target_kb=None))).outcome == "done"
