"""scale: round time and driver memory with 100, 10,000 and 100,000 registered nodes.

Every configuration runs the same round, 10 nodes sampled by Flower's FedAvg, each
training logistic regression (784 -> 10) on 60 MNIST-shaped samples of
`synthetic_images` for one epoch (batch 10), no evaluation, backend ray with
`--workers` actors. Only the number of registered nodes changes, so a round that
gets slower with the population is per-node work done for nodes that are not
sampled (availability vectors, node lists, per-node state). Each population runs
in its own process; its peak RSS (`getrusage`, the driver only: Ray actors are
separate processes) is printed.

Targets: round time at 10,000 nodes / at 100 nodes <= 1.2; driver peak RSS < 4 GB at
100,000 nodes. `--quick` runs 100 and 10,000 only.

    .venv/bin/python benchmarks/scale.py [--populations 100,10000,100000] [--rounds 10] [--quick]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from _common import (
    benchmark_parser,
    child_argv,
    dispatch,
    emit,
    fedsim_stamps,
    load_average,
    mean_round,
    peak_rss_mb,
    print_errors,
    round_result,
    round_table,
    run_all,
    verdict,
    workload_arguments,
)

TARGET_RATIO = 1.2
TARGET_RSS_MB = 4096


def scenario(args: argparse.Namespace, nodes: int) -> dict[str, Any]:
    return {
        "name": "scale", "seed": 0, "rounds": args.warmup + args.rounds,
        "task": {"name": "synthetic_images", "model": "logreg", "partition": {"kind": "iid"},
                 "params": {"num_samples": 60, "image_shape": [1, 28, 28]}},
        "training": {"lr": 0.03, "local_epochs": 1, "batch_size": 10},
        "clients": {"count": nodes},
        "strategy": {"name": "fedavg", "params": {  # int(nodes * fraction) = per_round
            "fraction_train": (args.per_round + 0.5) / nodes, "fraction_evaluate": 0.0}},
        "backend": {"kind": "ray", "num_actors": args.workers},
        "evaluation": {"centralized_every": 0, "federated_every": 0},
    }


def measure(args: argparse.Namespace) -> None:
    nodes = int(args.system)
    stamps, _ = fedsim_stamps(scenario(args, nodes))
    emit(round_result(args.system, stamps, args.warmup, args.rounds,
                      peak_rss_mb=peak_rss_mb()))


def report(args: argparse.Namespace) -> None:
    print(f"scale: {args.per_round} nodes per round of logreg on 60 samples each; "
          f"{args.workers} ray actors; {args.warmup} warm-up + {args.rounds} measured rounds; "
          f"cpus={os.cpu_count()}; load average before: {load_average()}", flush=True)
    argv = child_argv(args, ("rounds", "warmup", "workers", "per_round"))
    results = run_all(__file__, args.populations.split(","), argv, args.timeout,
                      lambda r: f"{sum(r['rounds']) / len(r['rounds']):.4f} s/round, "
                                f"peak RSS {r['peak_rss_mb']:.0f} MiB")
    print()
    print(round_table(results, ["peak_rss_mb"]).replace("system", "nodes ", 1))
    print(f"load average after: {load_average()}\n")
    base = mean_round(results, "100")
    for nodes in results:
        if nodes != "100" and (t := mean_round(results, nodes)) and base:
            target = TARGET_RATIO if nodes == "10000" else float("inf")
            print(verdict(f"round time {nodes} / 100 nodes", t / base, target, False))
    if "100000" in results and "error" not in results["100000"]:
        rss = results["100000"]["peak_rss_mb"]
        print(f"peak driver RSS at 100,000 nodes = {rss:.0f} MiB   target < {TARGET_RSS_MB} "
              f"({'meets' if rss < TARGET_RSS_MB else 'misses'})")
    print_errors(results)


def main() -> None:
    parser = benchmark_parser(__doc__, timeout=900, quick="100 and 10,000 nodes only")
    workload_arguments(parser, rounds=10, warmup=2, per_round=10)
    parser.add_argument("--populations", default="100,10000,100000")
    args = parser.parse_args()
    if args.quick:
        args.populations = "100,10000"
    dispatch(args, measure, report)


if __name__ == "__main__":
    main()
