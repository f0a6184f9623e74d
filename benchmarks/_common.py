"""Shared pieces of the benchmarks: one system per subprocess, timing summaries, tables.

Each system under test runs in a fresh Python process (`python <script> --system NAME`)
that prints one `RESULT {json}` line, so Ray clusters, thread pools and imports of one
system never warm up or slow down another.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

RESULT_PREFIX = "RESULT "
PROCESS_START = time.perf_counter()


def emit(result: dict[str, Any]) -> None:
    """Print a system's result for the parent process to parse."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def per_round(stamps: Sequence[float], warmup: int) -> list[float]:
    """Seconds of each round after warm-up, from end-of-round timestamps.

    `stamps[r]` is when round r ended (`stamps[0]`: just before round 1 began).
    """
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:], strict=False)]


def summarise(times: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(times), "median": statistics.median(times),
            "min": min(times), "max": max(times), "n": len(times)}


def run_system(script: str, system: str, argv: Sequence[str], timeout: float
               ) -> dict[str, Any]:
    """Run `script --system system argv...` in a fresh process; its RESULT, or an error."""
    command = [sys.executable, script, "--system", system, *argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"system": system, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - started
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            result["process_s"] = wall
            return result
    tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
    return {"system": system, "error": f"exit {done.returncode}: " + " | ".join(tail)}


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- shared systems
# Used by call_throughput, flute_lr_mnist, scale, time_model_overhead, gossip_scale, startup.

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def importable_from_workers() -> None:
    """Put benchmarks/ on PYTHONPATH so Ray workers (started later) can import its modules."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if BENCH_DIR not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [BENCH_DIR, *paths] if p)
    if BENCH_DIR not in sys.path:
        sys.path.insert(0, BENCH_DIR)


def peak_rss_mb() -> float:
    """This process's peak resident set size, MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cached_task(scenario: dict[str, Any], cache: dict[str, Any]) -> Any:
    """The scenario's task, built once per process (`cache` is that process's)."""
    key = json.dumps(scenario, sort_keys=True)
    if key not in cache:
        from fedsim.engine.tasks import make_task
        from fedsim.scenario import parse_scenario

        cache[key] = make_task(parse_scenario(scenario))
    return cache[key]


def fedsim_stamps(scenario: dict[str, Any], client_app: str | None = None
                  ) -> tuple[list[float], Any]:
    """Run `fedsim.runner.simulate` on the scenario; (end-of-round stamps, RunResult).

    `stamps[0]` is taken just before round 1 (the runner's round-0 record).
    """
    from fedsim.results import Callback
    from fedsim.runner import CLIENT_APP, simulate
    from fedsim.scenario import parse_scenario

    stamps: list[float] = []

    class Stamp(Callback):
        def on_round_end(self, record: dict[str, Any]) -> None:
            stamps.append(time.perf_counter())

    result = simulate(parse_scenario(scenario), callbacks=[Stamp()],
                      client_app=client_app or CLIENT_APP)
    return stamps, result


def plain_fedavg_stamps(task: Any, config: Any, nodes: int, per_round: int, rounds: int,
                        device: str = "cpu") -> tuple[list[float], float]:
    """The floor of a per-client loop: each round, sample `per_round` of `nodes` clients,
    train each in turn with `local_sgd` (`config`: a `TrainConfig`) on `device`, and average
    the state dicts weighted by samples. Returns (end-of-round stamps, last train loss)."""
    import random

    import torch

    from fedsim.core.device import computing_on, usable_device
    from fedsim.core.seeding import int_seed
    from fedsim.core.training import local_sgd

    torch.set_num_threads(1)
    on = usable_device(device)
    torch.manual_seed(0)
    model = task.make_model().to(on)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = random.Random(0)
    stamps, loss = [time.perf_counter()], float("nan")
    for round_ in range(1, rounds + 1):
        total, acc, loss_sum = 0, {k: torch.zeros_like(v) for k, v in state.items()}, 0.0
        for node in sampler.sample(range(nodes), per_round):
            torch.default_generator.manual_seed(int_seed(0, "job", node, round_, 0))
            model.load_state_dict(state)
            data = task.train_data(node)
            with computing_on(on):
                _, node_loss = local_sgd(model, task, data, config)
            for k, v in model.state_dict().items():
                acc[k] += v * len(data)
            total += len(data)
            loss_sum += node_loss * len(data)
        state = {k: v / total for k, v in acc.items()}
        loss = loss_sum / total
        if on.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    return stamps, loss


def flower_fedavg_stamps(scenario: dict[str, Any], workers: int, device: str = "cpu",
                         client_gpus: float = 0.0, gpus: int = 0) -> tuple[list[float], float]:
    """The scenario's FedAvg workload on `flwr.simulation.run_simulation` (Ray backend).

    Flower's own `FedAvg` (fraction_train from the scenario's strategy params, no
    evaluation) and a ClientApp that trains like fedsim's: `local_sgd` on the task's
    shard, torch seeded per (node, round), one torch thread, on `device`. `num_cpus: 1`
    (and `client_gpus` GPUs) per client and Ray started with `workers` CPUs and `gpus`
    GPUs, so `workers` clients (at most 1 / client_gpus per GPU) train at once.
    Returns (end-of-round stamps from the strategy's `evaluate_fn`, last train loss).
    """
    import tempfile
    from pathlib import Path

    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    with tempfile.TemporaryDirectory() as tmp:
        stamp_file = str(Path(tmp) / "stamps.txt")
        server_app, client_app = _flower_fedavg_apps(scenario, stamp_file, device)
        run_simulation(server_app=server_app, client_app=client_app,
                       num_supernodes=scenario["clients"]["count"], backend_name="ray",
                       backend_config={"client_resources": {"num_cpus": 1,
                                                            "num_gpus": client_gpus},
                                       "init_args": {"num_cpus": workers, "num_gpus": gpus}})
        lines = Path(stamp_file).read_text().split() if Path(stamp_file).exists() else []
        loss_file = Path(stamp_file + ".loss")
        loss = float(loss_file.read_text()) if loss_file.exists() else float("nan")
    return [float(t) for t in lines[1::2]], loss


def _flower_fedavg_apps(scenario: dict[str, Any], stamp_file: str, device: str = "cpu"
                        ) -> tuple[Any, Any]:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    tasks: dict[str, Any] = {}  # travels with the ClientApp to each Ray actor
    seed = int(scenario.get("seed", 0))
    client_app = ClientApp()

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        import torch

        from fedsim.core.codec import model_to_arrays
        from fedsim.core.device import computing_on, usable_device
        from fedsim.core.seeding import int_seed
        from fedsim.core.training import TrainConfig, local_sgd

        torch.set_num_threads(1)
        task = cached_task(scenario, tasks)
        node = int(context.node_config["partition-id"])
        config = message.content["config"]
        torch.manual_seed(int_seed(seed, "job", node, int(config.get("server-round", 0)), 0))
        data = task.train_data(node)
        with computing_on(usable_device(device)):  # model and batches there, as fedsim's
            model = task.model_with(message.content["arrays"])
            _, loss = local_sgd(model, task, data, TrainConfig.from_record(config))
        metrics = MetricRecord({"num-examples": len(data), "train_loss": loss})
        return Message(RecordDict({"arrays": model_to_arrays(model), "metrics": metrics}),
                       reply_to=message)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        from pathlib import Path

        import torch

        from fedsim.core.training import TrainConfig
        from fedsim.scenario import parse_scenario

        parsed = parse_scenario(scenario)
        task = cached_task(scenario, {})
        torch.manual_seed(0)
        arrays = ArrayRecord(task.make_model().state_dict())

        def stamp(server_round: int, _arrays: ArrayRecord) -> None:
            with open(stamp_file, "a") as f:
                f.write(f"{server_round} {time.perf_counter()}\n")

        params = scenario["strategy"].get("params", {})
        strategy = FedAvg(fraction_train=params.get("fraction_train", 1.0),
                          fraction_evaluate=0.0,
                          min_train_nodes=params.get("min_train_nodes", 2))
        result = strategy.start(grid, arrays, num_rounds=parsed.rounds, evaluate_fn=stamp,
                                train_config=TrainConfig.from_spec(parsed.training).to_record())
        last = result.train_metrics_clientapp.get(parsed.rounds)
        Path(stamp_file + ".loss").write_text(str(last["train_loss"]) if last else "nan")

    return server_app, client_app


def run_all(script: str, systems: Sequence[str], argv: Sequence[str], timeout: float,
            describe: Any = None) -> dict[str, dict[str, Any]]:
    """Run each system in its own process, printing one progress line per system."""
    results: dict[str, dict[str, Any]] = {}
    for system in systems:
        results[system] = r = run_system(script, system, argv, timeout)
        status = r.get("error") or (describe(r) if describe else "done")
        print(f"  {system}: {status}  (load {load_average()})", flush=True)
    return results


def verdict(label: str, value: float | None, target: float, higher_is_better: bool) -> str:
    """One line: the ratio, the target and whether it is met."""
    if value is None:
        return f"{label} = n/a (a system failed)   target {'>=' if higher_is_better else '<='} " \
               f"{target}"
    met = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    return f"{label} = {value:.3f}   target {sign} {target} ({'meets' if met else 'misses'})"


def child_argv(args: Any, names: Sequence[str]) -> list[str]:
    """`--name=value` for each of `names` (argparse dests), to pass options to a child."""
    return [f"--{n.replace('_', '-')}={getattr(args, n)}" for n in names]


def round_result(system: str, stamps: Sequence[float], warmup: int, rounds: int,
                 **extra: Any) -> dict[str, Any]:
    """A child's RESULT from its end-of-round stamps (error if some are missing)."""
    if len(stamps) != warmup + rounds + 1:
        return {"system": system, "error": f"{len(stamps)} round stamps, expected "
                                           f"{warmup + rounds + 1}"}
    return {"system": system, "rounds": per_round(stamps, warmup),
            "startup_s": stamps[0] - PROCESS_START, "warmup_s": stamps[warmup] - stamps[0],
            **extra}


def round_table(results: dict[str, dict[str, Any]], extra: Sequence[str] = ()) -> str:
    """s/round mean/median/min/max, startup, process time, and `extra` keys of each result."""
    rows = [["system", "s/round mean", "median", "min", "max", "startup s", "process s",
             *extra]]
    for system, r in results.items():
        if "error" in r:
            rows.append([system, "error", *[""] * (5 + len(extra))])
            continue
        s = summarise(r["rounds"])
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                 for k in extra]
        rows.append([system, f"{s['mean']:.4f}", f"{s['median']:.4f}", f"{s['min']:.4f}",
                     f"{s['max']:.4f}", f"{r.get('startup_s', float('nan')):.1f}",
                     f"{r.get('process_s', float('nan')):.1f}", *cells])
    return table(rows)


