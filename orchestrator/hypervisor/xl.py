"""The real-dom0 hypervisor adapter: runs ``xl`` and parses what it prints.

Three commands are enough: ``xl info`` (host totals, MiB), ``xl list``
(every domain's current allocation, MiB) and ``xl list -l`` (JSON config of
every domain xl created: uuid, type, ``max_memkb``, ``target_memkb``; dom0
has no stored config and is absent). The parsers are pure functions over the
text so they are tested on captured outputs of several Xen releases.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import TransientError
from orchestrator.hypervisor import DomainMemory, HostMemory

KIB_PER_MIB = 1024
# Bounded so a wedged toolstack cannot stall a control cycle for long.
DEFAULT_XL_TIMEOUT_S = 10.0


class XlOutputError(TransientError):
    """``xl`` printed something these parsers do not understand."""


@dataclass(frozen=True, slots=True, kw_only=True)
class XlListRow:
    """One line of plain ``xl list``."""

    name: str
    domid: int
    mem_mib: int
    vcpus: int
    state: str


@dataclass(frozen=True, slots=True, kw_only=True)
class XlDomainConfig:
    """The parts of one ``xl list -l`` entry the controller uses."""

    domid: int
    name: str | None
    uuid: str | None
    kind: str | None
    max_memkb: int | None
    target_memkb: int | None


def parse_xl_info(text: str) -> HostMemory:
    """Parse ``xl info``: ``key : value`` lines; memory figures are MiB."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    try:
        total_mib = int(fields["total_memory"])
        free_mib = int(fields["free_memory"])
        claims_mib = int(fields.get("outstanding_claims", "0"))
    except KeyError as exc:
        raise XlOutputError(f"xl info: no {exc.args[0]} line") from None
    except ValueError as exc:
        raise XlOutputError(f"xl info: bad memory figure: {exc}") from None
    if not 0 <= free_mib <= total_mib:
        raise XlOutputError(f"xl info: free_memory {free_mib} outside 0..{total_mib}")
    return HostMemory(
        total_kb=total_mib * KIB_PER_MIB,
        free_kb=free_mib * KIB_PER_MIB,
        outstanding_claims_kb=claims_mib * KIB_PER_MIB,
    )


def parse_xl_list(text: str) -> list[XlListRow]:
    """Parse plain ``xl list``. Names may contain spaces, so split from the right."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Name"):
        raise XlOutputError("xl list: missing header line")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        # Name ID Mem VCPUs State Time(s): the last five columns are fixed, the
        # name before them may contain spaces. (We never run the verbose form.)
        parts = line.split()
        if len(parts) < 6 or not all(p.isdigit() for p in parts[-5:-2]):
            raise XlOutputError(f"xl list line {number}: unexpected columns: {line!r}")
        rows.append(
            XlListRow(
                name=" ".join(parts[:-5]),
                domid=int(parts[-5]),
                mem_mib=int(parts[-4]),
                vcpus=int(parts[-3]),
                state=parts[-2],
            )
        )
    return rows


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def parse_xl_list_long(text: str) -> list[XlDomainConfig]:
    """Parse ``xl list -l`` (JSON output format, the default since Xen 4.2)."""
    try:
        doc = json.loads(text) if text.strip() else []
    except ValueError as exc:
        raise XlOutputError(f"xl list -l: not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise XlOutputError("xl list -l: expected a JSON list")
    configs = []
    for entry in doc:
        if not isinstance(entry, dict) or not isinstance(entry.get("domid"), int):
            raise XlOutputError("xl list -l: entry without a domid")
        config = entry.get("config") or {}
        c_info = config.get("c_info") or {}
        b_info = config.get("b_info") or {}
        uuid = c_info.get("uuid")
        configs.append(
            XlDomainConfig(
                domid=entry["domid"],
                name=c_info.get("name") if isinstance(c_info.get("name"), str) else None,
                uuid=uuid.lower() if isinstance(uuid, str) else None,
                kind=c_info.get("type") if isinstance(c_info.get("type"), str) else None,
                max_memkb=_opt_int(b_info.get("max_memkb")),
                target_memkb=_opt_int(b_info.get("target_memkb")),
            )
        )
    return configs


def merge_domains(
    rows: Sequence[XlListRow], configs: Sequence[XlDomainConfig]
) -> dict[int, DomainMemory]:
    """Combine ``xl list`` allocations with ``xl list -l`` configs by domid."""
    by_domid = {c.domid: c for c in configs}
    merged: dict[int, DomainMemory] = {}
    for row in rows:
        config = by_domid.get(row.domid)
        merged[row.domid] = DomainMemory(
            domid=row.domid,
            name=row.name,
            uuid=config.uuid if config else None,
            actual_kb=row.mem_mib * KIB_PER_MIB,
            max_kb=config.max_memkb if config else None,
            target_kb=config.target_memkb if config else None,
            kind=config.kind if config else None,
            # xl's state column is "rbpscd" with '-' for each flag not set.
            paused=len(row.state) > 2 and row.state[2] == "p",
        )
    return merged


class XlHypervisor:
    """:class:`~orchestrator.hypervisor.Hypervisor` on a real dom0, through ``xl``."""

    def __init__(self, *, xl_path: str = "xl", timeout_s: float = DEFAULT_XL_TIMEOUT_S) -> None:
        self._xl = xl_path
        self._timeout_s = timeout_s

    async def _run(self, *args: str) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                self._xl, *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise TransientError(f"cannot run {self._xl}: {exc.strerror}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self._timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise TransientError(
                f"{self._xl} {' '.join(args)} timed out after {self._timeout_s} s"
            ) from None
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip().splitlines()
            raise TransientError(
                f"{self._xl} {' '.join(args)} failed ({proc.returncode}): "
                f"{message[-1] if message else 'no message'}"
            )
        return out.decode(errors="replace")

    async def host_memory(self) -> HostMemory:
        return parse_xl_info(await self._run("info"))

    async def domains(self) -> Mapping[int, DomainMemory]:
        rows = parse_xl_list(await self._run("list"))
        configs = parse_xl_list_long(await self._run("list", "-l"))
        return merge_domains(rows, configs)
