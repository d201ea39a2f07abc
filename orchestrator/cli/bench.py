"""``ballast bench``: benchmarks that compare Ballast with its peers.

``ballast bench control`` runs the pure control code of every controller
against simulated fleets in virtual time (``orchestrator.sim``) and prints
one table per scenario; ``--json`` and ``--plot`` write the same results for
other tools and for people.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from orchestrator.errors import UsageError
from orchestrator.sim import scenario as scenarios
from orchestrator.sim.bench import (
    DEFAULT_JOBS,
    format_table,
    parse_controllers,
    run_bench,
    to_json,
)
from orchestrator.sim.plot import render_svg

app = typer.Typer(
    name="bench",
    help="Benchmarks: compare Ballast's control law with its peers on simulated fleets.",
    no_args_is_help=True,
)


@app.command("control")
def control(
    scenario: list[str] = typer.Argument(
        ...,
        metavar="SCENARIO...",
        help="Built-in scenario name, scenario TOML path, or 'all' for every built-in.",
    ),
    controllers: str | None = typer.Option(
        None,
        "--controllers",
        help="Comma-separated controllers to compare (default: all), e.g. ballast,selfballoon.",
    ),
    json_file: Path | None = typer.Option(
        None, "--json", help="Also write the results as JSON to this file."
    ),
    plot_file: Path | None = typer.Option(
        None, "--plot", help="Also draw total allocation over time to this SVG file."
    ),
    jobs: int = typer.Option(
        DEFAULT_JOBS, "--jobs", min=1, help="Runs to do in parallel (processes)."
    ),
) -> None:
    """Score controllers on simulated fleets in virtual time (a day takes seconds).

    Columns: mean footprint and savings against static, efficiency against the
    clairvoyant oracle, deficit (MB·s needed but not given), swap-ins, share of
    guest-time with PSI some above 0.1 %, OOM kills, host violations, reaction
    to demand steps (p50, p95) and balloon churn. Any OOM or host violation
    marks the controller FAILED on that scenario.
    """
    names = parse_controllers(controllers)
    specs: list[str] = []
    for item in scenario:
        specs.extend(scenarios.builtin_names() if item == "all" else [item])
    loaded = [scenarios.load(spec) for spec in dict.fromkeys(specs)]
    if plot_file is not None and plot_file.suffix.lower() != ".svg":
        raise UsageError(f"--plot writes SVG: give a file ending in .svg, not {plot_file}")
    results = run_bench(loaded, names, jobs=jobs)
    for i, result in enumerate(results):
        if i:
            typer.echo("")
        typer.echo(format_table(result))
    if json_file is not None:
        _write(json_file, json.dumps(to_json(results), indent=2) + "\n")
    if plot_file is not None:
        _write(plot_file, render_svg(results))


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
