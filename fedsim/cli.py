"""The `fedsim` command line.

- ``run``: run a scenario and write its run directory; ``--resume DIR`` continues a run
  from its last checkpoint.
- ``validate``: check scenario files without running them.
- ``strategies``, ``tasks``, ``topologies``: what a scenario can name, the project's and
  installed plug-ins' (`fedsim.core.plugins`); with a NAME, its parameters.
- ``topology show``: a scenario's graph: degree stats, spectral gap, a PNG.
- ``sweep``: run every (point, seed) of a sweep file; finished runs are skipped.
- ``report``: compare run or sweep directories over seeds.
- ``deploy``: print the commands that run a scenario on real devices with Flower.
- ``import-fedscale``: convert FedScale's device trace pickles to the plain trace format.

Bad input (a wrong key, a negative rate, an unknown strategy, a missing file)
is reported as one line naming the field and the fix, with exit code 2.

Output meant for programs (JSON, CSV, `validate`'s lines, tables on a pipe) is
written plainly, never through rich, so it is not wrapped at 80 columns or
coloured when stdout is a pipe or a file; rich draws tables and progress only
on a terminal.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedsim.core.errors import ScenarioError
from fedsim.files import apply_overrides, is_sweep, read_yaml

if TYPE_CHECKING:
    from fedsim.core.schema import Scenario

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
    error_line(message)
    raise typer.Exit(code)


def error_line(message: str) -> None:
    """One unwrapped line on stderr; the message is text, never rich markup."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def say(text: str) -> None:
    """A plain line on stdout: never wrapped, never coloured, whatever stdout is."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def show_table(rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None) -> None:
    """A rich table on a terminal; on a pipe or file, tab-separated lines that do not wrap."""
    if console.is_terminal:
        table = Table(*header) if header else Table(show_header=False, box=None)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    for row in ([header] if header else []) + rows:
        say("\t".join(row))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def load(path: Path, overrides: list[str] | None) -> Scenario:
    """The checked scenario of a file. The file is read (and a hostile one refused) before
    the schema, the registries and torch are imported."""
    data = apply_overrides(read_yaml(path), overrides or [])
    from fedsim.scenario import parse_scenario

    return parse_scenario(data, source=str(path))


def load_or_fail(path: Path, overrides: list[str] | None) -> Scenario:
    try:
        return load(path, overrides)
    except ScenarioError as exc:
        fail(str(exc))


def expected_rounds(scenario: Scenario) -> int | None:
    """Rounds the run will have, for progress: the scenario's, or what a Flower app's run
    config says by the template's key `num-server-rounds` (None: unknown)."""
    if scenario.app is None:
        return scenario.rounds
    rounds = scenario.app.run_config.get("num-server-rounds")
    return rounds if isinstance(rounds, int) and not isinstance(rounds, bool) else None


