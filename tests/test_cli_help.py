"""Every CLI command has help text (STYLE: a command without help is a failure)."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from orchestrator.cli.main import app


def _walk(cmd: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    found = [(path, cmd)]
    for name, sub in getattr(cmd, "commands", {}).items():
        found.extend(_walk(sub, [*path, name]))
    return found


def test_every_command_has_help() -> None:
    root = typer.main.get_command(app)
    commands = _walk(root, [])
    missing = [" ".join(p) or "ballast" for p, c in commands if not (c.help or "").strip()]
    assert not missing, f"commands without help text: {missing}"
    runner = CliRunner()
    for path, _cmd in commands:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("ballast ")
