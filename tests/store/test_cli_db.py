"""`ballast db upgrade|current|downgrade`, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.store import migrate, open_store
from orchestrator.store.engine import resolve_db_url

runner = CliRunner()


def _db_arg(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=False)


def test_upgrade_current_downgrade(db_url: URL) -> None:
    db = _db_arg(db_url)
    head = migrate.head_revision()
    created = runner.invoke(app, ["db", "upgrade", "--db", db])
    assert created.exit_code == 0, created.output
    assert f"schema empty -> {head}" in created.output
    again = runner.invoke(app, ["db", "upgrade", "--db", db])
    assert f"already at schema {head}" in again.output
    current = runner.invoke(app, ["db", "current", "--db", db, "--json"])
    assert current.exit_code == 0
    assert json.loads(current.output) | {"database": None} == {
        "database": None,
        "current": head,
        "head": head,
        "up_to_date": True,
    }
    open_store(db_url).close()
    refused = runner.invoke(app, ["db", "downgrade", "base", "--db", db], input="n\n")
    assert refused.exit_code != 0
    assert migrate.status(db_url).current == head
    down = runner.invoke(app, ["db", "downgrade", "base", "--db", db, "--yes"])
    assert down.exit_code == 0 and "empty (base)" in down.output
    after = runner.invoke(app, ["db", "current", "--db", db])
    assert after.exit_code == 1 and "not initialised: run `ballast db upgrade`" in after.output


def test_database_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "env.db"
    monkeypatch.setenv("BALLAST_DB", str(path))
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert path.exists() and migrate.status(resolve_db_url(str(path))).up_to_date


def test_database_from_the_configuration_as_ballast_run_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BALLAST_DB", raising=False)
    path = tmp_path / "from-config.db"
    config = tmp_path / "ballast.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{path}"\n')
    config.chmod(0o600)
    result = runner.invoke(app, ["db", "upgrade", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert migrate.status(resolve_db_url(str(path))).up_to_date
    monkeypatch.setenv("BALLAST_CONFIG", str(config))
    current = runner.invoke(app, ["db", "current", "--json"])
    assert current.exit_code == 0, current.output
    assert json.loads(current.output)["database"].endswith("from-config.db")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["db", "current", "--db", "{tmp}/missing.db"], "no history database at"),
        (["db", "upgrade", "--db", "mysql://x/y"], "unsupported database"),
        (["db", "upgrade", "--db", "{tmp}/x.db", "--to", "nonsense"], "cannot upgrade to"),
        (["db", "downgrade", "base", "--db", "{tmp}/missing.db", "--yes"], "no history database"),
    ],
    ids=["missing", "unsupported", "bad-revision", "downgrade-missing"],
)
def test_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
