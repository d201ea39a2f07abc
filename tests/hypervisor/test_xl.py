"""The xl adapter: parsers on captured xl outputs, and the subprocess edge."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from orchestrator.errors import TransientError
from orchestrator.hypervisor.xl import (
    XlHypervisor,
    XlOutputError,
    merge_domains,
    parse_xl_info,
    parse_xl_list,
    parse_xl_list_long,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _read(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.mark.parametrize(
    ("name", "total_mib", "free_mib", "claims_mib"),
    [("xl-info-4.17.txt", 65422, 18633, 0), ("xl-info-4.11.txt", 16259, 3979, 512)],
)
def test_parse_xl_info(name: str, total_mib: int, free_mib: int, claims_mib: int) -> None:
    host = parse_xl_info(_read(name))
    assert host.total_kb == total_mib * 1024
    assert host.free_kb == free_mib * 1024
    assert host.outstanding_claims_kb == claims_mib * 1024


@pytest.mark.parametrize(
    ("text", "message"),
    [("host : x\n", "total_memory"), ("total_memory : 10\nfree_memory : lots\n", "bad memory"),
     ("total_memory : 10\nfree_memory : 20\n", "outside")],
    ids=["missing", "not-a-number", "free-above-total"],
)
def test_parse_xl_info_rejects(text: str, message: str) -> None:
    with pytest.raises(XlOutputError, match=message):
        parse_xl_info(text)


def test_parse_xl_list_names_with_spaces() -> None:
    rows = parse_xl_list(_read("xl-list-4.17.txt"))
    assert [(r.name, r.domid, r.mem_mib) for r in rows] == [
        ("Domain-0", 0, 4096), ("web01", 1, 2048), ("db primary", 3, 8191),
        ("build-runner", 7, 1023),
    ]
    assert rows[3].state == "--p---"


@pytest.mark.parametrize("text", ["", "garbage\n", "Name ID Mem\nweb01 x 10 1 -b---- 1.0\n"])
def test_parse_xl_list_rejects(text: str) -> None:
    with pytest.raises(XlOutputError):
        parse_xl_list(text)


def test_parse_xl_list_long() -> None:
    configs = {c.domid: c for c in parse_xl_list_long(_read("xl-list-l-4.17.json"))}
    assert set(configs) == {1, 3, 7}
    assert configs[1].uuid == "6f3a2c1e-9b0d-4e55-8a71-2c4d9e0b7f12"  # lower-cased
    assert (configs[1].kind, configs[3].kind, configs[7].kind) == ("pv", "hvm", "pvh")
    assert configs[3].max_memkb == 16 * 1024 * 1024
    assert configs[7].target_memkb == 1024 * 1024


@pytest.mark.parametrize("text", ["{", "{}", "[1]", '[{"config": {}}]'])
def test_parse_xl_list_long_rejects(text: str) -> None:
    with pytest.raises(XlOutputError):
        parse_xl_list_long(text)


def test_merge_keeps_dom0_without_config() -> None:
    merged = merge_domains(
        parse_xl_list(_read("xl-list-4.17.txt")), parse_xl_list_long(_read("xl-list-l-4.17.json"))
    )
    assert merged[0].uuid is None and merged[0].actual_kb == 4096 * 1024
    assert merged[3].name == "db primary" and merged[3].max_kb == 16 * 1024 * 1024
    assert merged[7].paused and not merged[3].paused


def _fake_xl(tmp_path: Path, body: str) -> str:
    script = tmp_path / "xl"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


async def test_xl_hypervisor_runs_xl(tmp_path: Path) -> None:
    xl = _fake_xl(
        tmp_path,
        f"""case "$1 $2" in
  "info ") cat {FIXTURES / 'xl-info-4.17.txt'} ;;
  "list ") cat {FIXTURES / 'xl-list-4.17.txt'} ;;
  "list -l") cat {FIXTURES / 'xl-list-l-4.17.json'} ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
""",
    )
    hv = XlHypervisor(xl_path=xl)
    assert (await hv.host_memory()).free_kb == 18633 * 1024
    domains = await hv.domains()
    assert sorted(domains) == [0, 1, 3, 7]
    assert domains[7].kind == "pvh"


async def test_xl_failure_is_transient_with_message(tmp_path: Path) -> None:
    xl = _fake_xl(tmp_path, 'echo "libxl: error: cannot connect to hypervisor" >&2; exit 1\n')
    with pytest.raises(TransientError, match="cannot connect to hypervisor"):
        await XlHypervisor(xl_path=xl).host_memory()


async def test_xl_hang_times_out(tmp_path: Path) -> None:
    xl = _fake_xl(tmp_path, "exec sleep 30\n")
    with pytest.raises(TransientError, match="timed out"):
        await XlHypervisor(xl_path=xl, timeout_s=0.3).host_memory()


async def test_missing_xl_is_transient(tmp_path: Path) -> None:
    with pytest.raises(TransientError, match="cannot run"):
        await XlHypervisor(xl_path=str(tmp_path / "nope")).host_memory()
