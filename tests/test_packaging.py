"""What ships for installation: the systemd units and the example ballast.toml.

The example configuration must stay what the code does (every key, every
default), and each unit's ``ExecStart`` must be a command line Ballast
accepts; where ``systemd-analyze`` exists, systemd itself checks the units.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator import config as cfg
from orchestrator.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
UNITS = {
    "ballast.service": "ballast",
    "ballast-agent.service": "ballast-agent",
}


def _unit_values(path: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in path.read_text().splitlines()
            if line.startswith(f"{key}=")]


def test_example_configuration_is_every_key_at_its_default(tmp_path: Path) -> None:
    example = PACKAGING / "ballast.toml"
    copy = tmp_path / "ballast.toml"
    copy.write_text(example.read_text())
    copy.chmod(0o600)
    loaded = cfg.load(copy, required=True)
    assert loaded == cfg.Config()  # host_name is commented out: this machine's name
    text = example.read_text()
    named = set(re.findall(r"^#?\s*([a-z0-9_]+) = ", text, flags=re.MULTILINE))
    for section in dataclasses.fields(cfg.Config):
        assert f"[{section.name}]" in text
        keys = {f.name for f in dataclasses.fields(getattr(loaded, section.name))}
        assert keys <= named, f"[{section.name}] lacks {sorted(keys - named)}"


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_units_start_a_command_ballast_accepts(unit: str) -> None:
    path = PACKAGING / "systemd" / unit
    (exec_start,) = _unit_values(path, "ExecStart")
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == UNITS[unit]
    if UNITS[unit] == "ballast":
        args = argv[1:]
        result = CliRunner().invoke(app, [*args, "--help"])
        assert result.exit_code == 0, result.output
    else:
        done = subprocess.run([sys.executable, "-c", "from agents.entry import main; main()",
                               *argv[1:], "--help"], capture_output=True, text=True,
                              check=False, cwd=ROOT)
        assert done.returncode == 0, done.stderr
    assert _unit_values(path, "KillSignal") == ["SIGTERM"]


def test_the_controller_unit_keeps_its_state_private() -> None:
    path = PACKAGING / "systemd" / "ballast.service"
    assert _unit_values(path, "StateDirectory") == ["ballast"]
    assert _unit_values(path, "StateDirectoryMode") == ["0700"]
    assert _unit_values(path, "UMask") == ["0077"]
    # The unit's state directory is where the default history database lives.
    assert cfg.DEFAULT_DB_PATH.parent == Path("/var/lib") / "ballast"
    (exec_start,) = _unit_values(path, "ExecStart")
    assert str(cfg.DEFAULT_CONFIG_PATH) in exec_start


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_finds_nothing_wrong_with_the_units(unit: str, tmp_path: Path) -> None:
    text = (PACKAGING / "systemd" / unit).read_text()
    command = Path(sys.executable).with_name(UNITS[unit])
    # Installing the project (./scripts/test does) puts both console scripts
    # beside the interpreter; their absence is a packaging fault, not a skip.
    assert command.exists(), f"{command} is not installed: check [project.scripts]"
    copy = tmp_path / unit
    copy.write_text(text.replace(f"/usr/local/bin/{UNITS[unit]}", str(command)))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    # Unknown or misspelt keys are only warnings to systemd: none is allowed here.
    assert str(copy) not in done.stderr, done.stderr
