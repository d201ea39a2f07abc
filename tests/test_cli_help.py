"""Every CLI command has help text (STYLE: a command without help is a failure)."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from orchestrator.cli.main import app


def _walk(cmd: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    found = [(path, cmd)]
    if hasattr(cmd, "list_commands"):
        ctx = cmd.make_context(path[-1] if path else "ballast", [], resilient_parsing=True)
        for name in cmd.list_commands(ctx):
            found.extend(_walk(cmd.get_command(ctx, name), [*path, name]))
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


def test_commands_are_imported_only_when_used() -> None:
    """``ballast agent`` and ``ballast run`` must not pay for every command's imports."""
    import subprocess
    import sys

    probe = (
        "import sys; from orchestrator.cli.main import app; "
        "assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported by the CLI root'; "
        "assert 'orchestrator.cli.db' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
