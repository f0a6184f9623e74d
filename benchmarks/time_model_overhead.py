"""time_model_overhead: wall-time cost of devices, channel noise and a deadline.

round_overhead's FedAvg workload (`round_overhead.bench_scenario`: 100 nodes, 20 per
round, small CNN, one local epoch; fewer samples with `--quick`) on fedsim's ray
backend, twice, each in its own process:

  off  one device tier, ideal links, no deadline (round_overhead's scenario as is);
  on   three device tiers (log-normal speeds, iid and Gilbert-Elliott straggling,
       Bernoulli availability p=0.9, 2% dropout), links with bandwidth, latency,
       Gaussian noise on both directions and 1% erasure, and a deadline that drops
       the slowest replies as stragglers.

The training work is the same (20 nodes train in full every round whatever their
virtual fate; availability 0.9 leaves ~90 candidates for 20 places), so the
difference is what the time model costs: per-message draws, noise on 106k-float
models both ways, the virtual clock. Target: on / off <= 1.10.

    .venv/bin/python benchmarks/time_model_overhead.py [--rounds 5] [--quick]
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
    print_errors,
    round_result,
    round_table,
    run_all,
    verdict,
    workload_arguments,
)
from round_overhead import bench_scenario

SYSTEMS = ("off", "on")
TARGET = 1.10

TIME_MODEL: dict[str, Any] = {
    "deadline_s": 25.0,
    "clients": {"devices": [
        {"name": "laptop", "share": 0.5, "speed": {"dist": "lognormal", "median": 60,
                                                   "sigma": 0.3}},
        {"name": "phone", "share": 0.3, "speed": {"dist": "lognormal", "median": 25,
                                                  "sigma": 0.3},
         "straggling": {"kind": "iid", "p": 0.2, "slowdown": 4},
         "availability": {"kind": "bernoulli", "p": 0.9}, "dropout_p": 0.02},
        {"name": "iot", "share": 0.2, "speed": {"dist": "uniform", "low": 15, "high": 40},
         "straggling": {"kind": "gilbert_elliott", "p_enter": 0.1, "p_exit": 0.5,
                        "slowdown": 3},
         "uplink": {"bandwidth_mbps": 1, "latency_s": 0.2, "noise_sigma": 0.002}},
    ]},
    "channel": {"uplink": {"bandwidth_mbps": 5, "latency_s": 0.05, "noise_sigma": 0.001,
                           "erasure_p": 0.01},
                "downlink": {"bandwidth_mbps": 20, "latency_s": 0.05, "noise_sigma": 0.001}},
}


def scenario(args: argparse.Namespace) -> dict[str, Any]:
    base = bench_scenario(args)
    if args.system == "on":
        base = {**base, "deadline_s": TIME_MODEL["deadline_s"],
                "channel": TIME_MODEL["channel"],
                "clients": {**base["clients"], **TIME_MODEL["clients"]}}
    return base


def measure(args: argparse.Namespace) -> None:
    stamps, result = fedsim_stamps(scenario(args))
    totals = {k: result.summary.get(f"total_{k}", 0) for k in ("stragglers", "failures")}
    emit(round_result(args.system, stamps, args.warmup, args.rounds,
                      virtual_time_s=result.summary.get("virtual_time_s"), **totals))


def report(args: argparse.Namespace) -> None:
    print(f"time_model_overhead: round_overhead's workload, {args.nodes} nodes, "
          f"{args.per_round} per round, {args.samples} samples each; {args.workers} ray actors; "
          f"{args.warmup} warm-up + {args.rounds} measured rounds; cpus={os.cpu_count()}; "
          f"load average before: {load_average()}", flush=True)
    argv = child_argv(args, ("rounds", "warmup", "workers", "nodes", "per_round", "samples"))
    results = run_all(__file__, args.systems.split(","), argv, args.timeout,
                      lambda r: f"{sum(r['rounds']) / len(r['rounds']):.3f} s/round")
    print()
    print(round_table(results, ["stragglers", "failures", "virtual_time_s"]))
    print(f"load average after: {load_average()}\n")
    off, on = mean_round(results, "off"), mean_round(results, "on")
    print(verdict("on / off", on / off if on and off else None, TARGET, False))
    print_errors(results)


def main() -> None:
    parser = benchmark_parser(__doc__, SYSTEMS, quick="150 samples per node, 4 rounds")
    workload_arguments(parser, rounds=5, warmup=1, nodes=100, per_round=20, samples=600)
    args = parser.parse_args()
    if args.quick:
        args.samples, args.rounds = 150, 4
    dispatch(args, measure, report)


if __name__ == "__main__":
    main()