def mean_round(results: dict[str, dict[str, Any]], system: str) -> float | None:
    r = results.get(system)
    return summarise(r["rounds"])["mean"] if r and "error" not in r else None


def print_errors(results: dict[str, dict[str, Any]]) -> None:
    for system, r in results.items():
        if "error" in r:
            print(f"{system} failed: {r['error']}")


# ------------------------------------------------------------------ command line


def benchmark_parser(doc: str, systems: Sequence[str] | None = None, timeout: float = 600,
                     quick: str | None = None) -> argparse.ArgumentParser:
    """The options every benchmark has: --systems, --quick, --timeout, and the child's --system."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if systems:
        parser.add_argument("--systems", default=",".join(systems),
                            help=f"comma-separated subset of {','.join(systems)}")
    if quick:
        parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--timeout", type=float, default=timeout, help="per system, seconds")
    parser.add_argument("--system", choices=systems or None, help=argparse.SUPPRESS)  # child
    return parser


def workload_arguments(parser: argparse.ArgumentParser, rounds: int, warmup: int,
                       **sizes: int) -> None:
    """--rounds, --warmup, --workers, and any of --nodes/--per-round/--samples given."""
    parser.add_argument("--rounds", type=int, default=rounds, help="measured rounds")
    parser.add_argument("--warmup", type=int, default=warmup, help="rounds run first, unmeasured")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes / actors / concurrent clients (default: cpu count)")
    for name, default in sizes.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)


def dispatch(args: argparse.Namespace, measure: Callable[[argparse.Namespace], None],
             report: Callable[[argparse.Namespace], None]) -> NoReturn:
    """A child (`--system`) measures its system; the parent runs them all and reports."""
    (measure if args.system else report)(args)
    sys.exit(0)
