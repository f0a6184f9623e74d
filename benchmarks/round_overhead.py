"""round_overhead: seconds per FedAvg round, fedsim vs a plain PyTorch loop vs Flower.

The workload (defaults): 100 nodes, 20 sampled per round (FedAvg, fraction_train=0.2),
600 MNIST-shaped (1x28x28) samples each from the `synthetic_images` task, one local
epoch of its small CNN (batch 32, SGD lr 0.05), no evaluation. Every system runs the
same local training code (`fedsim.core.training.local_sgd` on the task's data, one torch
thread per worker), so the differences are orchestration overhead:

  (a) plain   multiprocessing.Pool of W processes; each trains its share of the round's
              nodes; the model goes out as a numpy state dict, is averaged in the parent.
  (b) fedsim  `fedsim.runner.simulate` on the ray backend with W actors.
  (c) flower  `flwr.simulation.run_simulation`, Ray backend, `num_cpus: 1` per client
              (W concurrent actors on W cores), a ServerApp running Flower's FedAvg.

Each system runs in its own process for `--warmup` + `--rounds` rounds; a round's time is
the gap between consecutive end-of-round timestamps taken by the server side (fedsim's
round records, Flower's `evaluate_fn` hook, the plain loop's own clock), so start-up
(Ray, actors, imports) and the warm-up rounds are excluded. Targets (issue text):
(b)/(a) <= 1.15 and (c)/(b) >= 2.5. The script only reports; it always exits 0.

    .venv/bin/python benchmarks/round_overhead.py [--rounds 5] [--warmup 1] [--workers 2]
        [--nodes 100] [--per-round 20] [--samples 600] [--systems plain,fedsim,flower]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
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
    print_errors,
    round_result,
    round_table,
    run_all,
    verdict,
    workload_arguments,
)

SYSTEMS = ("plain", "fedsim", "flower")
TARGET_VS_PLAIN = 1.15
TARGET_VS_FLOWER = 2.5


def bench_scenario(args: argparse.Namespace) -> dict[str, Any]:
    """The fedsim scenario of the workload; (a) and (c) build their task from it too."""
    return {
        "name": "round-overhead", "seed": 0, "rounds": args.warmup + args.rounds,
        "task": {"name": "synthetic_images", "model": "cnn", "partition": {"kind": "iid"},
                 "params": {"num_samples": args.samples, "image_shape": [1, 28, 28]}},
        "training": {"lr": 0.05, "local_epochs": 1, "batch_size": 32},
        "clients": {"count": args.nodes},
        "strategy": {"name": "fedavg", "params": {
            "fraction_train": args.per_round / args.nodes, "fraction_evaluate": 0.0}},
        "backend": {"kind": "ray", "num_actors": args.workers},
        "evaluation": {"centralized_every": 0},
    }


def scenario_json(args: argparse.Namespace) -> str:
    return json.dumps(bench_scenario(args))


# --------------------------------------------------------------------------- (a) plain


_PLAIN: dict[str, Any] = {}  # a plain worker process's scenario and task


def _plain_init(scenario_json_: str) -> None:
    import torch

    torch.set_num_threads(1)
    _PLAIN["json"] = scenario_json_


def _plain_train(state: dict[str, Any], nodes: list[int], round_: int
                 ) -> list[tuple[dict[str, Any], int, float]]:
    import torch

    from fedsim.core.seeding import int_seed
    from fedsim.core.training import TrainConfig, local_sgd

    task = cached_task(json.loads(_PLAIN["json"]), _PLAIN)
    config = TrainConfig(lr=0.05, local_epochs=1, batch_size=32)
    out = []
    for node in nodes:
        torch.manual_seed(int_seed(0, "job", node, round_, 0))
        model = task.make_model()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        data = task.train_data(node)
        _, loss = local_sgd(model, task, data, config)
        out.append(({k: v.detach().numpy() for k, v in model.state_dict().items()}, len(data),
                    loss))
    return out


def run_plain(args: argparse.Namespace) -> dict[str, Any]:
    import multiprocessing as mp

    import numpy as np
    import torch

    task = cached_task(bench_scenario(args), {})
    torch.manual_seed(0)
    state = {k: v.numpy() for k, v in task.make_model().state_dict().items()}
    sampler = random.Random(0)
    with mp.get_context("spawn").Pool(args.workers, _plain_init, (scenario_json(args),)) as pool:
        pool.map(abs, range(args.workers))  # processes are up
        stamps = [time.perf_counter()]
        for round_ in range(1, args.warmup + args.rounds + 1):
            nodes = sampler.sample(range(args.nodes), args.per_round)
            chunks = [(state, nodes[w::args.workers], round_) for w in range(args.workers)]
            replies = [r for chunk in pool.starmap(_plain_train, chunks) for r in chunk]
            total = sum(n for _, n, _ in replies)
            state = {k: sum(s[k] * (n / total) for s, n, _ in replies).astype(np.float32)
                     for k in state}
            loss = sum(lo * n / total for _, n, lo in replies)
            stamps.append(time.perf_counter())
    return {"stamps": stamps, "train_loss": loss}


# --------------------------------------------------------------------------- (b), (c)


def run_fedsim(args: argparse.Namespace) -> dict[str, Any]:
    stamps, result = fedsim_stamps(bench_scenario(args))
    return {"stamps": stamps, "train_loss": result.records[-1].get("train_loss")}


def run_flower(args: argparse.Namespace) -> dict[str, Any]:
    stamps, loss = flower_fedavg_stamps(bench_scenario(args), args.workers)
    return {"stamps": stamps, "train_loss": loss}


RUNNERS = {"plain": run_plain, "fedsim": run_fedsim, "flower": run_flower}


# --------------------------------------------------------------------------- driver


def measure(args: argparse.Namespace) -> None:
    """Child process: run one system, print its RESULT line."""
    result = RUNNERS[args.system](args)
    stamps = result.pop("stamps")
    emit(round_result(args.system, stamps, args.warmup, args.rounds, **result))


def report(args: argparse.Namespace) -> None:
    print(f"round_overhead: {args.nodes} nodes, {args.per_round} per round, {args.samples} "
          f"samples of 1x28x28 each, 1 local epoch of a small CNN; {args.workers} workers; "
          f"{args.warmup} warm-up + {args.rounds} measured rounds; cpus={os.cpu_count()}; "
          f"load average before: {load_average()}", flush=True)
    argv = child_argv(args, ("rounds", "warmup", "workers", "nodes", "per_round", "samples"))
    results = run_all(__file__, args.systems.split(","), argv, args.timeout,
                      lambda r: f"{sum(r['rounds']) / len(r['rounds']):.3f} s/round")
    print()
    print(round_table(results, ["warmup_s", "train_loss"]))
    print(f"load average after: {load_average()}\n")
    plain, fedsim, flower = (mean_round(results, s) for s in ("plain", "fedsim", "flower"))
    print(verdict("(b)/(a) fedsim / plain ", fedsim / plain if plain and fedsim else None,
                  TARGET_VS_PLAIN, False))
    print(verdict("(c)/(b) flower / fedsim", flower / fedsim if fedsim and flower else None,
                  TARGET_VS_FLOWER, True))
    print_errors(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = benchmark_parser(__doc__, SYSTEMS)
    workload_arguments(parser, rounds=5, warmup=1, nodes=100, per_round=20, samples=600)
    parser.add_argument("--json", help="also write the raw per-round figures here")
    dispatch(parser.parse_args(), measure, report)


if __name__ == "__main__":
    main()
