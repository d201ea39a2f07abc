"""Carrying out a swap-shrink directive without endangering the guest.

The controller may direct a guest to hold at most ``swap_target_kb`` of
swapped-out memory; shrinking means pulling pages back into RAM, which is only
safe when the guest has room for them. Three actuators share one interface:

* ``SelfballoonActuator`` drives the legacy kernel self-shrink knobs under
  ``/sys/devices/system/xen_memory/xen_memory0/selfballoon/`` (kernels up to 5.2
  built with CONFIG_XEN_SELFBALLOONING): it turns ``frontswap_selfshrinking`` on,
  lets the kernel shed frontswap pages at its own pace, and turns it off again
  once the target is reached, the guest runs short of room, or time is up.
* ``SwapoffActuator`` cycles one swap device at a time (``swapoff`` then
  ``swapon``), only when that device's used pages fit in MemAvailable with a
  margin. Commands go through the narrow ``SwapCommands`` seam.
* ``NullActuator`` does nothing and says so.

Every actuator refuses a step that could push the guest towards OOM, and
returns a ``DirectiveAck`` that the agent puts in its next report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from agents.procfs import SwapDevice, parse_swaps
from agents.schema import Directive, DirectiveAck
from agents.source import SWAPS, MemorySample, MemorySource, read_text
from orchestrator.errors import TransientError, UsageError

log = logging.getLogger(__name__)

# xen-selfballoon.c default frontswap_hysteresis: each kernel shrink sheds
# 1/hysteresis of the frontswap pages held.
KERNEL_FRONTSWAP_HYSTERESIS: Final = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ShrinkGuard:
    """How much room a shrink must leave. Sizes KiB."""

    margin_kb: int = 64 * 1024
    """MemAvailable that must remain after the pages come back, KiB ..."""
    margin_fraction: float = 0.05
    """... or this fraction of MemTotal, whichever is larger."""
    max_psi_some_avg10: float = 10.0
    """Refuse while memory PSI "some" avg10 is above this, percent: a guest
    that is already stalling must not take pages back."""

    def __post_init__(self) -> None:
        if self.margin_kb < 0 or not 0 <= self.margin_fraction < 1:
            raise UsageError("the shrink margin must be non-negative (fraction below 1)")
        if not 0 <= self.max_psi_some_avg10 <= 100:
            raise UsageError("the PSI limit is a percentage between 0 and 100")

    def room_kb(self, sample: MemorySample) -> int | None:
        """KiB that may come back into RAM now; ``None`` if it cannot be known."""
        if sample.mem_available_kb is None or sample.mem_total_kb is None:
            return None
        margin = max(self.margin_kb, math.ceil(self.margin_fraction * sample.mem_total_kb))
        return sample.mem_available_kb - margin

    def refusal(self, sample: MemorySample) -> str | None:
        """Why no pages may come back at all right now, or ``None``."""
        if self.room_kb(sample) is None:
            return "MemAvailable or MemTotal unreadable: cannot tell whether pages fit"
        psi = sample.psi_some_avg10
        if psi is not None and psi > self.max_psi_some_avg10:
            return f"guest under memory pressure (PSI some avg10 {psi:.2f}%)"
        return None


class ShrinkActuator(Protocol):
    """Carries out one swap-shrink directive and says what it did."""

    name: str

    async def apply(self, directive: Directive) -> DirectiveAck:
        """Act on ``directive``; never raise for a refusal or a failed step."""
        ...


def _ack(directive: Directive, outcome: str, detail: str) -> DirectiveAck:
    # The report schema bounds the detail text (MAX_ACK_DETAIL_CHARS).
    return DirectiveAck(seq=directive.seq, outcome=outcome, detail=detail[:200])


class NullActuator:
    """For guests with no way to shrink swap: acknowledges, never acts."""

    name = "none"

    def __init__(self, source: MemorySource) -> None:
        self._source = source

    async def apply(self, directive: Directive) -> DirectiveAck:
        """``done`` when there is nothing to do, else ``unsupported``."""
        if directive.swap_target_kb is None:
            return _ack(directive, "done", "no swap target")
        used = self._source.sample().swap_used_kb
        if used is not None and used <= directive.swap_target_kb:
            return _ack(directive, "done", f"swap use {used} KiB is within the target")
        return _ack(directive, "unsupported", "no swap-shrink actuator on this guest")


# ---------------------------------------------------------------- selfballoon

# Knob names from xen-selfballoon.c (sysfs group "selfballoon").
SELFSHRINK_KNOB: Final = "frontswap_selfshrinking"
HYSTERESIS_KNOB: Final = "frontswap_hysteresis"


def frontswap_measure_kb(sample: MemorySample) -> int | None:
    """Swapped memory the kernel self-shrink acts on: frontswap pages held where
    the kernel exports the count, else all swap in use (an upper bound, since
    frontswap pages also hold a swap slot)."""
    return sample.frontswap_kb if sample.frontswap_kb is not None else sample.swap_used_kb


class SelfballoonActuator:
    """Turns the kernel's frontswap self-shrinking on until the target is met."""

    name = "selfballoon"

    def __init__(
        self,
        source: MemorySource,
        knob_dir: Path,
        *,
        guard: ShrinkGuard,
        poll_s: float = 5.0,
        max_duration_s: float = 600.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``poll_s``: how often progress is checked (the kernel acts every
        ``selfballoon_interval``, 5 s by default); ``max_duration_s``: when to
        give up and report ``partial``."""
        self._source = source
        self._dir = knob_dir
        self._guard = guard
        self._poll_s = poll_s
        self._max_duration_s = max_duration_s
        self._sleep = sleep
        self._clock = clock

    @staticmethod
    def present(knob_dir: Path) -> bool:
        """Whether this kernel has the self-shrink knob."""
        return (knob_dir / SELFSHRINK_KNOB).is_file()

    def _set_selfshrink(self, on: bool) -> None:
        # Opened without truncation, as sysfs attributes expect; the kernel
        # accepts only "0" or "1" (store_frontswap_selfshrinking).
        with (self._dir / SELFSHRINK_KNOB).open("r+") as knob:
            knob.write("1\n" if on else "0\n")

    def _hysteresis(self) -> int:
        try:
            value = int(read_text(self._dir / HYSTERESIS_KNOB).strip())
        except (OSError, ValueError):
            return KERNEL_FRONTSWAP_HYSTERESIS
        return value if value > 0 else KERNEL_FRONTSWAP_HYSTERESIS

    def _needed_kb(self, held_kb: int, target_kb: int) -> int:
        # The kernel does not stop at our target: between two polls it may shed
        # one more step of held/hysteresis, so room must cover that too.
        step_kb = math.ceil(held_kb / self._hysteresis())
        return min(held_kb, held_kb - target_kb + step_kb)

    async def apply(self, directive: Directive) -> DirectiveAck:
        """Enable self-shrinking while it is safe and needed, then disable it."""
        target = directive.swap_target_kb
        try:
            if target is None:
                self._set_selfshrink(False)
                return _ack(directive, "done", "kernel self-shrink off")
            sample = self._source.sample()
            held = frontswap_measure_kb(sample)
            if held is None:
                return _ack(directive, "refused", "cannot measure swapped memory")
            if held <= target:
                self._set_selfshrink(False)
                return _ack(directive, "done", f"{held} KiB swapped, within the target")
            why = self._why_not(sample, held, target)
            if why is not None:
                return _ack(directive, "refused", why)
            self._set_selfshrink(True)
        except OSError as exc:
            return _ack(directive, "refused", f"cannot set {SELFSHRINK_KNOB}: {exc.strerror}")
        try:
            return await self._follow(directive, target, held)
        finally:
            try:
                self._set_selfshrink(False)
            except OSError as exc:
                log.error("could not turn kernel self-shrink off: %s", exc.strerror)

    def _why_not(self, sample: MemorySample, held: int, target: int) -> str | None:
        refusal = self._guard.refusal(sample)
        if refusal is not None:
            return refusal
        room = self._guard.room_kb(sample)
        need = self._needed_kb(held, target)
        if room is None or need > room:
            return f"{need} KiB would come back but only {max(room or 0, 0)} KiB fit"
        return None

    async def _follow(self, directive: Directive, target: int, start_kb: int) -> DirectiveAck:
        clock = self._clock or asyncio.get_running_loop().time
        deadline = clock() + self._max_duration_s
        held = start_kb
        while True:
            await self._sleep(self._poll_s)
            sample = self._source.sample()
            now_held = frontswap_measure_kb(sample)
            if now_held is None:
                return _ack(directive, "partial", "lost track of swapped memory; stopped")
            held = now_held
            if held <= target:
                return _ack(directive, "done", f"shrank from {start_kb} to {held} KiB")
            why = self._why_not(sample, held, target)
            if why is not None:
                return _ack(directive, "partial", f"stopped at {held} KiB: {why}")
            if clock() >= deadline:
                return _ack(
                    directive, "partial",
                    f"shrank from {start_kb} to {held} KiB in {self._max_duration_s:.0f} s",
                )


# ---------------------------------------------------------------- swapoff


class SwapCommands(Protocol):
    """The one seam through which the agent changes the guest's swap devices."""

    async def swapoff(self, path: str) -> None:
        """Disable one swap device, pulling its pages into RAM; ``TransientError``
        if it failed (the kernel then keeps the device active)."""
        ...

    async def swapon(self, path: str, *, priority: int | None) -> None:
        """Enable one swap device; ``TransientError`` if it failed."""
        ...


class SubprocessSwapCommands:
    """Runs util-linux ``swapoff``/``swapon``."""

    def __init__(self, *, timeout_s: float = 900.0) -> None:
        """``timeout_s``: longest a ``swapoff`` may run; on expiry it is killed,
        which makes the kernel abort and keep the device (mm/swapfile.c)."""
        self._timeout_s = timeout_s

    async def _run(self, *argv: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), self._timeout_s)
        except TimeoutError:
            raise TransientError(f"{argv[0]} timed out after {self._timeout_s:.0f} s") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            message = stderr.decode(errors="replace").strip().splitlines()
            raise TransientError(
                f"{' '.join(argv)} exited {proc.returncode}: {message[-1] if message else ''}"
            )

    async def swapoff(self, path: str) -> None:
        """``swapoff PATH``."""
        await self._run("swapoff", "--", path)

    async def swapon(self, path: str, *, priority: int | None) -> None:
        """``swapon [-p PRIORITY] PATH``."""
        if priority is None:
            await self._run("swapon", "--", path)
        else:
            await self._run("swapon", "-p", str(priority), "--", path)


