"""A guest /proc tree in a temporary directory, and a kernel stand-in for it.

Tests copy a fixture tree and let ``GuestKernel`` play the kernel's part when
an actuator acts: a swapoff moves a device's used pages into RAM, the legacy
self-shrink sheds frontswap pages by 1/hysteresis per tick. ``FakeSwapCommands``
is the one seam where the agent's commands are intercepted.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from agents.procfs import SwapDevice, parse_swaps
from agents.source import SELFBALLOON_DIR
from orchestrator.errors import TransientError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "proc"


def copy_tree(tree: str, dest: Path) -> Path:
    root = dest / tree
    shutil.copytree(FIXTURES / tree, root)
    return root


class GuestKernel:
    """Edits a copied fixture tree the way the kernel's figures would move."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # meminfo -------------------------------------------------------------
    def meminfo(self, name: str) -> int:
        text = (self.root / "proc/meminfo").read_text()
        match = re.search(rf"^{re.escape(name)}:\s+(\d+) kB$", text, re.M)
        assert match is not None, name
        return int(match.group(1))

    def set_meminfo(self, **values_kb: int) -> None:
        path = self.root / "proc/meminfo"
        text = path.read_text()
        for name, value in values_kb.items():
            label = f"{name}:"
            text, count = re.subn(rf"^{re.escape(label)}\s+\d+ kB$", f"{label:<16}{value:>8} kB",
                                  text, flags=re.M)
            assert count == 1, name
        path.write_text(text)

    def set_pressure(self, some_avg10: float) -> None:
        path = self.root / "proc/pressure/memory"
        path.parent.mkdir(exist_ok=True)
        path.write_text(
            f"some avg10={some_avg10:.2f} avg60=0.00 avg300=0.00 total=1000\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=10\n"
        )

    def bring_back(self, kb: int) -> None:
        """Swapped pages come back into RAM."""
        self.set_meminfo(
            SwapFree=self.meminfo("SwapFree") + kb,
            MemFree=self.meminfo("MemFree") - kb,
            MemAvailable=self.meminfo("MemAvailable") - kb,
        )

    # /proc/swaps -----------------------------------------------------------
    def swaps(self) -> tuple[SwapDevice, ...]:
        return parse_swaps((self.root / "proc/swaps").read_text()).value

    def write_swaps(self, devices: list[SwapDevice]) -> None:
        lines = ["Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority"]
        for d in devices:
            path = d.path.replace(" ", "\\040")
            lines.append(f"{path:<40}{d.kind}\t{d.size_kb}\t\t{d.used_kb}\t\t{d.priority}")
        (self.root / "proc/swaps").write_text("\n".join(lines) + "\n")

    # legacy self-shrink ----------------------------------------------------
    def knob(self, name: str) -> str:
        return (self.root / SELFBALLOON_DIR / name).read_text().strip()

    def selfshrink_tick(self) -> None:
        """One selfballoon worker run: shed 1/hysteresis of what swap holds."""
        if self.knob("frontswap_selfshrinking") != "1":
            return
        used = self.meminfo("SwapTotal") - self.meminfo("SwapFree")
        hysteresis = int(self.knob("frontswap_hysteresis"))
        shed = used if used <= hysteresis * 4 else used // hysteresis
        self.bring_back(shed)


class FakeSwapCommands:
    """The ``SwapCommands`` seam: records commands, plays the kernel's part."""

    def __init__(self, kernel: GuestKernel, *, fail_swapoff: bool = False,
                 fail_swapon: bool = False) -> None:
        self.kernel = kernel
        self.calls: list[tuple[str, str, int | None]] = []
        self.fail_swapoff = fail_swapoff
        self.fail_swapon = fail_swapon
        self._off: dict[str, SwapDevice] = {}

    async def swapoff(self, path: str) -> None:
        self.calls.append(("swapoff", path, None))
        devices = list(self.kernel.swaps())
        device = next((d for d in devices if d.path == path), None)
        if device is None:
            raise TransientError(f"swapoff {path}: not an active swap device")
        if self.fail_swapoff:
            raise TransientError(f"swapoff {path} exited 255: Cannot allocate memory")
        self.kernel.bring_back(device.used_kb)
        self.kernel.set_meminfo(SwapTotal=self.kernel.meminfo("SwapTotal") - device.size_kb,
                                SwapFree=self.kernel.meminfo("SwapFree") - device.size_kb)
        devices.remove(device)
        self.kernel.write_swaps(devices)
        self._off[path] = device

    async def swapon(self, path: str, *, priority: int | None) -> None:
        self.calls.append(("swapon", path, priority))
        if self.fail_swapon:
            raise TransientError(f"swapon {path} exited 255: Device or resource busy")
        device = self._off.pop(path)
        devices = list(self.kernel.swaps())
        lowest = min([d.priority for d in devices if d.priority < 0], default=-1)
        devices.append(SwapDevice(path=path, kind=device.kind, size_kb=device.size_kb, used_kb=0,
                                  priority=priority if priority is not None else lowest - 1))
        self.kernel.set_meminfo(SwapTotal=self.kernel.meminfo("SwapTotal") + device.size_kb,
                                SwapFree=self.kernel.meminfo("SwapFree") + device.size_kb)
        self.kernel.write_swaps(devices)
