"""Operator inputs, fuzzed: every bad input gets a clear error and changes nothing.

Hypothesis drives the size and time parsers (directly and through the CLI),
the policy validator (``steering``, which the CLI and MQTT share), the MQTT
command decoder and the report parser. Against a real SQLite history: after
a refused input the store holds exactly what it held before (policies,
versions, host settings, audit log); after an accepted one, the controller
can load what was stored.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agents.schema import _REPORT_SPEC, InvalidDocument, decode_report
from orchestrator import steering
from orchestrator.cli.main import app
from orchestrator.control import HostPolicy
from orchestrator.control.policy import HOST_FIELDS, VM_FIELDS, PolicyError
from orchestrator.controller.observe import DomainView, GuestKeys, apply_guest_keys
from orchestrator.errors import UsageError
from orchestrator.store.records import AuditSource, DomainRef, Sample, VmState
from orchestrator.store.store import Store, StoreConfig, open_store
from orchestrator.telemetry.commands import CommandError, PolicySet, decode_command
from orchestrator.units import MAX_DURATION_S, MAX_SIZE_KB, parse_duration_s, parse_size_kb
from tests.reliability.conftest import upgrade_db

HOST = "fuzz-host"
VM = DomainRef(uuid="00000000-0000-4000-8000-000000000001", name="vm1", domid=1)
BASE = HostPolicy(interval_s=5.0)
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("fuzz") / "ballast.db"
    upgrade_db(path)
    with open_store(str(path), config=StoreConfig(host=HOST)) as store:
        store.write([Sample(domain=VM, time=store.now(), target_kb=1 << 20, actual_kb=1 << 20,
                            demand_kb=None, available_kb=None, committed_kb=None,
                            swap_used_kb=None, psi_some_pct=None, psi_full_pct=None,
                            refault_per_s=None, swapin_per_s=None, state=VmState.OK)])
    yield path


@pytest.fixture(scope="module")
def store(db: Path) -> Iterator[Store]:
    with open_store(str(db), config=StoreConfig(host=HOST)) as opened:
        yield opened


def everything(store: Store) -> Any:
    """All an operator can change, as plain data."""
    policies = {u: (r.version, dict(r.document)) for u, r in store.policies().items()}
    settings_ = store.settings()
    audit = [(a.version, a.who, a.source) for a in store.audit_log(since="520w", limit=100000)]
    return policies, (settings_.version, dict(settings_.document)), audit


def one_line_error(text: str) -> bool:
    return bool(text.strip()) and "Traceback" not in text


# -------------------------------------------------------------------- parsers

operator_text = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\s*-?[0-9]{0,25}(\.[0-9]{0,12})?(e[+-]?[0-9]{1,4})?\s*[KMGTkmgtiBb]{0,3}\s*",
                  fullmatch=True),
    st.from_regex(r"\s*[0-9]{0,20}(\.[0-9]{0,9})?\s*[smhdwSMHDW]?\s*", fullmatch=True),
    st.sampled_from(["nan", "inf", "-0", "1e999", "0x10", "１２３", "5G5", "M", "", " ", "\x00"]),
)


@given(text=operator_text)
@settings(max_examples=400, deadline=None)
def test_size_and_duration_parsers_give_a_value_in_range_or_one_clear_error(text: str) -> None:
    try:
        kb = parse_size_kb(text)
    except UsageError as exc:
        assert ("\n" not in str(exc) and repr(text) in str(exc)) or "larger" in str(exc)
    else:
        assert isinstance(kb, int) and 0 <= kb <= MAX_SIZE_KB
    try:
        seconds = parse_duration_s(text)
    except UsageError as exc:
        assert ("\n" not in str(exc) and text in str(exc)) or repr(text) in str(exc)
    else:
        assert math.isfinite(seconds) and 0 <= seconds <= MAX_DURATION_S


@given(option=st.sampled_from(["--min", "--max", "--reserve", "--target", "--weight"]),
       value=operator_text)
@FUZZ
def test_cli_policy_set_refuses_bad_values_and_changes_nothing(
    db: Path, store: Store, option: str, value: str,
) -> None:
    before = everything(store)
    result = CliRunner().invoke(app, ["policy", "set", "vm1", option, value, "--db", str(db),
                                      "--host-name", HOST])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    if result.exit_code != 0:
        assert one_line_error(result.output), result.output
        assert everything(store) == before
    else:
        steering.load_policy(store, BASE)  # what was stored, the controller can load
        assert everything(store) != before or "nothing changed" in result.output


@given(command=st.sampled_from(["history", "decisions", "events"]), since=operator_text,
       until=st.one_of(st.none(), operator_text))
@FUZZ
def test_cli_time_options_give_a_result_or_one_clear_error(
    db: Path, store: Store, command: str, since: str, until: str | None,
) -> None:
    before = everything(store)
    args = [command, "vm1"] if command != "events" else [command]
    args += ["--since", since, "--db", str(db), "--host-name", HOST, "--json"]
    if until is not None:
        args += ["--until", until]
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1, 2), result.output
    if result.exit_code == 0:
        json.loads(result.output)
    else:
        assert one_line_error(result.output)
    assert everything(store) == before


# ------------------------------------------------------------ policy validator

field_names = st.one_of(
    st.sampled_from(sorted({*VM_FIELDS, *HOST_FIELDS, "min", "max", "weight", "mode",
                            "free-margin", "stale", "dead", "defaults.weight"})),
    st.text(alphabet=string.ascii_letters + "_.-", min_size=1, max_size=12),
)
field_values = st.one_of(
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    operator_text,
    st.sampled_from(["auto", "fixed", "off", "pressure", "basic", "on", "512M", "2G", "30s"]),
)


@given(changes=st.dictionaries(field_names, field_values, min_size=1, max_size=4),
       unset=st.lists(field_names, max_size=2), host=st.booleans())
@FUZZ
def test_the_policy_validator_stores_only_what_the_controller_can_load(
    store: Store, changes: dict[str, Any], unset: list[str], host: bool,
) -> None:
    before = everything(store)
    try:
        if host:
            steering.change_host_policy(store, changes, unset, who="fuzz",
                                        source=AuditSource.CLI, base=BASE)
        else:
            steering.change_vm_policy(store, "vm1", changes, unset, who="fuzz",
                                      source=AuditSource.MQTT, base=BASE)
    except (PolicyError, UsageError) as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()
        assert everything(store) == before
    else:
        steering.load_policy(store, BASE)


# ------------------------------------------------------------ MQTT commands

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)
command_docs = st.fixed_dictionaries(
    {},
    optional={
        "vm": st.one_of(st.just("vm1"), st.text(max_size=10), json_value),
        "set": st.one_of(st.dictionaries(field_names, field_values, max_size=4), json_value),
        "unset": st.one_of(st.lists(field_names, max_size=3), json_value),
        "id": st.one_of(st.text(max_size=70), json_value),
        "client": st.one_of(st.text(max_size=20), json_value),
        "v": json_value,
        "extra": json_value,
    },
)


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


@given(payload=st.one_of(st.binary(max_size=300), command_docs.map(_encode)),
       unset_topic=st.booleans())
@FUZZ
def test_mqtt_commands_are_decoded_and_validated_or_refused_changing_nothing(
    store: Store, payload: bytes, unset_topic: bool,
) -> None:
    before = everything(store)
    try:
        request = decode_command(payload, unset=unset_topic)
    except CommandError as exc:
        assert str(exc).strip() and "\n" not in str(exc)
        assert everything(store) == before
        return
    command = request.command
    try:
        # What the host's apply callback does (telemetry_sink.PolicyCommands).
        steering.change_vm_policy(
            store, command.vm, command.as_dict() if isinstance(command, PolicySet) else {},
            () if isinstance(command, PolicySet) else command.fields,
            who=request.client.audit_name, source=AuditSource.MQTT, base=BASE)
    except (PolicyError, UsageError) as exc:
        assert str(exc).strip()
        assert everything(store) == before
    else:
        steering.load_policy(store, BASE)


# ------------------------------------------------------------------ reports

def _report_doc() -> st.SearchStrategy[dict[str, Any]]:
    wild = st.one_of(st.integers(min_value=-(1 << 80), max_value=1 << 80),
                     st.floats(allow_nan=False, allow_infinity=False), json_leaf, json_value)
    plausible = st.integers(min_value=0, max_value=1 << 35)
    fields = {name: st.one_of(plausible, wild) for name in _REPORT_SPEC}
    return st.fixed_dictionaries({"v": st.one_of(st.just(1), json_leaf)}, optional=fields)


@given(doc=_report_doc())
@settings(max_examples=300, deadline=None)
def test_a_report_is_decoded_within_its_bounds_or_refused_and_the_last_valid_kept(
    doc: dict[str, Any],
) -> None:
    raw = json.dumps(doc).encode()
    good = b'{"v":1,"seq":1,"uptime_s":5,"mem_total_kb":1048576,"mem_free_kb":1000,' \
           b'"mem_available_kb":2000,"cached_kb":0,"committed_as_kb":1,"totalreserve_kb":1,' \
           b'"anon_kb":1,"swap_total_kb":0,"swap_free_kb":0,"pswpin":0,"pswpout":0}'
    view = apply_guest_keys(DomainView(domid=1, uuid=VM.uuid, name="vm1"),
                            GuestKeys(report=good, meminfo_total=None, meminfo_free=None), 1.0)
    after = apply_guest_keys(view, GuestKeys(report=raw, meminfo_total=None,
                                             meminfo_free=None), 2.0)
    try:
        report = decode_report(raw)
    except InvalidDocument as exc:
        assert str(exc).strip()
        assert after.report == view.report and after.report_seen_s == 1.0
        assert after.report_error is not None
        return
    for name, (_kind, low, high, _required) in _REPORT_SPEC.items():
        value = getattr(report, name)
        assert value is None or low <= value <= high
    assert report.mem_free_kb <= report.mem_total_kb
    assert report.mem_available_kb <= report.mem_total_kb
    assert report.swap_free_kb <= report.swap_total_kb
    assert after.report == report and after.report_seen_s == 2.0


@pytest.mark.parametrize("args", [
    ["policy", "set", "vm1", "--max", "4096"],
    ["policy", "set", "vm1", "--min", "512"],
    ["policy", "set", "vm1", "--mode", "fixed", "--target", "2048"],
    ["policy", "set", "vm1", "-f", "fallback=1000"],
    ["policy", "set", "--host", "-f", "max=300"],
], ids=["max", "min", "target", "fallback", "host-default"])
def test_a_size_no_guest_can_run_in_is_refused_with_the_likely_meaning(
    db: Path, store: Store, args: list[str],
) -> None:
    """A bare number is KiB: ``--max 4096`` would balloon the VM to 4 MiB."""
    before = everything(store)
    result = CliRunner().invoke(app, [*args, "--db", str(db), "--host-name", HOST])
    assert result.exit_code == 1, result.output
    assert "below 16 MiB" in result.output and "did you mean" in result.output
    assert result.output.count("\n") == 1
    assert everything(store) == before
    # MQTT goes through the same check.
    with pytest.raises(PolicyError, match="below 16 MiB"):
        steering.change_vm_policy(store, "vm1", {"max_kb": 4096}, who="ops@desk",
                                  source=AuditSource.MQTT, base=BASE)
    assert everything(store) == before