@dataclass(frozen=True, slots=True)
class SwapPlan:
    """The next swapoff/swapon cycle, or why there is none."""

    device: SwapDevice | None
    reason: str
    done: bool = False
    """Swap use is already within the target."""


def plan_swapoff(
    devices: tuple[SwapDevice, ...],
    sample: MemorySample,
    *,
    target_kb: int,
    guard: ShrinkGuard,
    exclude: frozenset[str] = frozenset(),
) -> SwapPlan:
    """Pick the one device to cycle next, or explain why none may be cycled.

    A device qualifies when its used pages fit in MemAvailable minus the margin.
    Among those, the smallest one whose cycle alone reaches the target wins;
    failing that, the fullest one, which gets closest.
    """
    used_now = sample.swap_used_kb
    if used_now is None:
        used_now = sum(d.used_kb for d in devices)
    excess = used_now - target_kb
    if excess <= 0:
        return SwapPlan(None, f"{used_now} KiB swapped, within the target", done=True)
    refusal = guard.refusal(sample)
    if refusal is not None:
        return SwapPlan(None, refusal)
    room = guard.room_kb(sample)
    assert room is not None  # refusal() checked it
    candidates = [
        d for d in devices if d.used_kb > 0 and not d.deleted and d.path not in exclude
    ]
    if not candidates:
        return SwapPlan(None, "no swap device left to cycle")
    fitting = [d for d in candidates if d.used_kb <= room]
    if not fitting:
        smallest = min(d.used_kb for d in candidates)
        return SwapPlan(
            None, f"smallest device holds {smallest} KiB but only {max(room, 0)} KiB fit"
        )
    enough = [d for d in fitting if d.used_kb >= excess]
    if enough:
        device = min(enough, key=lambda d: (d.used_kb, d.path))
    else:
        device = max(fitting, key=lambda d: (d.used_kb, d.path))
    return SwapPlan(device, f"cycling {device.path} ({device.used_kb} KiB used)")