def progress_bar(progress: Progress, total: int | None) -> Any:
    """A callback that shows rounds done, test accuracy and virtual time while a run goes."""
    from fedsim.results import Callback

    class ProgressBar(Callback):
        def __init__(self) -> None:
            self.task = progress.add_task("starting", total=total, status="")

        def on_run_start(self, scenario: Scenario) -> None:
            progress.update(self.task, description=f"{scenario.name}")

        def on_round_end(self, record: dict[str, Any]) -> None:
            parts = [f"{k} {record[k]:.3f}" for k in ("accuracy", "loss") if k in record]
            if "virtual_time_s" in record:
                parts.append(f"t={record['virtual_time_s']:.1f}s")
            progress.update(self.task, completed=record["round"], status="  ".join(parts))

    return ProgressBar()


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
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace what an earlier run left in --out (refused otherwise).")
                         ] = False,
) -> None:
    """Run a scenario and write its run directory (metrics, summary, plots).

    One process writes a run directory at a time. Ctrl-C or SIGTERM stop the run after
    its last checkpoint (exit 130 / 143); `--resume RUN_DIR` goes on from there.
    """
    from fedsim.checkpoint import CheckpointError
    from fedsim.checks import CHECK_ERRORS, check_run
    from fedsim.results import (
        RunDirInUse,
        clear_run_outputs,
        has_run_outputs,
        run_dir_lock,
    )
    from fedsim.runner import AppFailed, ClientsFailed, Diverged, RunStalled, simulate
    from topologies import TopologyError

    if resume is not None:
        if scenario_file is not None or overrides or out is not None or overwrite:
            fail("--resume RUN_DIR takes the scenario and directory from RUN_DIR; "
                 "give no scenario file, --set, --out or --overwrite with it")
        if not (resume / "resolved.yaml").is_file():
            fail(f"{resume}: not a run directory (no resolved.yaml)")
        scenario = load_or_fail(resume / "resolved.yaml", None)
        run_dir = resume
    elif scenario_file is None:
        fail("give a scenario file, or --resume RUN_DIR")
    else:
        scenario = load_or_fail(scenario_file, overrides)
        run_dir = out or new_run_dir(scenario)
        if run_dir.exists() and not run_dir.is_dir():
            fail(f"--out {run_dir}: is a file; name a directory")
        if has_run_outputs(run_dir) and not overwrite:
            fail(f"--out {run_dir}: holds an earlier run; pass --overwrite to replace it, "
                 "--resume to continue it, or name another directory")
    try:  # a scenario that cannot start leaves no run directory behind
        check_run(scenario, resume=resume is not None)
    except CHECK_ERRORS as exc:
        fail(str(exc))
    held = contextlib.ExitStack()  # the run directory's lock, until the run ends
    try:
        held.enter_context(run_dir_lock(run_dir))
    except RunDirInUse as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{run_dir}: cannot write the run directory ({exc.strerror or exc})")
    if overwrite and resume is None:
        clear_run_outputs(run_dir)
    from fedsim.tracking import run_callbacks

    writers = run_callbacks(scenario, run_dir)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                        console=console, disable=quiet)
    signal.signal(signal.SIGTERM, _stop)  # SIGTERM ends a run as Ctrl-C does
    try:
        with progress:
            bar = progress_bar(progress, expected_rounds(scenario))
            result = simulate(scenario, [*writers, bar], log_file=_log_file(run_dir),
                              run_dir=run_dir, resume=resume is not None)
    except (KeyboardInterrupt, Stopped) as exc:
        code = 143 if isinstance(exc, Stopped) else 130
        how = (f"resume it with: fedsim run --resume {run_dir}" if scenario.checkpoint.every
               else "it kept no checkpoint (checkpoint.every: 0): run it again")
        fail(f"stopped by {'SIGTERM' if code == 143 else 'Ctrl-C'}; {how}", code=code)
    except (ScenarioError, TopologyError, RunStalled, CheckpointError) as exc:
        fail(str(exc))
    except Diverged as exc:
        fail(f"{exc}; metrics up to the last finite round are in {run_dir}", code=1)
    except (ClientsFailed, AppFailed) as exc:  # a bug in the clients or app, not bad input
        fail(f"{exc}; run directory: {run_dir}", code=1)
    finally:
        held.close()
    show_table([(key, _fmt(value)) for key, value in result.summary.items()])
    if result.summary.get("total_client_errors"):
        print(f"warning: {result.summary['total_client_errors']} client jobs raised in client "
              f"code (first: {result.summary['first_client_error']}); tracebacks in "
              f"{run_dir / 'flower.log'}", file=sys.stderr)
    say(f"run directory: {run_dir}")


class Stopped(BaseException):
    """SIGTERM arrived: unwind the run like Ctrl-C (not an error of the run)."""


def _stop(signum: int, frame: Any) -> None:
    raise Stopped


def _log_file(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir / "flower.log"


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(
        help="Scenario or sweep YAML files, or directories (every *.yaml / *.yml in them, "
             "recursively).", show_default=False)],
    overrides: Overrides = None,
) -> None:
    """Run every check `fedsim run` does before training, without training: one line a file.

    Schema, registries, and the strategy built as a run builds it (its own checks, the
    topology's connectivity, checkpointing), with no Ray and no network. A sweep file is
    checked at every (point, seed), with --set applied to its base. Exit code 2 if any
    file is bad; every file is still checked.
    """

    bad = 0
    for path in _yaml_files(paths):
        try:
            if is_sweep(read_yaml(path)):
                from fedsim.sweep import check_sweep

                spec, points = check_sweep(path, overrides)
                say(f"ok  {path}: sweep {spec.name} ({len(points)} runs)")
                continue
            scenario = load(path, overrides)
            from fedsim.checks import CHECK_ERRORS, check_run

            try:
                check_run(scenario)
            except CHECK_ERRORS as exc:
                raise ScenarioError(f"{path}: {exc}") from None
            rounds = f", {scenario.rounds} rounds" if scenario.rounds else ""
            say(f"ok  {path}: {scenario.name} ({scenario.algorithm}, "
                f"{scenario.clients.count} clients{rounds})")
        except ScenarioError as exc:
            error_line(str(exc))
            bad += 1
    if bad:
        raise typer.Exit(2)


