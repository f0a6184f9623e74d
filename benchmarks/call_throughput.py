"""call_throughput: client calls per second for a no-op ClientApp, fedsim vs Flower vs Ray.

Every node of a population of `--nodes` (full participation) gets one message per
round holding a 1,000-float model and replies with it unchanged (`noop_app.py`), so
the figure is pure orchestration: how many ClientApp calls per second the engine
drives. Systems, each in its own process, `--workers` worker processes each:

  fedsim     `fedsim.engine.pool.make_pool("ray", WorkerSpec("noop_app:client_app", ...))`
             under a `SimGrid`; each round is one `grid.send_and_receive` of N messages
             (virtual time, byte counting, the pool's batching: what a strategy gets).
  flower     `flwr.simulation.run_simulation`, Ray backend, `num_cpus: 1` per client,
             the same ClientApp; its ServerApp does one `grid.send_and_receive` of N
             messages per round.
  ray        the floor: W bare Ray actors with an `echo(array)` method; one
             `actor.echo.remote(model)` per client call (round-robin), `ray.get` on all.
  ray-batch  a lower floor: one remote call per actor per round carrying its share.

calls/s = nodes x measured rounds / their wall time (warm-up rounds excluded).
Targets: fedsim >= 5x Flower, fedsim >= 1/3 of bare Ray (ray / fedsim time <= 3).

    .venv/bin/python benchmarks/call_throughput.py [--nodes 100,400] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    benchmark_parser,
    child_argv,
    dispatch,
    emit,
    importable_from_workers,
    load_average,
    round_result,
    run_all,
    summarise,
    table,
    verdict,
    workload_arguments,
)

SYSTEMS = ("fedsim", "flower", "ray", "ray-batch")
MODEL_SIZE = 1000
TARGET_VS_FLOWER = 5.0
TARGET_VS_RAY = 3.0


def _model() -> Any:
    import numpy as np

    return np.random.default_rng(0).standard_normal(MODEL_SIZE).astype(np.float32)


def run_fedsim(args: argparse.Namespace) -> list[float]:
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
    from flwr.supercore.run import Run

    from fedsim.core.schema import ChannelSpec, ClientsSpec
    from fedsim.engine.devices import DevicePopulation
    from fedsim.engine.grid import SimGrid
    from fedsim.engine.placement import ActorGroup
    from fedsim.engine.pool import WorkerSpec, make_pool

    spec = WorkerSpec("noop_app:client_app", 1, args.nodes)
    pool = make_pool("ray", spec, lambda cluster: [ActorGroup(args.workers)])
    try:
        grid = SimGrid(pool, DevicePopulation(ClientsSpec(count=args.nodes), 0), ChannelSpec(),
                       0, Run.create_empty(1))
        content = RecordDict({"arrays": ArrayRecord([_model()]),
                              "config": ConfigRecord({"server-round": 0})})
        stamps = [time.perf_counter()]
        for round_ in range(args.warmup + args.rounds):
            content["config"]["server-round"] = round_
            messages = [Message(content, node, "train", group_id=str(round_))
                        for node in grid.get_node_ids()]
            replies = grid.send_and_receive(messages)
            assert len(replies) == args.nodes and not any(r.has_error() for r in replies)
            grid.end_round()
            stamps.append(time.perf_counter())
    finally:
        pool.shutdown()
    return stamps


def run_flower(args: argparse.Namespace) -> list[float]:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation
    from noop_app import client_app

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    server_app = ServerApp()
    with tempfile.TemporaryDirectory() as tmp:
        stamp_file = Path(tmp) / "stamps.txt"

        @server_app.main()
        def main(grid: Grid, context: Context) -> None:
            nodes = list(grid.get_node_ids())
            while len(nodes) < args.nodes:  # supernodes register as the simulation starts
                time.sleep(0.05)
                nodes = list(grid.get_node_ids())
            content = RecordDict({"arrays": ArrayRecord([_model()]),
                                  "config": ConfigRecord({"server-round": 0})})
            stamps = [time.perf_counter()]
            for round_ in range(args.warmup + args.rounds):
                content["config"]["server-round"] = round_
                messages = [Message(content, node, "train", group_id=str(round_))
                            for node in nodes]
                replies = list(grid.send_and_receive(messages))
                assert len(replies) == args.nodes and not any(r.has_error() for r in replies)
                stamps.append(time.perf_counter())
            stamp_file.write_text(" ".join(map(str, stamps)))

        run_simulation(server_app=server_app, client_app=client_app,
                       num_supernodes=args.nodes, backend_name="ray",
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": args.workers}})
        return [float(t) for t in stamp_file.read_text().split()] if stamp_file.exists() else []


class _Echo:
    def echo(self, x: Any) -> Any:
        return x

    def echo_many(self, xs: list[Any]) -> list[Any]:
        return xs


def run_ray(args: argparse.Namespace) -> list[float]:
    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")  # as fedsim's RayPool
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
             num_cpus=os.cpu_count())
    actors = [ray.remote(num_cpus=1)(_Echo).remote() for _ in range(args.workers)]
    ray.get([a.echo.remote(0) for a in actors])
    model = _model()
    batched = args.system == "ray-batch"
    stamps = [time.perf_counter()]
    for _ in range(args.warmup + args.rounds):
        if batched:
            futures = [a.echo_many.remote([model] * len(range(w, args.nodes, args.workers)))
                       for w, a in enumerate(actors)]
            replies = [x for part in ray.get(futures) for x in part]
        else:
            replies = ray.get([actors[i % args.workers].echo.remote(model)
                               for i in range(args.nodes)])
        assert len(replies) == args.nodes
        stamps.append(time.perf_counter())
    ray.shutdown()
    return stamps


RUNNERS = {"fedsim": run_fedsim, "flower": run_flower, "ray": run_ray, "ray-batch": run_ray}


def measure(args: argparse.Namespace) -> None:
    args.nodes = int(args.nodes_list)  # a child measures one population size
    importable_from_workers()
    emit(round_result(args.system, RUNNERS[args.system](args), args.warmup, args.rounds))


def calls_per_s(result: dict[str, Any], nodes: int) -> float:
    return nodes / summarise(result["rounds"])["mean"]


def report(args: argparse.Namespace) -> None:
    print(f"call_throughput: no-op ClientApp, {MODEL_SIZE}-float model, full participation; "
          f"{args.workers} workers; {args.warmup} warm-up + {args.rounds} measured rounds; "
          f"cpus={os.cpu_count()}; load average before: {load_average()}", flush=True)
    for nodes in (int(n) for n in args.nodes_list.split(",")):
        print(f"\n{nodes} nodes:", flush=True)
        argv = [f"--nodes={nodes}", *child_argv(args, ("rounds", "warmup", "workers"))]
        results = run_all(__file__, args.systems.split(","), argv, args.timeout,
                          lambda r, n=nodes: f"{calls_per_s(r, n):,.0f} calls/s")
        rows = [["system", "calls/s", "s/round mean", "min", "max", "process s"]]
        rate: dict[str, float] = {}
        for system, r in results.items():
            if "error" in r:
                rows.append([system, "error", "", "", "", ""])
                continue
            s = summarise(r["rounds"])
            rate[system] = calls_per_s(r, nodes)
            rows.append([system, f"{rate[system]:,.0f}", f"{s['mean']:.4f}", f"{s['min']:.4f}",
                         f"{s['max']:.4f}", f"{r['process_s']:.1f}"])
        print(table(rows))
        fedsim = rate.get("fedsim")
        print(verdict("fedsim / flower calls/s", fedsim / rate["flower"]
                      if fedsim and "flower" in rate else None, TARGET_VS_FLOWER, True))
        print(verdict("ray / fedsim calls/s", rate["ray"] / fedsim
                      if fedsim and "ray" in rate else None, TARGET_VS_RAY, False))
        for system, r in results.items():
            if "error" in r:
                print(f"{system} failed: {r['error']}")
    print(f"\nload average after: {load_average()}")


def main() -> None:
    parser = benchmark_parser(__doc__, SYSTEMS, quick="100 nodes, 3 rounds")
    workload_arguments(parser, rounds=5, warmup=1)
    parser.add_argument("--nodes", dest="nodes_list", default="100,400",
                        help="comma-separated population sizes (default 100,400)")
    args = parser.parse_args()
    if args.quick:
        args.nodes_list, args.rounds = "100", 3
    dispatch(args, measure, report)


if __name__ == "__main__":
    main()
