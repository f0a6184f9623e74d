"""gossip_scale: D-PSGD on 256 nodes, fedsim vs a plain loop doing the same steps and mixing.

Strategy `dpsgd` (strategies/decentralized.py: every node trains K local steps from its
own model, then one gossip step x <- W x with Metropolis-Hastings weights) on a ring
and on an Erdos-Renyi graph, 256 nodes, a tiny model: logistic regression on 8x8
`synthetic_images` (650 weights), 32 samples per node, K = 5 steps of batch 8.
Systems, each in its own process:

  plain          one Python process: per round, for each node load its row of X into
                 the model, `local_sgd` (same code, same per-node torch seed), write the
                 row back; then X <- W X with numpy (W from the same topology code).
  fedsim-inline  `fedsim.runner.simulate`, backend inline (one process, like plain).
  fedsim         `fedsim.runner.simulate`, backend ray, `--workers` actors.

fedsim's round also does what a simulator adds: one message per node through the
SimGrid, gossip over the simulated links (per-exchange transfer time, byte counts),
consensus distance and the spectral gap. Target: fedsim / plain <= 2.

    .venv/bin/python benchmarks/gossip_scale.py [--topologies ring,erdos_renyi] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from _common import (
    benchmark_parser,
    cached_task,
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

SYSTEMS = ("plain", "fedsim-inline", "fedsim")
TARGET = 2.0
TOPOLOGIES = {"ring": {"name": "ring"}, "erdos_renyi": {"name": "erdos_renyi", "p": 0.05}}


def scenario(args: argparse.Namespace, backend: str = "ray") -> dict[str, Any]:
    return {
        "name": "gossip-scale", "seed": 0, "rounds": args.warmup + args.rounds,
        "task": {"name": "synthetic_images", "model": "logreg", "partition": {"kind": "iid"},
                 "params": {"num_samples": 32, "image_shape": [1, 8, 8]}},
        "training": {"lr": 0.05, "local_steps": args.local_steps, "batch_size": 8},
        "clients": {"count": args.nodes},
        "topology": TOPOLOGIES[args.topology],
        "strategy": {"name": "dpsgd", "params": {"node_eval_every": 0, "node_eval_max": 1}},
        "backend": {"kind": backend, "num_actors": args.workers},
        "evaluation": {"centralized_every": 0, "federated_every": 0},
    }


def run_plain(args: argparse.Namespace) -> list[float]:
    import numpy as np
    import torch
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    from fedsim.core.plugins import parse_topology_spec
    from fedsim.core.seeding import int_seed
    from fedsim.core.training import TrainConfig, local_sgd
    from topologies import build_graph, mixing_matrix

    torch.set_num_threads(1)
    spec = scenario(args)
    task = cached_task(spec, {})
    W = mixing_matrix(build_graph(parse_topology_spec(spec["topology"], args.nodes),
                                  args.nodes, 0))
    config = TrainConfig(lr=0.05, local_steps=args.local_steps, batch_size=8)
    torch.manual_seed(0)
    model = task.make_model()
    X = np.tile(parameters_to_vector(model.parameters()).detach().numpy(), (args.nodes, 1))
    stamps = [time.perf_counter()]
    for round_ in range(args.warmup + args.rounds):
        for i in range(args.nodes):
            torch.default_generator.manual_seed(int_seed(0, "job", i, round_, 0))
            vector_to_parameters(torch.from_numpy(X[i]).float(), model.parameters())
            local_sgd(model, task, task.train_data(i), config)
            X[i] = parameters_to_vector(model.parameters()).detach().numpy()
        X = W @ X
        stamps.append(time.perf_counter())
    return stamps


def run_fedsim(args: argparse.Namespace) -> list[float]:
    backend = "inline" if args.system == "fedsim-inline" else "ray"
    return fedsim_stamps(scenario(args, backend))[0]


def measure(args: argparse.Namespace) -> None:
    runner = run_plain if args.system == "plain" else run_fedsim
    emit(round_result(args.system, runner(args), args.warmup, args.rounds))


def report(args: argparse.Namespace) -> None:
    print(f"gossip_scale: dpsgd, {args.nodes} nodes, logreg 64->10, {args.local_steps} local "
          f"steps of batch 8; {args.workers} workers; {args.warmup} warm-up + {args.rounds} "
          f"measured rounds; cpus={os.cpu_count()}; load average before: {load_average()}",
          flush=True)
    for topology in args.topologies.split(","):
        print(f"\ntopology {topology} {TOPOLOGIES[topology]}:", flush=True)
        argv = [f"--topology={topology}",
                *child_argv(args, ("rounds", "warmup", "workers", "nodes", "local_steps"))]
        results = run_all(__file__, args.systems.split(","), argv, args.timeout,
                          lambda r: f"{sum(r['rounds']) / len(r['rounds']):.3f} s/round")
        print(round_table(results))
        plain = mean_round(results, "plain")
        for system in ("fedsim-inline", "fedsim"):
            if (t := mean_round(results, system)) is not None:
                print(verdict(f"{system} / plain", t / plain if plain else None, TARGET, False))
        print_errors(results)
    print(f"\nload average after: {load_average()}")


def main() -> None:
    parser = benchmark_parser(__doc__, SYSTEMS, quick="ring only, 3 measured rounds")
    workload_arguments(parser, rounds=5, warmup=1, nodes=256, local_steps=5)
    parser.add_argument("--topologies", default="ring,erdos_renyi")
    parser.add_argument("--topology", choices=tuple(TOPOLOGIES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.topologies, args.rounds = "ring", 3
    dispatch(args, measure, report)


if __name__ == "__main__":
    main()
