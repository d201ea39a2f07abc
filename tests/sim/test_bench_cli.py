"""``ballast bench control``: the table, the documented JSON, the SVG, clear errors."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.sim.bench import controller_factories, run_bench
from orchestrator.sim.metrics import RESULT_KEYS
from orchestrator.sim.scenario import builtin_names, load_file

HEADER = "t_s,unreclaimable_mb,hot_cache_mb,cold_cache_mb,committed_mb\n"


def tiny(tmp_path: Path) -> Path:
    (tmp_path / "t.csv").write_text(
        HEADER + "0,500,200,300,900\n200,1400,300,300,2000\n400,500,200,300,900\n"
    )
    toml = "[host]\nmemory_mb = 8192\ndom0_reserve_mb = 1024\nduration_s = 600\n"
    for name in ("a", "b"):
        toml += f'[[vm]]\nname = "{name}"\nstatic_max_mb = 3072\nswap_mb = 512\ntrace = "t.csv"\n'
    path = tmp_path / "tiny.toml"
    path.write_text(toml)
    return path


def test_table_json_and_plot(tmp_path: Path) -> None:
    scenario = tiny(tmp_path)
    out_json = tmp_path / "out.json"
    out_svg = tmp_path / "out.svg"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "control",
            str(scenario),
            "--controllers",
            "ballast,static,selfballoon",
            "--json",
            str(out_json),
            "--plot",
            str(out_svg),
            "--jobs",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("tiny: 2 VMs, host 8192 MB")
    assert [line.split()[0] for line in lines[2:5]] == ["ballast", "static", "selfballoon"]
    doc = json.loads(out_json.read_text())
    assert isinstance(doc, list) and len(doc) == 1
    assert set(doc[0]) == {"scenario", "results"}
    assert doc[0]["scenario"] == "tiny"
    rows = doc[0]["results"]
    assert [r["controller"] for r in rows] == ["ballast", "static", "selfballoon"]
    for row in rows:
        assert list(row) == list(RESULT_KEYS)
        for key in RESULT_KEYS[1:]:
            assert row[key] is None or isinstance(row[key], int | float), key
    static = rows[1]
    assert static["savings_vs_static"] == 0 and static["efficiency_vs_oracle"] == 0
    assert static["footprint_mb"] == 6144
    svg = ET.parse(out_svg).getroot()
    assert svg.tag.endswith("svg")
    texts = [t.text for t in svg.iter() if t.tag.endswith("text")]
    assert "tiny" in texts and "ballast" in texts and "need" in texts


def test_the_oracle_scores_efficiency_even_when_not_listed(tmp_path: Path) -> None:
    scenario = load_file(tiny(tmp_path))
    (result,) = run_bench([scenario], ["static", "oracle"], jobs=1)
    static, oracle = result.scores
    assert oracle.efficiency_vs_oracle == 1.0
    assert oracle.footprint_mb < static.footprint_mb
    (alone,) = run_bench([scenario], ["static"], jobs=1)
    assert alone.oracle_mb == result.oracle_mb
    assert [s.controller for s in alone.scores] == ["static"]


def test_every_controller_is_registered() -> None:
    assert list(controller_factories()) == [
        "ballast",
        "static",
        "selfballoon",
        "qmemman",
        "squeezed",
        "mom",
        "senpai",
        "oracle",
    ]
    assert len(builtin_names()) == 10


def test_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        (["bench", "control", "nope"], "unknown scenario 'nope'"),
        (
            ["bench", "control", str(tiny(tmp_path)), "--controllers", "ballast,magic"],
            "unknown controller 'magic'",
        ),
        (
            ["bench", "control", str(tiny(tmp_path)), "--plot", str(tmp_path / "x.png")],
            "--plot writes SVG",
        ),
        (["bench", "control", str(tmp_path / "missing.toml")], "does not exist"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
