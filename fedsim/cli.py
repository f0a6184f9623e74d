"""The `fedsim` command line.

- ``run``: run a scenario and write its run directory; ``--resume DIR`` continues a run
  from its last checkpoint.
- ``validate``: check scenario files without running them.
- ``strategies``: list the strategies a scenario can name.
- ``topology show``: a scenario's graph: degree stats, spectral gap, a PNG.
- ``sweep``: run every (point, seed) of a sweep file; finished runs are skipped.
- ``report``: compare run or sweep directories over seeds.
- ``deploy``: print the commands that run a scenario on real devices with Flower.

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

from fedsim.core.schema import Scenario, ScenarioError
from fedsim.scenario import load_scenario

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
    scenario_file: Annotated[Path | None, typer.Argument(
        help="Scenario YAML file (not with --resume).", show_default=False)] = None,
    overrides: Overrides = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: output.dir/NAME-TIME).")
                   ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    resume: Annotated[Path | None, typer.Option(
        help="Continue the run in this directory from its last checkpoint "
             "(scenario from its resolved.yaml).", show_default=False)] = None,
) -> None:
    """Run a scenario and write its run directory (metrics, summary, plots)."""
    from fedsim.checkpoint import CheckpointError, save_arrays
    from fedsim.results import RunWriter
    from fedsim.runner import Diverged, RunStalled, simulate
    from topologies import TopologyError

    if resume is not None:
        if scenario_file is not None or overrides or out is not None:
            fail("--resume RUN_DIR takes the scenario and directory from RUN_DIR; "
                 "give no scenario file, --set or --out with it")
        if not (resume / "resolved.yaml").is_file():
            fail(f"{resume}: not a run directory (no resolved.yaml)")
        scenario = load_or_fail(resume / "resolved.yaml", None)
        run_dir = resume
    elif scenario_file is None:
        fail("give a scenario file, or --resume RUN_DIR")
    else:
        scenario = load_or_fail(scenario_file, overrides)
        run_dir = out or new_run_dir(scenario)
    writer = RunWriter(run_dir, plots=scenario.output.plots)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                        console=console, disable=quiet)
    try:
        with progress:
            bar = ProgressBar(progress, scenario.rounds)
            result = simulate(scenario, [writer, bar], log_file=_log_file(run_dir),
                              run_dir=run_dir, resume=resume is not None)
    except (ScenarioError, TopologyError, RunStalled, CheckpointError) as exc:
        fail(str(exc))
    except Diverged as exc:
        fail(f"{exc}; metrics up to the last finite round are in {run_dir}", code=1)
    if result.arrays is not None:
        save_arrays(run_dir / "model.npz", result.arrays)
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


topology_app = typer.Typer(help="Inspect a scenario's communication graph.",
                           no_args_is_help=True)
app.add_typer(topology_app, name="topology")


@topology_app.command("show")
def topology_show(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML file.", show_default=False)],
    overrides: Overrides = None,
    out: Annotated[Path | None, typer.Option(
        help="PNG to write (default: output.dir/NAME-topology.png).")] = None,
) -> None:
    """Print the graph's degree stats and spectral gap, and draw it to a PNG."""
    from strategies import strategy_info
    from topologies import TopologyError, build_graph, degree_stats, draw_topology, mixing_matrix
    from topologies import spectral_gap as gap_of

    scenario = load_or_fail(scenario_file, overrides)
    if scenario.topology is None:
        fail("topology: this scenario has no `topology` section (e.g. `topology: {name: ring}`)")
    params = strategy_info(scenario.strategy.name).Params.model_validate(
        scenario.strategy.params)
    mixing = getattr(params, "mixing", "metropolis_hastings")
    steps = getattr(params, "gossip_steps", 1)
    try:
        graph = build_graph(scenario.topology, scenario.clients.count, scenario.seed)
        gap = gap_of(mixing_matrix(graph, mixing))
    except TopologyError as exc:
        fail(str(exc))
    table = Table(show_header=False, box=None)
    table.add_row("topology", str(scenario.topology))
    for key, value in degree_stats(graph).items():
        table.add_row(key.replace("_", " "), f"{value:.4g}" if isinstance(value, float)
                      else str(value))
    table.add_row("mixing", mixing)
    table.add_row("spectral gap 1-λ", f"{gap:.4g}")
    table.add_row(f"spectral gap 1-λ^Q (Q={steps})", f"{1 - (1 - gap) ** steps:.4g}")
    png = out or scenario.output.dir / f"{scenario.name}-topology.png"
    draw_topology(graph, png, title=f"{scenario.name}: {scenario.topology}", seed=scenario.seed)
    table.add_row("png", str(png))
    console.print(table)


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML file.", show_default=False)],
    out: Annotated[Path | None, typer.Option(help="Sweep directory (default: runs/sweeps/NAME).")
                   ] = None,
    parallel: Annotated[int, typer.Option(min=1, help="Runs at once (each its own process).")
                        ] = 1,
    retry_failed: Annotated[bool, typer.Option(help="Run failed points again.")] = False,
    report_too: Annotated[bool, typer.Option("--report/--no-report",
                                             help="Write the comparison report at the end.")
                          ] = True,
) -> None:
    """Run every (point, seed) of a sweep; finished runs are skipped, so it resumes."""
    from fedsim.report import collect, write_report
    from fedsim.sweep import expand, load_sweep, run_sweep

    try:
        spec, _ = load_sweep(sweep_file)
    except ScenarioError as exc:
        fail(str(exc))
    out_dir = out or Path("runs") / "sweeps" / spec.name
    total = len(expand(spec))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console)
    with progress:
        bar = progress.add_task(spec.name, total=total, status="")

        def advance(point: Any, state: str) -> None:
            progress.update(bar, advance=1, status=f"{point.dirname}: {state}")

        outcome = run_sweep(sweep_file, out_dir, parallel, retry_failed, advance)
    console.print(f"{outcome.done} run, {outcome.skipped} skipped (done before), "
                  f"{outcome.failed} failed -> {out_dir}", highlight=False)
    if report_too:
        paths = write_report(collect([out_dir / "runs"]), out_dir / "report", spec.target_accuracy)
        console.print(f"report: {paths['md']}", highlight=False)


