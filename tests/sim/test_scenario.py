"""The scenario format: the built-in library loads; every mistake is one clear error."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from orchestrator.errors import UsageError
from orchestrator.sim import gen_traces
from orchestrator.sim.model import KB_PER_MB, ModelParams
from orchestrator.sim.scenario import (
    ScenarioError,
    builtin_dir,
    builtin_names,
    load,
    load_file,
)

HEADER = "t_s,unreclaimable_mb,hot_cache_mb,cold_cache_mb,committed_mb\n"
GOOD_TRACE = HEADER + "0,500,200,300,900\n60,800,250,300,1200\n"
HOST = "[host]\nmemory_mb = 8192\ndom0_reserve_mb = 1024\nduration_s = 120\n"
VM = '\n[[vm]]\nname = "a"\nstatic_max_mb = 2048\nswap_mb = 512\ntrace = "a.csv"\n'

EXPECTED_LIBRARY = {
    "diurnal-web",
    "nightly-batch",
    "slow-leak",
    "short-bursts",
    "idle-desktops",
    "jvm",
    "file-server",
    "boot-storm",
    "host-short",
    "mixed-day",
}


def write(tmp_path: Path, toml: str, trace: str = GOOD_TRACE) -> Path:
    (tmp_path / "a.csv").write_text(trace)
    path = tmp_path / "s.toml"
    path.write_text(toml)
    return path


def test_a_valid_scenario_loads_in_kib_with_defaults(tmp_path: Path) -> None:
    scenario = load_file(write(tmp_path, HOST + VM))
    assert scenario.name == "s"
    assert scenario.budget_kb == 7168 * KB_PER_MB
    assert scenario.duration_s == 120
    (vm,) = scenario.vms
    assert vm.static_max_kb == vm.max_kb == 2048 * KB_PER_MB
    assert vm.min_kb == 0 and not vm.min_given and vm.weight == 1.0
    # Each row holds until the next.
    assert vm.trace.demand_at(0).unreclaimable_kb == 500 * KB_PER_MB
    assert vm.trace.demand_at(59.9).unreclaimable_kb == 500 * KB_PER_MB
    assert vm.trace.demand_at(60).unreclaimable_kb == 800 * KB_PER_MB
    assert vm.trace.demand_at(1e6).committed_kb == 1200 * KB_PER_MB


def test_duration_defaults_to_the_last_row(tmp_path: Path) -> None:
    host = "[host]\nmemory_mb = 8192\ndom0_reserve_mb = 1024\n"
    assert load_file(write(tmp_path, host + VM)).duration_s == 60


def test_optional_bounds_and_weight(tmp_path: Path) -> None:
    toml = HOST + VM + "min_mb = 600\nmax_mb = 1800\nweight = 2.5\n"
    (vm,) = load_file(write(tmp_path, toml)).vms
    assert (vm.min_kb, vm.max_kb, vm.weight, vm.min_given) == (
        600 * KB_PER_MB,
        1800 * KB_PER_MB,
        2.5,
        True,
    )


def test_the_builtin_library_covers_the_issue_and_loads() -> None:
    assert set(builtin_names()) == EXPECTED_LIBRARY
    for name in builtin_names():
        scenario = load(name)
        assert scenario.vms, name
        assert scenario.duration_s >= 3600, name
    assert len(load("mixed-day").vms) == 8
    assert load("mixed-day").duration_s == 86400


def test_a_path_loads_like_a_name() -> None:
    assert load(str(builtin_dir() / "jvm.toml")).vms == load("jvm").vms


@pytest.mark.slow
def test_the_committed_library_is_what_the_generator_writes(tmp_path: Path) -> None:
    for spec in gen_traces.library():
        gen_traces.write(spec, tmp_path)
    ours = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(builtin_dir()) for p in builtin_dir().rglob("*") if p.is_file()
    )
    assert ours == committed
    _same, mismatch, errors = filecmp.cmpfiles(
        tmp_path, builtin_dir(), [str(p) for p in ours], shallow=False
    )
    assert not mismatch and not errors


def test_every_builtin_scenario_fits_its_host_at_its_peak() -> None:
    params = ModelParams()
    for name in builtin_names():
        scenario = load(name)
        configs = [vm.guest_config(params) for vm in scenario.vms]
        times = sorted({t for vm in scenario.vms for t in vm.trace.times_s})
        peak = max(
            sum(
                c.need_kb(vm.trace.demand_at(t))
                for c, vm in zip(configs, scenario.vms, strict=True)
            )
            for t in times
        )
        assert peak <= scenario.budget_kb, name


@pytest.mark.parametrize(
    ("toml", "trace", "message"),
    [
        pytest.param(
            HOST + "bad = = 1\n" + VM, GOOD_TRACE, r"invalid TOML: .*line 5", id="toml-syntax"
        ),
        pytest.param(VM, GOOD_TRACE, r"missing \[host\]", id="no-host"),
        pytest.param(HOST, GOOD_TRACE, r"no \[\[vm\]\] tables", id="no-vm"),
        pytest.param(
            HOST + "colour = 1\n" + VM, GOOD_TRACE, r"unknown keys \['colour'\]", id="host-key"
        ),
        pytest.param(
            HOST + VM + "size = 3\n",
            GOOD_TRACE,
            r"\[\[vm\]\] 'a': unknown keys \['size'\]",
            id="vm-key",
        ),
        pytest.param(
            HOST + VM.replace("swap_mb = 512\n", ""),
            GOOD_TRACE,
            r"'a': missing swap_mb",
            id="vm-missing",
        ),
        pytest.param(
            HOST + VM.replace("2048", '"2G"'),
            GOOD_TRACE,
            r"static_max_mb must be a number",
            id="string-size",
        ),
        pytest.param(
            HOST + VM.replace("2048", "0"),
            GOOD_TRACE,
            r"static_max_mb must be positive",
            id="zero-size",
        ),
        pytest.param(
            HOST + VM.replace('"a"', '"a b"', 1), GOOD_TRACE, r"name must be", id="bad-name"
        ),
        pytest.param(
            HOST + VM + VM, GOOD_TRACE, r"two \[\[vm\]\] tables are named 'a'", id="duplicate"
        ),
        pytest.param(
            HOST + VM + "max_mb = 4096\n",
            GOOD_TRACE,
            r"max_mb is larger than static_max_mb",
            id="max>static",
        ),
        pytest.param(
            HOST + VM + "min_mb = 3000\n", GOOD_TRACE, r"min_mb is larger than max_mb", id="min>max"
        ),
        pytest.param(HOST + VM + "weight = 0\n", GOOD_TRACE, r"weight must be in", id="weight"),
        pytest.param(
            HOST.replace("1024", "9000"), GOOD_TRACE, r"dom0_reserve_mb must be less", id="reserve"
        ),
        pytest.param(
            HOST.replace("120", "-5") + VM, GOOD_TRACE, r"duration_s must be in", id="duration"
        ),
        pytest.param(
            HOST + VM,
            "t_s,anon,hot,cold,committed\n0,1,1,1,1\n",
            r"a\.csv:1: header must be",
            id="header",
        ),
        pytest.param(HOST + VM, HEADER, r"no rows after the header", id="empty"),
        pytest.param(
            HOST + VM,
            HEADER + "5,1,1,1,1\n",
            r"a\.csv:2: the first row must be at t_s=0",
            id="first-row",
        ),
        pytest.param(
            HOST + VM,
            GOOD_TRACE + "60,1,1,1,1\n",
            r"a\.csv:4: t_s must increase",
            id="not-increasing",
        ),
        pytest.param(
            HOST + VM,
            GOOD_TRACE + "90,1,x,1,1\n",
            r"a\.csv:4: hot_cache_mb 'x' is not a number",
            id="nan-cell",
        ),
        pytest.param(
            HOST + VM,
            GOOD_TRACE + "90,1,1,1\n",
            r"a\.csv:4: expected 5 fields, found 4",
            id="short-row",
        ),
        pytest.param(
            HOST + VM,
            GOOD_TRACE + "90,1,-1,1,1\n",
            r"a\.csv:4: hot_cache_mb must be a finite number >= 0",
            id="negative",
        ),
        pytest.param(
            HOST + VM,
            GOOD_TRACE + "90,1,inf,1,1\n",
            r"a\.csv:4: hot_cache_mb must be a finite",
            id="inf",
        ),
        pytest.param(
            HOST + VM,
            GOOD_TRACE + "90,1900,200,0,1\n",
            r"a\.csv: row at t_s=90: unreclaimable \+ hot cache \(2100 MB\)"
            r".*exceed a's maximum \(2048 MB\)",
            id="too-big",
        ),
    ],
)
def test_mistakes_are_one_clear_error(tmp_path: Path, toml: str, trace: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message) as info:
        load_file(write(tmp_path, toml, trace))
    assert "\n" not in str(info.value)
    assert isinstance(info.value, UsageError)


def test_missing_files_and_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"trace .*a\.csv does not exist"):
        (tmp_path / "s.toml").write_text(HOST + VM)
        load_file(tmp_path / "s.toml")
    with pytest.raises(ScenarioError, match=r"does not exist"):
        load(str(tmp_path / "nope.toml"))
    with pytest.raises(ScenarioError, match=r"unknown scenario 'nope': .*diurnal-web"):
        load("nope")


def test_the_guests_minimums_must_fit_the_host(tmp_path: Path) -> None:
    toml = HOST + VM + "min_mb = 2000\n" + VM.replace('"a"', '"b"') + "min_mb = 2000\n"
    toml += (
        VM.replace('"a"', '"c"') + "min_mb = 2000\n" + VM.replace('"a"', '"d"') + "min_mb = 2000\n"
    )
    with pytest.raises(ScenarioError, match="min_mb add up to more than"):
        load_file(write(tmp_path, toml))
