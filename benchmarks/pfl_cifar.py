"""pfl_cifar: a pfl-research-shaped cross-device round, per-client vs vectorised vs Flower.

pfl-research (Granqvist et al., "pfl-research: simulation framework for accelerating research
in Private Federated Learning", arXiv:2404.06430) benchmarks CIFAR-10 with many small
clients; its speed comes from not paying per-client orchestration. The workload here:
CIFAR-10-shaped synthetic data (`synthetic_images`, 3x32x32, 10 classes, 50 samples per
client = CIFAR-10's 50,000 / 1,000), the FedAvg paper's CNN (`fedavg_cnn`, 2.16M weights),
1,000 clients, 50 per round, batch 10, one local epoch (5 steps), SGD lr 0.05, FedAvg, no
evaluation. Systems, each in its own process, all on `--device`:

  plain              one Python process: sample 50 clients, `local_sgd` each in turn, average
                     the state dicts weighted by samples (the floor of a per-client loop).
  fedsim             `fedsim.runner.simulate`, backend inline (one process, like plain).
  fedsim-vectorised  the same with `backend.vectorize: --group` (clients trained in groups,
                     `fedsim.core.vectorize`).
  flower             `flwr.simulation.run_simulation` with Flower's FedAvg (Ray backend,
                     `--workers` clients at once).

Printed: the table and each system's mean round time / plain's, measured in this run. On a
CPU the vectorised group does the same arithmetic as the loop (a batched convolution is no
cheaper per sample), so expect little there; on a GPU (`--device cuda`) one batched step
replaces 50 small kernels. It only reports; it always exits 0.

    .venv/bin/python benchmarks/pfl_cifar.py [--rounds 5] [--warmup 1] [--group 50]
                                             [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from _common import (
    benchmark_parser,
    cached_task,
    child_argv,
    dispatch,
    emit,
    fedsim_stamps,
    flower_fedavg_stamps,
    load_average,
    mean_round,
    plain_fedavg_stamps,
    print_errors,
    round_result,
    round_table,
    run_all,
    workload_arguments,
)

SYSTEMS = ("plain", "fedsim", "fedsim-vectorised", "flower")
LR = 0.05


def scenario(args: argparse.Namespace, vectorize: int = 0) -> dict[str, Any]:
    return {
        "name": "pfl-cifar", "seed": 0, "rounds": args.warmup + args.rounds,
        "task": {"name": "synthetic_images", "model": "fedavg_cnn", "partition": {"kind": "iid"},
                 "params": {"num_samples": args.samples, "image_shape": [3, 32, 32],
                            "num_test_samples": 0}},
        "training": {"lr": LR, "local_epochs": 1, "batch_size": 10},
        "clients": {"count": args.nodes},
        # int(nodes * fraction) = per_round exactly (Flower truncates)
        "strategy": {"name": "fedavg", "params": {
            "fraction_train": (args.per_round + 0.5) / args.nodes, "fraction_evaluate": 0.0}},
        "backend": {"kind": "inline", "device": args.device, "vectorize": vectorize},
        "evaluation": {"centralized_every": 0, "federated_every": 0},
    }


def run_plain(args: argparse.Namespace) -> tuple[list[float], float]:
    from fedsim.core.training import TrainConfig

    return plain_fedavg_stamps(cached_task(scenario(args), {}),
                               TrainConfig(lr=LR, local_epochs=1, batch_size=10), args.nodes,
                               args.per_round, args.warmup + args.rounds, args.device)


def run_fedsim(args: argparse.Namespace) -> tuple[list[float], float]:
    vectorize = args.group if args.system == "fedsim-vectorised" else 0
    stamps, result = fedsim_stamps(scenario(args, vectorize))
    return stamps, result.records[-1].get("train_loss", float("nan"))


def run_flower(args: argparse.Namespace) -> tuple[list[float], float]:
    on_gpu = args.device != "cpu"
    return flower_fedavg_stamps(scenario(args), args.workers, args.device,
                                client_gpus=1 / args.workers if on_gpu else 0.0,
                                gpus=1 if on_gpu else 0)


def measure(args: argparse.Namespace) -> None:
    stamps, loss = RUNNERS[args.system](args)
    emit(round_result(args.system, stamps, args.warmup, args.rounds, train_loss=loss))


RUNNERS = {"plain": run_plain, "fedsim": run_fedsim, "fedsim-vectorised": run_fedsim,
           "flower": run_flower}


def report(args: argparse.Namespace) -> None:
    print(f"pfl_cifar: fedavg_cnn on 3x32x32, {args.nodes} clients x {args.samples} samples, "
          f"{args.per_round} per round, batch 10, lr {LR}, one epoch; vectorised groups of "
          f"{args.group}; device {args.device}; flower with {args.workers} workers; "
          f"{args.warmup} warm-up + {args.rounds} measured rounds; cpus={os.cpu_count()}; "
          f"load average before: {load_average()}", flush=True)
    argv = child_argv(args, ("rounds", "warmup", "workers", "nodes", "per_round", "samples",
                             "group", "device"))
    results = run_all(__file__, args.systems.split(","), argv, args.timeout,
                      lambda r: f"{sum(r['rounds']) / len(r['rounds']):.4f} s/round")
    print()
    print(round_table(results, ["train_loss"]))
    print(f"load average after: {load_average()}\n")
    plain = mean_round(results, "plain")
    for system in SYSTEMS[1:]:
        t = mean_round(results, system)
        if plain and t:
            print(f"{system} / plain = {t / plain:.3f}  (plain / {system} = {plain / t:.2f}x)")
    print_errors(results)


def main() -> None:
    parser = benchmark_parser(__doc__, SYSTEMS, quick="1 warm-up + 2 measured rounds of 20 "
                              "clients (a couple of minutes on 2 cores)")
    workload_arguments(parser, rounds=5, warmup=1, nodes=1000, per_round=50, samples=50)
    parser.add_argument("--group", type=int, default=50, help="backend.vectorize of "
                        "fedsim-vectorised: clients per group")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (every system)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.per_round = 2, 1, 20
    dispatch(args, measure, report)


if __name__ == "__main__":
    main()
