"""flute_lr_mnist: FLUTE's logistic-regression-on-MNIST comparison, fedsim vs plain vs Flower.

FLUTE (Dimitriadis et al., 2022) reports 9x over Flower 1.0 on CPU for logistic
regression on MNIST: 1,000 clients, 10 per round, batch 10, lr 0.03. The same
workload here on MNIST-shaped synthetic data (`synthetic_images`, model `logreg`:
784 -> 10 linear, 60 samples per client = MNIST's 60,000 / 1,000, one local epoch),
no evaluation. Systems, each in its own process:

  plain          one Python process: sample 10 clients, `local_sgd` each in turn,
                 average the state dicts weighted by samples (the floor).
  fedsim-inline  `fedsim.runner.simulate`, backend inline (one process, like plain).
  fedsim         `fedsim.runner.simulate`, backend ray, `--workers` actors.
  flower         `flwr.simulation.run_simulation` with Flower's FedAvg (Ray backend).
  fedsim-vectorised  fedsim inline with `backend.vectorize: <per round>`: the round's
                 clients train as one batched computation (targets: >= 3x faster than
                 plain, >= 50x faster than Flower).

Targets: fedsim within 1.5x of plain (best fedsim backend / plain <= 1.5) and
flower / fedsim >= 5. Each round does very little work (10 x 6 batches of 10 x 784),
so these ratios measure per-round and per-client overhead.

    .venv/bin/python benchmarks/flute_lr_mnist.py [--rounds 20] [--warmup 2] [--quick]
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
    verdict,
    workload_arguments,
)

SYSTEMS = ("plain", "fedsim-inline", "fedsim", "flower")
TARGET_VS_PLAIN = 1.5
TARGET_VS_FLOWER = 5.0


def scenario(args: argparse.Namespace, backend: str = "ray") -> dict[str, Any]:
    return {
        "name": "flute-lr-mnist", "seed": 0, "rounds": args.warmup + args.rounds,
        "task": {"name": "synthetic_images", "model": "logreg", "partition": {"kind": "iid"},
                 "params": {"num_samples": args.samples, "image_shape": [1, 28, 28]}},
        "training": {"lr": 0.03, "local_epochs": 1, "batch_size": 10},
        "clients": {"count": args.nodes},
        # int(nodes * fraction) = per_round exactly (Flower truncates)
        "strategy": {"name": "fedavg", "params": {
            "fraction_train": (args.per_round + 0.5) / args.nodes, "fraction_evaluate": 0.0}},
        "backend": {"kind": backend, "num_actors": args.workers},
        "evaluation": {"centralized_every": 0, "federated_every": 0},
    }


def run_plain(args: argparse.Namespace) -> tuple[list[float], float]:
    import torch

    from fedsim.core.training import TrainConfig

    torch.set_num_threads(1)
    return plain_fedavg_stamps(cached_task(scenario(args), {}),
                               TrainConfig(lr=0.03, local_epochs=1, batch_size=10),
                               args.nodes, args.per_round, args.warmup + args.rounds)


def run_fedsim(args: argparse.Namespace) -> tuple[list[float], float]:
    backend = "inline" if args.system == "fedsim-inline" else "ray"
    stamps, result = fedsim_stamps(scenario(args, backend))
    return stamps, result.records[-1].get("train_loss", float("nan"))


def run_flower(args: argparse.Namespace) -> tuple[list[float], float]:
    return flower_fedavg_stamps(scenario(args), args.workers)


def measure(args: argparse.Namespace) -> None:
    stamps, loss = RUNNERS[args.system](args)
    emit(round_result(args.system, stamps, args.warmup, args.rounds, train_loss=loss))


RUNNERS = {"plain": run_plain, "fedsim-inline": run_fedsim, "fedsim": run_fedsim,
           "flower": run_flower}


def report(args: argparse.Namespace) -> None:
    print(f"flute_lr_mnist: logreg 784->10, {args.nodes} clients x {args.samples} samples, "
          f"{args.per_round} per round, batch 10, lr 0.03; {args.workers} workers; "
          f"{args.warmup} warm-up + {args.rounds} measured rounds; cpus={os.cpu_count()}; "
          f"load average before: {load_average()}", flush=True)
    argv = child_argv(args, ("rounds", "warmup", "workers", "nodes", "per_round", "samples"))
    results = run_all(__file__, args.systems.split(","), argv, args.timeout,
                      lambda r: f"{sum(r['rounds']) / len(r['rounds']):.4f} s/round")
    print()
    print(round_table(results, ["train_loss"]))
    print(f"load average after: {load_average()}\n")
    plain, flower = mean_round(results, "plain"), mean_round(results, "flower")
    fedsims = {s: t for s in ("fedsim-inline", "fedsim") if (t := mean_round(results, s))}
    for system, t in fedsims.items():
        print(verdict(f"{system} / plain", t / plain if plain else None, TARGET_VS_PLAIN, False))
        print(verdict(f"flower / {system}", flower / t if flower else None, TARGET_VS_FLOWER,
                      True))
    vectorised_verdicts(results)  # the vectorised row, below
    print_errors(results)


# ------------------------------------------------------------------------------------------
# The vectorised row (issue 24, item 1): fedsim inline with `backend.vectorize` = clients per
# round, so a round's clients train as one batched computation (`fedsim.core.vectorize`).
# Targets: >= 3x faster than plain, >= 50x faster than Flower.

VECTORISED = "fedsim-vectorised"
SYSTEMS += (VECTORISED,)
TARGET_VECTORISED_VS_PLAIN = 3.0
TARGET_FLOWER_VS_VECTORISED = 50.0


def run_vectorised(args: argparse.Namespace) -> tuple[list[float], float]:
    spec = scenario(args, "inline")
    spec["backend"]["vectorize"] = args.per_round
    stamps, result = fedsim_stamps(spec)
    return stamps, result.records[-1].get("train_loss", float("nan"))


RUNNERS[VECTORISED] = run_vectorised


def vectorised_verdicts(results: dict[str, dict[str, Any]]) -> None:
    plain, flower = mean_round(results, "plain"), mean_round(results, "flower")
    t = mean_round(results, VECTORISED)
    if t is None:
        return
    print(verdict(f"plain / {VECTORISED}", plain / t if plain else None,
                  TARGET_VECTORISED_VS_PLAIN, True))
    print(verdict(f"flower / {VECTORISED}", flower / t if flower else None,
                  TARGET_FLOWER_VS_VECTORISED, True))

# ------------------------------------------------------------------- end of the vectorised row


def main() -> None:
    parser = benchmark_parser(__doc__, SYSTEMS, quick="10 measured rounds")
    workload_arguments(parser, rounds=20, warmup=2, nodes=1000, per_round=10, samples=60)
    args = parser.parse_args()
    if args.quick:
        args.rounds = 10
    dispatch(args, measure, report)


if __name__ == "__main__":
    main()