@app.command()
def report(
    paths: Annotated[list[Path], typer.Argument(help="Run or sweep directories.",
                                                show_default=False)],
    out: Annotated[Path, typer.Option(help="Where to write the report.")] = Path("report"),
    target: Annotated[float | None, typer.Option(help="Target accuracy for time-to-target.")
                      ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Also print the table: md, csv or json.")
                   ] = "md",
) -> None:
    """Compare runs: mean +- std over seeds, time and bytes to target, curves with bands."""
    from fedsim.report import collect, summarize, table_csv, write_report

    missing = [p for p in paths if not p.exists()]
    if missing:
        fail(f"{missing[0]}: no such run or sweep directory")
    if fmt not in ("md", "csv", "json"):
        fail(f"--format {fmt!r}: use md, csv or json")
    runs = collect(paths)
    if not runs:
        fail(f"no runs found under {', '.join(map(str, paths))} (a run directory has summary.json)")
    written = write_report(runs, out, target)
    if fmt == "csv":
        console.print(table_csv(summarize(runs, target)), highlight=False, markup=False)
    elif fmt == "json":
        console.print(written["json"].read_text(), highlight=False, markup=False)
    else:
        console.print(written["md"].read_text(), highlight=False, markup=False)


@app.command()
def deploy(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML file.", show_default=False)],
    superlink: Annotated[str, typer.Option(
        help="host:port the devices reach the SuperLink at; the SuperLink listens on that host "
             "(127.0.0.1 unless you name one).")] = "127.0.0.1:8000",
    bind: Annotated[str | None, typer.Option(
        help="Address the SuperLink listens on instead of the --superlink host (e.g. 0.0.0.0 "
             "behind NAT or in a container).", show_default=False)] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="No TLS, no node authentication, 127.0.0.1 only: a quick local try. "
                           "Anyone reaching the port could join or submit runs.")] = False,
) -> None:
    """Print the commands that run a scenario on real devices with Flower.

    By default: TLS (docker/generate_certs.sh) and SuperNode authentication
    (docker/generate_node_keys.sh, `flwr supernode register`).
    """
    from fedsim.deploy import (
        is_loopback,
        parse_superlink,
        register_command,
        server_san,
        superlink_command,
        supernode_commands,
    )

    try:
        host, port = parse_superlink(superlink)
    except ValueError as exc:
        fail(f"--superlink {exc}")
    if insecure and not (is_loopback(host) and bind in (None, "127.0.0.1", "localhost")):
        fail(f"--insecure serves plain HTTP to anyone who reaches the port, so it stays on "
             f"127.0.0.1; for --superlink {superlink} drop --insecure (TLS + node authentication)")
    scenario = load_or_fail(scenario_file, None)
    n = scenario.clients.count

    def line(text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    if insecure:
        line("# WARNING: --insecure: no TLS, no node authentication, bound to 127.0.0.1; "
            "for a quick local try only")
        line(f"# 1. start the SuperLink\n{superlink_command(port, insecure=True)}\n")
        line(f"# 2. start the {n} SuperNodes (one line each)")
        for command in supernode_commands(n, f"127.0.0.1:{port}", insecure=True):
            line(command)
        line(f'\n# 3. add to $FLWR_HOME/config.toml (default ~/.flwr)\n'
            f'[superlink.fedsim]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    else:
        san = "" if is_loopback(host) else f'SERVER_SAN="{server_san(host)}" '
        line(f"# 1. on your machine, from the project directory: a CA, the SuperLink's "
            f"certificate, one authentication key pair per device\n"
            f"{san}docker/generate_certs.sh   # -> docker/certificates/\n"
            f"docker/generate_node_keys.sh {n}   # -> docker/keys/\n")
        line(f"# 2. on the server (copy docker/certificates/ca.crt, server.pem, server.key; "
            f"never ca.key)\n{superlink_command(port, host=bind or host)}\n")
        line(f"# 3. on your machine: add to $FLWR_HOME/config.toml (default ~/.flwr), then "
            f'register each device\'s public key\n[superlink.fedsim]\naddress = "{superlink}"\n'
            f'root-certificates = "docker/certificates/ca.crt"\n')
        line(register_command(n))
        line(f"\n# 4. on each of the {n} devices (device i runs line i; copy "
            f"docker/certificates/ca.crt and its own docker/keys/supernode-i)")
        for command in supernode_commands(n, superlink):
            line(command)
        line("")
    line(f"# submit the run from the project directory\n"
        f"flwr run . fedsim --stream -c 'scenario=\"{scenario_file}\"'")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
