"""The agent's probes on captured and hand-written /proc trees of several kernels."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.procfs import (
    parse_meminfo,
    parse_pressure,
    parse_swaps,
    parse_uptime,
    parse_vmstat,
    parse_zoneinfo,
    totalreserve_pages,
)
from agents.schema import decode_report, encode_report
from agents.source import IncompleteSample, MemorySample, ProcMemorySource, to_report

FIXTURES = Path(__file__).parent.parent / "fixtures" / "proc"


def sample_of(tree: str) -> MemorySample:
    return ProcMemorySource(FIXTURES / tree).sample()


# Expected figures worked out by hand from each tree's files (see the README
# there), not from the code: totalreserve is, per zone, min(max protection +
# (high - boost), managed) in 4 KiB pages.
EXPECTED = {
    "linux-4.19-xen-pv": dict(
        mem_total_kb=2027908, mem_available_kb=1225260, cached_kb=686000 + 36800,
        committed_as_kb=1843200, anon_kb=512000, swap_total_kb=1048572, swap_free_kb=864252,
        # DMA min(1964 + 132, 3977) + DMA32 (0 + 16761) = 18857 pages.
        totalreserve_kb=18857 * 4, pswpin=20114, pswpout=66940,
        frontswap_kb=None, psi_some_avg10=None, psi_full_avg10=None, psi_some_total_us=None,
        refault_anon=None, refault_file=48211, balloon_current_kb=2097152, uptime_s=86400.42,
        active_file_kb=380000,
    ),
    "linux-5.10-xen-hvm": dict(
        mem_total_kb=4029904, mem_available_kb=2973212, cached_kb=1904000 + 80000,
        committed_as_kb=3412880, anon_kb=720000, swap_total_kb=2621432, swap_free_kb=2263032,
        # DMA capped at managed 3976 (3919 + 98 > 3976), DMA32 249 + 23635, Normal 1605.
        totalreserve_kb=(3976 + 23884 + 1605) * 4, pswpin=310552, pswpout=982113,
        frontswap_kb=38400 * 4, psi_some_avg10=1.23, psi_full_avg10=0.42,
        psi_some_total_us=48211093, refault_anon=120114, refault_file=834221,
        balloon_current_kb=4194304, uptime_s=1209600.17, active_file_kb=920000,
    ),
    "linux-6.1-xen-pvh-zswap": dict(
        mem_total_kb=8203360, mem_available_kb=4917744, cached_kb=2560000 + 120000,
        committed_as_kb=6920112, anon_kb=3000000, swap_total_kb=5242872, swap_free_kb=4628472,
        # DMA capped at 3840; DMA32 5039 + 9354; Normal 0 + (17987 - boost 2048);
        # Movable (high 32, managed 0) adds nothing.
        totalreserve_kb=(3840 + 14393 + 15939) * 4, pswpin=52210, pswpout=201877,
        frontswap_kb=409600, psi_some_avg10=0.0, psi_full_avg10=0.0, psi_some_total_us=912433,
        refault_anon=44120, refault_file=390112, balloon_current_kb=8388608, uptime_s=432000.55,
        active_file_kb=1200000,
    ),
    "linux-6.18": dict(
        mem_total_kb=24684092, mem_available_kb=23985060, swap_total_kb=0, swap_free_kb=0,
        # DMA min(4683 + 79, 3840); DMA32 1664 + 16285; Normal 8976; Movable capped at 0.
        totalreserve_kb=(3840 + 17949 + 8976) * 4, frontswap_kb=0, balloon_current_kb=None,
        refault_anon=0, uptime_s=601.70, active_file_kb=340212,
    ),
}


@pytest.mark.parametrize("tree", sorted(EXPECTED))
def test_kernel_generations_report_their_figures(tree: str) -> None:
    sample = sample_of(tree)
    for name, value in EXPECTED[tree].items():
        assert getattr(sample, name) == value, name
    report = to_report(sample, seq=7, ack=None)
    # What the agent would send is accepted by the controller's strict decoder.
    assert decode_report(encode_report(report)) == report
    assert len(encode_report(report)) < 1024


def test_expected_absences_are_info_not_warnings() -> None:
    problems = sample_of("linux-4.19-xen-pv").problems
    assert [(p.key, p.severity) for p in problems] == [("proc/pressure/memory:unreadable", "info")]
    assert {p.severity for p in sample_of("linux-6.18").problems} == {"info"}


def _si_mem_available_pages(root: Path, reserve_pages: int) -> int:
    """MemAvailable as mm/show_mem.c si_mem_available() computes it, in pages."""
    meminfo = {}
    for line in (root / "proc/meminfo").read_text().splitlines():
        name, value = line.split(":")
        meminfo[name] = int(value.split()[0])
    zoneinfo = (root / "proc/zoneinfo").read_text()
    wmark_low = sum(int(v) for v in re.findall(r"^\s+low\s+(\d+)$", zoneinfo, re.M))
    pagecache = (meminfo["Active(file)"] + meminfo["Inactive(file)"]) // 4
    pagecache -= min(pagecache // 2, wmark_low)
    reclaimable = meminfo["KReclaimable"] // 4
    reclaimable -= min(reclaimable // 2, wmark_low)
    return meminfo["MemFree"] // 4 - reserve_pages + pagecache + reclaimable


def test_reserve_matches_the_live_kernel() -> None:
    # The 6.18 tree is a real capture: the kernel's own MemAvailable is only
    # reproduced with the exact totalreserve_pages it used.
    root = FIXTURES / "linux-6.18"
    sample = ProcMemorySource(root).sample()
    assert sample.totalreserve_kb is not None and sample.mem_available_kb is not None
    reserve_pages = sample.totalreserve_kb // 4
    assert _si_mem_available_pages(root, reserve_pages) == sample.mem_available_kb // 4
    # Neighbouring rules (no cap at managed, no protection, boost kept) miss it.
    for wrong in (reserve_pages + 32 + 922, reserve_pages - 4683, reserve_pages + 1):
        assert _si_mem_available_pages(root, wrong) != sample.mem_available_kb // 4


NUMA_ZONEINFO = """\
Node 0, zone      DMA
  pages free     3840
        min      53
        low      66
        high     79
        spanned  4095
        present  3998
        managed  3840
        protection: (0, 1000, 5000, 5000)
  pagesets
    cpu: 0
              count:    0
              high:     5
