"""The `fedsim` command line: run, validate, list strategies.

Bad input (a wrong key, a negative rate, an unknown strategy, a missing file)
is reported as one line naming the field and the fix, with exit code 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedsim.scenario import Scenario, ScenarioError, load_scenario

app = typer.Typer(
    help="Simulate federated and decentralized learning on heterogeneous devices and noisy "
         "links, in virtual time, with Flower strategies.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()
errors = Console(stderr=True)

Overrides = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="Override a scenario value, e.g. --set rounds=5 "
                        "--set strategy.params.fraction_train=0.5 (repeatable).")]


def fail(message: str, code: int = 2) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_or_fail(path: Path, overrides: list[str] | None) -> Scenario:
    try:
        return load_scenario(path, overrides or [])
    except ScenarioError as exc:
        fail(str(exc))


class ProgressBar:
    """Shows rounds done, test accuracy and virtual time while a run goes."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=total, status="")

    def on_run_start(self, scenario: Scenario) -> None:
        self.progress.update(self.task, description=f"{scenario.name}")

    def on_round_end(self, record: dict[str, Any]) -> None:
        parts = [f"{k} {record[k]:.3f}" for k in ("accuracy", "loss") if k in record]
        if "virtual_time_s" in record:
            parts.append(f"t={record['virtual_time_s']:.1f}s")
        self.progress.update(self.task, completed=record["round"], status="  ".join(parts))

    def on_run_end(self, summary: dict[str, Any], arrays: Any) -> None:
        pass


def new_run_dir(scenario: Scenario) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = scenario.output.dir / f"{scenario.name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = scenario.output.dir / f"{scenario.name}-{stamp}-{suffix}"
    return run_dir


@app.command()
def run(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML file.", show_default=False)],
    overrides: Overrides = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: output.dir/NAME-TIME).")
                   ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run a scenario and write its run directory (metrics, summary, plots)."""
    from fedsim.results import RunWriter
    from fedsim.runner import Diverged, RunStalled, simulate
    from topologies import TopologyError

    scenario = load_or_fail(scenario_file, overrides)
    run_dir = out or new_run_dir(scenario)
    writer = RunWriter(run_dir, plots=scenario.output.plots)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                        console=console, disable=quiet)
    try:
        with progress:
            bar = ProgressBar(progress, scenario.rounds)
            result = simulate(scenario, [writer, bar], log_file=_log_file(run_dir))
    except (ScenarioError, TopologyError, RunStalled) as exc:
        fail(str(exc))
    except Diverged as exc:
        fail(f"{exc}; metrics up to the last finite round are in {run_dir}", code=1)
    table = Table(show_header=False, box=None)
    for key, value in result.summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"run directory: [bold]{run_dir}[/]")


def _log_file(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir / "flower.log"


@app.command()
def validate(
    scenario_files: Annotated[list[Path], typer.Argument(help="Scenario YAML files.",
                                                         show_default=False)],
    overrides: Overrides = None,
) -> None:
    """Check scenario files without running them (exit code 2 on the first bad one)."""
    for path in scenario_files:
        s = load_or_fail(path, overrides)
        console.print(f"ok  {path}: {s.name} ({s.strategy.name}, {s.clients.count} clients, "
                      f"{s.rounds} rounds)", highlight=False)


@app.command()
def strategies() -> None:
    """List the strategies a scenario can name, with one line each."""
    from strategies import registry

    table = Table("name", "what it is")
    for name, info in sorted(registry().items()):
        table.add_row(name, info.summary)
    console.print(table)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
