"""docker-compose.yml: every Ballast command line in it is one the real CLI accepts.

Each service's command is parsed by the real Typer application, exactly as
``ballast`` would parse it, down to the leaf command, without running it: an
unknown command, an unknown option, a missing argument or a value of the
wrong type fails here. The wiring between services (broker, database, host
names, scenarios) is checked too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import typer.main
import yaml

from orchestrator.cli.main import app

ROOT = Path(__file__).parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SCENARIOS = ROOT / "orchestrator" / "sim" / "scenarios"
# The CLI's usage errors (unknown option, bad value, missing argument...):
# the vendored click's UsageError, reached through what typer exports.
CLI_USAGE_ERROR: type[Exception] = next(
    cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError"
)
ROOT_COMMAND = typer.main.get_command(app)


def parse_command_line(argv: list[str]) -> list[str]:
    """Parse ``ballast ARGV`` with the real CLI without running it; the command path.

    Raises the CLI's usage error for anything ``ballast`` itself would refuse.
    """
    command: Any = ROOT_COMMAND
    ctx = _group_context(command, "ballast", None)
    args = list(argv)
    path: list[str] = []
    while hasattr(command, "resolve_command"):  # a group: the next word names a command
        if not args:
            raise CLI_USAGE_ERROR(f"`ballast {' '.join(path)}` needs a command")
        name, sub, args = command.resolve_command(ctx, args)
        assert name is not None and sub is not None
        path.append(name)
        command = sub
        if hasattr(command, "resolve_command"):
            ctx = _group_context(command, name, ctx)
        else:
            # The leaf parses every option and argument, converting values.
            command.make_context(name, args, parent=ctx)
    return path


def _group_context(group: Any, name: str, parent: Any) -> Any:
    # A group's context without parsing the rest of the line (a group without
    # arguments would print its help); lookups through it are strict again.
    ctx = group.make_context(name, [], parent=parent, resilient_parsing=True)
    ctx.resilient_parsing = False
    return ctx


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _ballast_argv(service: dict[str, Any]) -> list[str] | None:
    """The arguments after ``ballast`` of a service running the Ballast image."""
    entrypoint = service.get("entrypoint")
    if service.get("image") != "ballast:dev":
        return None
    assert entrypoint is None, "services use the image's ENTRYPOINT [\"ballast\"]"
    command = service.get("command")
    assert isinstance(command, list), "give commands as lists: no shell word splitting"
    return [str(word) for word in command]


def _ballast_services() -> dict[str, list[str]]:
    found = {}
    for name, service in _services().items():
        argv = _ballast_argv(service)
        if argv is not None:
            found[name] = argv
    return found


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


SIM_SERVICES = ("host-a", "host-b")
OTHER_SERVICES = ("migrate", "fleet")


def test_the_fleet_is_all_there() -> None:
    services = _services()
    assert {"mosquitto", "postgres", *SIM_SERVICES, *OTHER_SERVICES} <= set(services)
    assert set(_ballast_services()) == {*SIM_SERVICES, *OTHER_SERVICES}
    # The image says how the Ballast services are built, once.
    build = services["migrate"]["build"]
    assert 'ENTRYPOINT ["ballast"]' in build["dockerfile_inline"]
    copied = {
        source
        for line in build["dockerfile_inline"].splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    }
    # What an install needs (migrations ship in the wheel), and nothing that is not there.
    assert {"orchestrator", "agents", "migrations", "pyproject.toml", "README.md"} <= copied
    assert all((ROOT / source).exists() for source in copied)


@pytest.mark.parametrize(
    ("service", "command"), [("migrate", ["db", "upgrade"]), ("fleet", ["fleet", "status"])]
)
def test_command_is_accepted_by_the_cli(service: str, command: list[str]) -> None:
    assert parse_command_line(_ballast_services()[service]) == command


@pytest.mark.parametrize("service", SIM_SERVICES)
def test_simulated_host_command_is_accepted_by_the_cli(service: str) -> None:
    argv = _ballast_services()[service]
    assert parse_command_line(argv) == ["sim"]


def test_services_are_wired_to_each_other() -> None:
    services = _services()
    ballast = _ballast_services()
    db_url = _option(ballast["migrate"], "--db")
    assert urlsplit(db_url).hostname == "postgres"
    assert urlsplit(db_url).path.lstrip("/") == services["postgres"]["environment"]["POSTGRES_DB"]
    for name in SIM_SERVICES:
        argv = ballast[name]
        assert _option(argv, "--db") == db_url  # one shared history
        broker = urlsplit(_option(argv, "--broker"))
        assert (broker.scheme, broker.hostname, broker.port) == ("mqtt", "mosquitto", 1883)
        assert (SCENARIOS / f"{_option(argv, '--scenario')}.toml").is_file()
        assert float(_option(argv, "--speed")) > 0
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["mosquitto"]["condition"] == "service_healthy"
    hostnames = [services[name]["hostname"] for name in SIM_SERVICES]
    assert len(set(hostnames)) == len(hostnames), "each host publishes under its own name"
    fleet = urlsplit(_option(ballast["fleet"], "--broker"))
    assert (fleet.hostname, fleet.port) == ("mosquitto", 1883)


@pytest.mark.parametrize(
    "argv",
    [
        ["fleet", "status", "--broker", "mqtt://mosquitto:1883", "--no-such-option"],
        ["fleet", "stauts", "--broker", "mqtt://mosquitto:1883"],
        ["fleet", "status", "--refresh", "soon"],
        ["db", "upgrade", "--db"],
        ["fleet"],
        ["no-such-command"],
    ],
    ids=["unknown-option", "unknown-command", "bad-value", "missing-value", "no-leaf",
         "unknown-top"],
)
def test_the_check_refuses_what_the_cli_refuses(argv: list[str]) -> None:
    with pytest.raises(CLI_USAGE_ERROR):
        parse_command_line(argv)