def _yaml_files(paths: list[Path]) -> list[Path]:
    """The files themselves, and every YAML file under each directory, in a fixed order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")
                           and p.is_file() and not any(part.startswith(".") for part in
                                                       p.relative_to(path).parts))
            if not found:
                fail(f"{path}: no *.yaml or *.yml files in this directory")
            files += found
        else:
            files.append(path)  # a missing file is reported by read_yaml, in its turn
    return files


PluginName = Annotated[str | None, typer.Argument(
    help="Show this one in detail: every parameter with its type, default and meaning.",
    show_default=False)]


@app.command("import-fedscale")
def import_fedscale(
    capacity: Annotated[Path, typer.Argument(help="FedScale's client_device_capacity pickle.",
                                             show_default=False)],
    out: Annotated[Path, typer.Argument(help="The plain trace to write (.jsonl).",
                                        show_default=False)],
    behave: Annotated[Path | None, typer.Option(
        "--behave", help="FedScale's client_behave_trace pickle (availability).")] = None,
) -> None:
    """Convert FedScale's device traces to fedsim's plain trace format (`clients.trace`).

    The pickles are read with an unpickler that refuses every global: a file holding
    anything but dicts, lists, numbers and strings is refused, never run.
    """
    from fedsim.traces import fedscale_trace, write_trace

    try:
        devices = fedscale_trace(capacity, behave)
    except ScenarioError as exc:
        fail(str(exc))
    write_trace(devices, out)
    say(f"{len(devices)} devices written to {out}")


@app.command()
def strategies(name: PluginName = None) -> None:
    """List the strategies a scenario can name (`strategy.name`), installed plug-ins included."""
    from strategies import registry

    def details(info: Any) -> list[tuple[str, str]]:
        actions = ", ".join(info.client_actions) or "none (the default train and evaluate)"
        return [("client actions", actions)]

    _list_plugins(registry(), name, lambda info: info.summary, lambda info: info.Params,
                  details)


@app.command()
def tasks(name: PluginName = None) -> None:
    """List the tasks a scenario can name (`task.name`), installed plug-ins included."""
    from fedsim.engine.tasks import registry

    _list_plugins(registry(), name, lambda task: task.summary, lambda task: task.Params,
                  lambda task: [("models", ", ".join(task.models))])


@app.command()
def topologies(name: PluginName = None) -> None:
    """List the topologies a scenario can name (`topology.name`), installed plug-ins included."""
    from fedsim.core.plugins import topology_registry

    _list_plugins(topology_registry(), name, lambda spec: spec.summary, lambda spec: spec,
                  lambda spec: [])


def _list_plugins(registry: Any, name: str | None, summary: Any, params: Any,
                  details: Any) -> None:
    """Without `name`: one row per plug-in (name, what it is, parameters, origin). With it:
    the plug-in's origin, details and a row per parameter. A plug-in that cannot be loaded
    is one error line (exit code 2), after the rows of the others."""
    from fedsim.core.plugins import PluginError

    if name is not None:
        if name not in registry.names():
            fail(f"unknown {registry.kind} {name!r} (available: {', '.join(registry.names())})")
        try:
            item = registry.get(name, registry.kind)
        except PluginError as exc:
            fail(str(exc))
        rows = [("name", name), ("what it is", summary(item)), ("from", str(registry.origin(
            name))), ("entry point", registry.origin(name).entry_point), *details(item)]
        show_table(rows)
        say("")
        show_table(_parameters(params(item)) or [("(no parameters)", "", "", "")],
                   header=("parameter", "type", "default", "meaning"))
        return
    rows, broken = [], []
    for each in registry.names():
        try:
            item = registry.get(each, registry.kind)
            rows.append((each, summary(item), ", ".join(r[0] for r in _parameters(params(item))),
                         str(registry.origin(each))))
        except PluginError as exc:
            broken.append(str(exc))
    show_table(rows, header=("name", "what it is", "parameters", "from"))
    for line in broken:
        error_line(line)
    if broken:
        raise typer.Exit(2)


def _parameters(model: Any) -> list[tuple[str, str, str, str]]:
    """(name, type, default, meaning) of each field of a pydantic model, but a topology's
    `name` (the plug-in's own name)."""
    from topologies import TopologySpec

    rows = []
    for field_name, info in model.model_fields.items():
        if field_name == "name" and issubclass(model, TopologySpec):
            continue
        annotation = info.annotation
        kind = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        if info.is_required():
            default = "required"
        else:
            default = repr(info.default_factory() if info.default_factory else info.default)
        rows.append((field_name, kind.replace("typing.", "").replace("NoneType", "None"),
                     default, info.description or ""))
    return rows


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
    rows = [("topology", str(scenario.topology))]
    rows += [(key.replace("_", " "), _fmt(value)) for key, value in degree_stats(graph).items()]
    rows += [("mixing", mixing), ("spectral gap 1-λ", f"{gap:.4g}"),
             (f"spectral gap 1-λ^Q (Q={steps})", f"{1 - (1 - gap) ** steps:.4g}")]
    png = out or scenario.output.dir / f"{scenario.name}-topology.png"
    draw_topology(graph, png, title=f"{scenario.name}: {scenario.topology}", seed=scenario.seed)
    show_table([*rows, ("png", str(png))])


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
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Override a value of every point's scenario, e.g. --set rounds=3 "
                            "(repeatable; joins the sweep's `set`).")] = None,
    seeds: Annotated[int | None, typer.Option(
        min=1, help="Run seeds 0..N-1 instead of the sweep's seeds.", show_default=False)
                     ] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List every (point, seed) and check its scenario as `fedsim run` "
                          "would; run nothing.")] = False,
) -> None:
    """Run every (point, seed) of a sweep; finished runs are skipped, so it resumes."""
    from fedsim.report import collect, sweep_tuning, write_report
    from fedsim.sweep import (
        check_sweep,
        expand,
        load_sweep,
        run_state,
        run_sweep,
        tuning_points,
    )

    try:
        spec, points = (check_sweep(sweep_file, overrides, seeds) if dry_run else
                        (load_sweep(sweep_file, overrides, seeds)[0], []))
    except ScenarioError as exc:
        fail(str(exc))
    out_dir = out or Path("runs") / "sweeps" / spec.name
    if dry_run:
        show_table([(p.label, str(p.seed), run_state(out_dir / "runs" / p.dirname))
                    for p in points], header=("point", "seed", "state"))
        tuning = f" (+ {len(tuning_points(spec))} tuning runs)" if spec.tune else ""
        say(f"{len(points)} runs{tuning}, every scenario valid -> {out_dir}")
        return
    total = len(expand(spec)) + len(tuning_points(spec))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console)
    with progress:
        bar = progress.add_task(spec.name, total=total, status="")

        def advance(point: Any, state: str) -> None:
            progress.update(bar, advance=1, status=f"{point.dirname}: {state}")

        try:
            outcome = run_sweep(sweep_file, out_dir, parallel, retry_failed, advance,
                                overrides, seeds)
        except ScenarioError as exc:
            fail(str(exc))
    say(f"{outcome.done} run, {outcome.skipped} skipped (done before), "
        f"{outcome.failed} failed -> {out_dir}")
    if report_too:
        paths = write_report(collect([out_dir / "runs"]), out_dir / "report",
                             spec.target_accuracy, tuning=sweep_tuning([out_dir]))
        say(f"report: {paths['md']}")


