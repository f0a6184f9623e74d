"""gpu_clients: seconds per FedAvg round with clients on a GPU, 1/2/4/8 clients per GPU,
fedsim vs Flower's simulation. Needs a CUDA machine (and torch's CUDA wheel).

The workload is round_overhead's (100 nodes, 20 per round, 600 MNIST-shaped samples each,
one local epoch of the small CNN, batch 32, no evaluation) with the clients training on
CUDA. For k clients per GPU:

  fedsim-k  `fedsim.runner.simulate`, `backend: {device: cuda, num_actors: k x GPUs,
            actor_resources: {num_cpus: 1, num_gpus: 1/k}}`: k actors share each GPU,
            one job at a time each.
  flower-k  `flwr.simulation.run_simulation`, Ray backend, `client_resources:
            {num_cpus: 1, num_gpus: 1/k}`, the same training on CUDA, Flower's FedAvg.

Each system runs in its own process for `--warmup` + `--rounds` rounds; a round's time is
the gap between end-of-round timestamps (start-up and warm-up excluded). Printed: the
table, flower-k / fedsim-k (how much slower Flower is at the same sharing), and
fedsim-1 / fedsim-k (what sharing a GPU buys). It only reports; it always exits 0.

    .venv/bin/python benchmarks/gpu_clients.py [--per-gpu 1,2,4,8] [--rounds 5] [--warmup 1]
"""

from __future__ import annotations

import argparse
import os

from _common import (
    benchmark_parser,
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
)
from round_overhead import bench_scenario


def gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_scenario(args: argparse.Namespace, per_gpu: int) -> dict:
    scenario = bench_scenario(args)
    scenario["backend"] = {"kind": "ray", "device": "cuda", "num_actors": per_gpu * args.gpus,
                           "actor_resources": {"num_cpus": 1, "num_gpus": 1 / per_gpu}}
    return scenario


def measure(args: argparse.Namespace) -> None:
    """Child process: run one system (`fedsim-k` or `flower-k`), print its RESULT line."""
    kind, _, per_gpu = args.system.partition("-")
    scenario = gpu_scenario(args, int(per_gpu))
    if kind == "fedsim":
        stamps, result = fedsim_stamps(scenario)
        extra = {"train_loss": result.records[-1].get("train_loss"),
                 "devices": result.summary.get("devices")}
    else:
        stamps, loss = flower_fedavg_stamps(scenario, int(per_gpu) * args.gpus, "cuda",
                                            1 / int(per_gpu), args.gpus)
        extra = {"train_loss": loss}
    emit(round_result(args.system, stamps, args.warmup, args.rounds, **extra))


def report(args: argparse.Namespace) -> None:
    if not args.gpus:
        print("gpu_clients: torch sees no CUDA device here; run it on a GPU machine with "
              "torch's CUDA wheel (README: the CUDA route)")
        return
    per_gpu = [int(k) for k in args.per_gpu.split(",")]
    systems = [f"{kind}-{k}" for k in per_gpu for kind in ("fedsim", "flower")]
    print(f"gpu_clients: {args.nodes} nodes, {args.per_round} per round, {args.samples} "
          f"samples of 1x28x28, 1 local epoch of a small CNN on CUDA; {args.gpus} GPU(s), "
          f"{os.cpu_count()} CPUs; clients per GPU {per_gpu}; {args.warmup} warm-up + "
          f"{args.rounds} measured rounds; load average before: {load_average()}", flush=True)
    argv = child_argv(args, ("rounds", "warmup", "nodes", "per_round", "samples", "gpus"))
    results = run_all(__file__, systems, argv, args.timeout,
                      lambda r: f"{sum(r['rounds']) / len(r['rounds']):.3f} s/round")
    print()
    print(round_table(results, ["warmup_s", "train_loss"]))
    print(f"load average after: {load_average()}\n")
    one = mean_round(results, f"fedsim-{per_gpu[0]}")
    for k in per_gpu:
        fedsim, flower = mean_round(results, f"fedsim-{k}"), mean_round(results, f"flower-{k}")
        vs_flower = f"{flower / fedsim:.2f}x" if fedsim and flower else "n/a"
        sharing = f"{one / fedsim:.2f}x" if one and fedsim else "n/a"
        print(f"{k} per GPU: flower / fedsim = {vs_flower}   fedsim-{per_gpu[0]} / "
              f"fedsim-{k} = {sharing}")
    print_errors(results)


def main() -> None:
    parser = benchmark_parser(__doc__, timeout=900)  # its --system: fedsim-k / flower-k
    parser.set_defaults(workers=1)  # round_overhead's scenario asks; the backend is replaced
    parser.add_argument("--per-gpu", default="1,2,4,8", help="clients per GPU to compare")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds")
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first, unmeasured")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: all)")
    args = parser.parse_args()
    if args.gpus is None:
        args.gpus = gpus()
    dispatch(args, measure, report)


if __name__ == "__main__":
    main()