class SwapoffActuator:
    """Cycles swap devices one at a time while their pages fit in RAM."""

    name = "swapoff"

    def __init__(
        self,
        source: MemorySource,
        root: Path,
        commands: SwapCommands,
        *,
        guard: ShrinkGuard,
    ) -> None:
        """``root``: where ``proc/swaps`` is read (``/`` in a guest)."""
        self._source = source
        self._swaps = root / SWAPS
        self._commands = commands
        self._guard = guard

    def _devices(self) -> tuple[SwapDevice, ...]:
        parsed = parse_swaps(read_text(self._swaps))
        for problem in parsed.problems:
            log.warning("%s", problem)
        return parsed.value

    async def apply(self, directive: Directive) -> DirectiveAck:
        """Cycle devices until swap use is within the target or no step is safe."""
        target = directive.swap_target_kb
        if target is None:
            return _ack(directive, "done", "no swap target")
        cycled: list[str] = []
        while True:
            sample = self._source.sample()
            try:
                devices = self._devices()
            except OSError as exc:
                return self._stop(directive, cycled, f"cannot read /proc/swaps: {exc.strerror}")
            plan = plan_swapoff(
                devices, sample, target_kb=target, guard=self._guard, exclude=frozenset(cycled)
            )
            if plan.done:
                return _ack(directive, "done", self._summary(cycled, plan.reason))
            if plan.device is None:
                return self._stop(directive, cycled, plan.reason)
            device = plan.device
            log.info("swap shrink: %s", plan.reason)
            try:
                await self._commands.swapoff(device.path)
            except TransientError as exc:
                return self._stop(directive, cycled, str(exc))
            # The device is off now; it must come back even if the agent is
            # being stopped, or the guest silently loses swap space.
            priority = device.priority if device.priority >= 0 else None
            swapon = asyncio.ensure_future(self._commands.swapon(device.path, priority=priority))
            try:
                await asyncio.shield(swapon)
            except asyncio.CancelledError:
                with contextlib.suppress(TransientError):
                    await swapon
                raise
            except TransientError as exc:
                log.error("swap device %s is off and could not be re-enabled: %s",
                          device.path, exc)
                return _ack(directive, "partial", f"{device.path} left off: {exc}")
            cycled.append(device.path)

    @staticmethod
    def _summary(cycled: list[str], reason: str) -> str:
        return f"cycled {', '.join(cycled)}; {reason}" if cycled else reason

    def _stop(self, directive: Directive, cycled: list[str], reason: str) -> DirectiveAck:
        outcome = "partial" if cycled else "refused"
        return _ack(directive, outcome, self._summary(cycled, reason))
