"""The agent's settings: one frozen value, built from flags by both entry points.

``ballast agent`` (Typer, in the dom0 package) and the stand-alone
``ballast-agent`` (argparse, no heavy imports) parse the same options and call
:func:`make_settings`, which validates every value and raises ``UsageError``
with one clear line on a bad combination.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, cast

from agents.actuators import ShrinkGuard
from agents.change import ReportPolicy
from orchestrator.errors import UsageError
from orchestrator.units import parse_duration_s, parse_size_kb
from orchestrator.xenstore import paths

ShrinkKind = Literal["auto", "selfballoon", "swapoff", "none"]
SHRINK_KINDS: Final = ("auto", "selfballoon", "swapoff", "none")

# The xenbus device of a Linux domU (drivers/xen/xenbus/xenbus_dev_frontend.c);
# older kernels expose the same interface as /proc/xen/xenbus.
XENBUS_DEVICE: Final = "/dev/xen/xenbus"
LEGACY_XENBUS_DEVICE: Final = "/proc/xen/xenbus"


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """How the agent reaches xenstore."""

    kind: Literal["xenbus", "socket"]
    """``xenbus``: the guest kernel's xenbus device; ``socket``: a unix socket of
    the project's xenstore server (simulation and tests)."""
    path: str
    """Device or socket path."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    """Everything the agent needs to run. Sizes KiB, durations seconds."""

    connection: Connection
    """Where xenstore is."""
    root: Path = Path("/")
    """Directory under which ``proc/`` and ``sys/`` are read."""
    page_kb: int = 4
    """The guest's page size, KiB."""
    data_dir: str = "data"
    """xenstore directory the agent writes under; relative paths resolve under
    the guest's ``/local/domain/<domid>``."""
    sample_interval_s: float = 1.0
    """How often memory is sampled, seconds (sampling is local and cheap)."""
    policy: ReportPolicy = field(default_factory=ReportPolicy)
    """When a sample becomes a report."""
    shrink: ShrinkKind = "auto"
    """Swap-shrink actuator."""
    guard: ShrinkGuard = field(default_factory=ShrinkGuard)
    """Room a swap shrink must leave."""
    xenstore_timeout_s: float = 5.0
    """Longest wait for one xenstore request, seconds; then the connection is
    considered lost."""
    backoff_initial_s: float = 0.5
    """First wait after xenstore became unavailable, seconds; doubles each time."""
    backoff_max_s: float = 30.0
    """Longest wait between reconnection attempts, seconds."""

    @property
    def report_key(self) -> str:
        """``~/data/ballast/report``."""
        return f"{self.data_dir}/ballast/report"

    @property
    def directive_key(self) -> str:
        """``~/data/ballast/directive``."""
        return f"{self.data_dir}/ballast/directive"

    @property
    def meminfo_total_key(self) -> str:
        """``~/data/meminfo_total``, the key other Xen guest tools write."""
        return f"{self.data_dir}/meminfo_total"

    @property
    def meminfo_free_key(self) -> str:
        """``~/data/meminfo_free``."""
        return f"{self.data_dir}/meminfo_free"


def default_xenbus() -> str:
    """The guest's xenbus device: the modern path, else the legacy one if present."""
    if not os.path.exists(XENBUS_DEVICE) and os.path.exists(LEGACY_XENBUS_DEVICE):
        return LEGACY_XENBUS_DEVICE
    return XENBUS_DEVICE


def make_settings(
    *,
    xenstore: str | None = None,
    root: str = "/",
    page_kb: int | None = None,
    data_dir: str = "data",
    interval: str = "1s",
    heartbeat: str = "30s",
    min_interval: str = "1s",
    change: str = "16M",
    change_percent: float = 2.0,
    shrink: str = "auto",
    shrink_margin: str = "64M",
    shrink_margin_percent: float = 5.0,
    shrink_max_psi: float = 10.0,
    xenstore_timeout: str = "5s",
) -> AgentSettings:
    """Build settings from operator text; raise ``UsageError`` on bad values.

    ``xenstore`` is ``xenbus[:DEVICE]`` or ``unix:SOCKET`` (or a bare socket
    path); ``None`` means the guest's xenbus device.
    """
    if xenstore is None or xenstore == "xenbus":
        connection = Connection(kind="xenbus", path=default_xenbus())
    elif xenstore.startswith("xenbus:"):
        connection = Connection(kind="xenbus", path=xenstore.removeprefix("xenbus:"))
    elif xenstore.startswith("unix:"):
        connection = Connection(kind="socket", path=xenstore.removeprefix("unix:"))
    elif xenstore.startswith("/"):
        connection = Connection(kind="socket", path=xenstore)
    else:
        raise UsageError(
            f"invalid xenstore connection {xenstore!r}: use xenbus, xenbus:DEVICE or unix:SOCKET"
        )
    if not connection.path:
        raise UsageError("the xenstore connection needs a path")
    if shrink not in SHRINK_KINDS:
        choices = ", ".join(SHRINK_KINDS)
        raise UsageError(f"invalid shrink actuator {shrink!r}: use one of {choices}")
    if page_kb is None:
        page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    if page_kb <= 0:
        raise UsageError("the page size must be a positive number of KiB")
    deepest = f"{data_dir}/ballast/directive"  # the longest key the agent uses
    if not (paths.is_valid_relative(deepest) or paths.is_valid_absolute(deepest)):
        raise UsageError(f"invalid xenstore data directory {data_dir!r}")
    for name, percent in (("change", change_percent), ("shrink margin", shrink_margin_percent)):
        if not 0 <= percent < 100:
            raise UsageError(f"the {name} percentage must be between 0 and 100")
    interval_s = parse_duration_s(interval)
    if interval_s <= 0:
        raise UsageError("the sampling interval must be positive")
    timeout_s = parse_duration_s(xenstore_timeout)
    if timeout_s <= 0:
        raise UsageError("the xenstore timeout must be positive")
    policy = ReportPolicy(
        heartbeat_s=parse_duration_s(heartbeat),
        min_interval_s=parse_duration_s(min_interval),
        change_kb=parse_size_kb(change),
        change_fraction=change_percent / 100,
    )
    guard = ShrinkGuard(
        margin_kb=parse_size_kb(shrink_margin),
        margin_fraction=shrink_margin_percent / 100,
        max_psi_some_avg10=shrink_max_psi,
    )
    return AgentSettings(
        connection=connection,
        root=Path(root),
        page_kb=page_kb,
        data_dir=data_dir,
        sample_interval_s=interval_s,
        policy=policy,
        shrink=cast(ShrinkKind, shrink),
        guard=guard,
        xenstore_timeout_s=timeout_s,
    )