@app.command()
def report(
    paths: Annotated[list[Path], typer.Argument(help="Run or sweep directories.",
                                                show_default=False)],
    out: Annotated[Path, typer.Option(help="Where to write the report.")] = Path("report"),
    target: Annotated[float | None, typer.Option(
        help="Target value of the metric for the to-target columns (default: a sweep's "
             "target_accuracy, for accuracy).", show_default=False)] = None,
    metric: Annotated[str | None, typer.Option(
        help="Recorded metric to compare (default: accuracy, else loss); higher is better "
             "for names with acc/auc/f1/precision/recall, lower for any other.",
        show_default=False)] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="Also print the table: md, csv, json or tex (LaTeX).")] = "md",
) -> None:
    """Compare runs: mean ± sample std over seeds, time and bytes to target, curves with bands.

    Runs are grouped by their resolved scenario (without seed, name, output, backend and
    checkpoint). The printed table is the written file verbatim (never wrapped), so
    `fedsim report DIR --format json | jq` and `--format csv > t.csv` work.
    """
    from fedsim.report import collect, default_metric, sweep_target, sweep_tuning, write_report

    missing = [p for p in paths if not p.exists()]
    if missing:
        fail(f"{missing[0]}: no such run or sweep directory")
    if fmt not in ("md", "csv", "json", "tex"):
        fail(f"--format {fmt!r}: use md, csv, json or tex")
    runs = collect(paths)
    if not runs:
        fail(f"no runs found under {', '.join(map(str, paths))} (a run directory has summary.json)")
    key = metric or default_metric(runs)
    recorded = {k for run in runs for r in run.records for k in r}
    if metric is not None and metric not in recorded:
        fail(f"--metric {metric}: no run recorded it (recorded: "
             f"{', '.join(sorted(k for k in recorded if k != 'round'))})")
    if target is None and key == "accuracy":
        target = sweep_target(paths)
    written = write_report(runs, out, target, key, sweep_tuning(paths))
    sys.stdout.write(written[fmt].read_text())
    sys.stdout.flush()


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