Node 0, zone   Normal
  pages free     100000
        boost    100
        min      1000
        low      1500
        high     2100
        spanned  200000
        present  200000
        managed  190000
        protection: (0, 0, 0, 0)
Node 1, zone   Normal
  pages free     150000
        min      1200
        low      1700
        high     2200
        spanned  262144
        present  262144
        managed  250000
        protection: (0, 0, 0, 0)
Node 1, zone  Movable
  pages free     0
        min      32
        low      32
        high     32
        spanned  0
        present  0
        managed  0
        protection: (0, 0, 0, 0)
"""


def test_reserve_sums_every_node_and_ignores_pageset_high() -> None:
    parsed = parse_zoneinfo(NUMA_ZONEINFO)
    assert parsed.problems == ()
    assert parsed.value is not None
    assert [(z.node, z.zone, z.reserve_pages) for z in parsed.value] == [
        (0, "DMA", 3840),  # min(5000 + 79, 3840)
        (0, "Normal", 2000),  # high 2100 printed with a boost of 100
        (1, "Normal", 2200),
        (1, "Movable", 0),
    ]
    assert totalreserve_pages(parsed.value) == 3840 + 2000 + 2200


def test_zone_without_protection_makes_the_reserve_unknown() -> None:
    broken = NUMA_ZONEINFO.replace("        protection: (0, 0, 0, 0)\nNode 1, zone   Normal",
                                   "Node 1, zone   Normal")
    parsed = parse_zoneinfo(broken)
    assert parsed.value is None
    assert parsed.problems == ("zoneinfo: node 0 zone Normal lacks high, managed or protection",)


def test_truncated_tree_builds_no_report_but_keeps_what_it_read() -> None:
    sample = sample_of("truncated")
    with pytest.raises(IncompleteSample) as caught:
        to_report(sample, seq=1, ack=None)
    assert caught.value.missing == ("uptime_s", "committed_as_kb", "totalreserve_kb", "pswpout")
    # The figures printed before each cut are still there for meminfo_* keys.
    assert (sample.mem_total_kb, sample.mem_free_kb) == (8203360, 2400000)
    assert sample.pswpin == 52210
    assert sample.psi_some_avg10 == 0.0 and sample.psi_full_avg10 is None
    messages = [p.message for p in sample.problems]
    assert "meminfo: file is truncated; ignored its last line 'Committed_AS:    69'" in messages
    assert "zoneinfo: file is truncated; cannot sum every zone's reserve" in messages
    assert all(p.severity == "warning" for p in sample.problems)


def test_cut_after_the_needed_lines_still_reports() -> None:
    full = to_report(sample_of("linux-6.1-xen-pvh-zswap"), seq=1, ack=None)
    tail = sample_of("truncated-tail")
    assert to_report(tail, seq=1, ack=None) == full
    assert len(tail.problems) == 2


def test_unknown_lines_do_not_change_the_figures() -> None:
    full = to_report(sample_of("linux-6.1-xen-pvh-zswap"), seq=1, ack=None)
    odd = sample_of("unknown-lines")
    assert to_report(odd, seq=1, ack=None) == full
    messages = " | ".join(p.message for p in odd.problems)
    assert "MemFree appears twice" in messages
    assert "pswpin appears twice" in messages
    assert "'Weird Name With Spaces:  12 kB'" in messages
    assert "'Negative:           -12 kB'" in messages


def test_foreign_units_are_converted_or_refused() -> None:
    full = sample_of("linux-6.1-xen-pvh-zswap")
    odd = sample_of("foreign-units")
    # B, MiB and KB convert exactly; an unknown unit drops the figure.
    assert replace(odd, problems=()) == replace(full, frontswap_kb=None, problems=())
    assert sorted(p.message for p in odd.problems) == sorted([
        "meminfo: SwapTotal is in 'B', not kB; converted",
        "meminfo: Cached is in 'MiB', not kB; converted",
        "meminfo: AnonPages is in 'KB', not kB; converted",
        "meminfo: Hugepagesize is in 'MB', not kB; converted",
        "meminfo: Zswapped is in unknown unit 'pages'; ignored",
    ])


def test_empty_files_and_missing_tree() -> None:
    for root in (FIXTURES / "empty", FIXTURES / "no-such-tree"):
        sample = ProcMemorySource(root).sample()
        with pytest.raises(IncompleteSample):
            to_report(sample, seq=1, ack=None)
        assert sample.mem_total_kb is None
        assert sample.problems


def test_page_size_scales_page_counts() -> None:
    sample = ProcMemorySource(FIXTURES / "linux-5.10-xen-hvm", page_kb=64).sample()
    assert sample.totalreserve_kb == (3976 + 23884 + 1605) * 64
    assert sample.frontswap_kb == 38400 * 64
    with pytest.raises(ValueError):
        ProcMemorySource(FIXTURES, page_kb=0)


def test_selfballooning_on_is_flagged(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "guest"
    shutil.copytree(FIXTURES / "linux-4.19-xen-pv", root)
    knob = root / "sys/devices/system/xen_memory/xen_memory0/selfballoon/selfballooning"
    knob.write_text("1\n")
    keys = [p.key for p in ProcMemorySource(root).sample().problems]
    assert "selfballooning:on" in keys


def test_swaps_decode_escapes_and_deleted_files() -> None:
    text = (
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        "/dev/xvda3                              partition\t2097148\t\t307200\t\t-2\n"
        "/var/swap\\040file                       file\t\t524284\t\t51200\t\t5\n"
        "/old\\040swap\\040(deleted)                file\t\t1024\t\t0\t\t-3\n"
        "/bad                                    file\t\t10\t\t20\t\t-4\n"
    )
    parsed = parse_swaps(text)
    rows = [(d.path, d.kind, d.size_kb, d.used_kb, d.priority, d.deleted) for d in parsed.value]
    assert rows == [
        ("/dev/xvda3", "partition", 2097148, 307200, -2, False),
        ("/var/swap file", "file", 524284, 51200, 5, False),
        ("/old swap (deleted)", "file", 1024, 0, -3, True),
    ]
    assert len(parsed.problems) == 1


def test_pressure_lines() -> None:
    parsed = parse_pressure(
        "some avg10=12.50 avg60=3.00 avg300=1.00 total=123456\n"
        "full avg10=4.25 avg60=1.00 avg300=0.10 total=654\n"
    )
    assert (parsed.value.some_avg10, parsed.value.full_avg10, parsed.value.some_total_us) == (
        12.5, 4.25, 123456,
    )
    assert parsed.problems == ()
    odd = parse_pressure("some avg10=nan avg60=0 avg300=0 total=-1\n")
    assert odd.value.some_avg10 is None and odd.value.some_total_us is None


def test_uptime() -> None:
    assert parse_uptime("12.5 40.1\n").value == 12.5
    assert parse_uptime("12.5").value is None
    assert parse_uptime("inf 0\n").value is None


def test_problem_lists_are_bounded() -> None:
    parsed = parse_meminfo("garbage\n" * 1000)
    assert len(parsed.problems) == 9
    assert parsed.problems[-1] == "meminfo: 992 more problems not shown"


_KERNELISH = "MemTotal:kB 0123456789\n-()_,=.avgsomefullNodezone\t\\"
_TEXT = st.text(alphabet=st.sampled_from(list(_KERNELISH)), max_size=400)


@settings(max_examples=100, deadline=None)
@given(text=_TEXT | st.text(max_size=400))
def test_parsers_never_raise(text: str) -> None:
    for parse in (parse_meminfo, parse_vmstat, parse_pressure, parse_zoneinfo, parse_swaps,
                  parse_uptime):
        parse(text)  # type: ignore[operator]


@settings(max_examples=60, deadline=None)
@given(contents=st.lists(st.binary(max_size=300), min_size=6, max_size=6))
def test_source_never_raises_on_garbage_files(tmp_path_factory: pytest.TempPathFactory,
                                              contents: list[bytes]) -> None:
    root = tmp_path_factory.mktemp("garbage")
    for relative, raw in zip(("proc/meminfo", "proc/vmstat", "proc/zoneinfo", "proc/uptime",
                              "proc/pressure/memory",
                              "sys/devices/system/xen_memory/xen_memory0/info/current_kb"),
                             contents, strict=True):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
    sample = ProcMemorySource(root).sample()
    try:
        report = to_report(sample, seq=1, ack=None)
    except IncompleteSample:
        return
    encode_report(report)


def test_zoneinfo_is_reread_every_n_samples(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "guest"
    shutil.copytree(FIXTURES / "linux-6.1-xen-pvh-zswap", root)
    source = ProcMemorySource(root, zoneinfo_every=3)
    assert source.sample().totalreserve_kb == (3840 + 14393 + 15939) * 4
    zoneinfo = root / "proc/zoneinfo"
    # An operator raised vm.min_free_kbytes: the kernel recomputed the watermarks.
    zoneinfo.write_text(zoneinfo.read_text().replace("high     9354", "high     9999"))
    assert [source.sample().totalreserve_kb for _ in range(3)] == [
        (3840 + 14393 + 15939) * 4, (3840 + 14393 + 15939) * 4, (3840 + 5039 + 9999 + 15939) * 4
    ]
    # A failed read is retried at the next sample, not after n of them.
    zoneinfo.write_text("")
    for _ in range(3):
        source.sample()
    assert source.sample().totalreserve_kb is None
    zoneinfo.write_text(NUMA_ZONEINFO)
    assert source.sample().totalreserve_kb == (3840 + 2000 + 2200) * 4
