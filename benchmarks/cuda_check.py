"""cuda_check: CPU and CUDA give the same model, and CUDA the same bits on any actor count.

Runs round_overhead's CNN workload (smaller by default: 20 nodes, 8 per round, 3 rounds)
four times in this process: inline on the CPU; and with `device: cuda` on Ray with one
actor per GPU, with four actors sharing each GPU (`num_gpus: 0.25`), and inline. Prints
the relative difference ||w_cuda - w_cpu|| / ||w_cpu|| of the final models (expected
within 1e-4: float32 rounding, TF32 off) and whether the CUDA runs are bit-identical to
one another (expected: every job seeds its own generators, cuDNN deterministic). Exit
code 0 when both hold, 1 when not, 2 without a CUDA device.

    .venv/bin/python benchmarks/cuda_check.py [--rounds 3] [--nodes 20] [--per-round 8]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from round_overhead import bench_scenario

TOLERANCE = 1e-4


def final_model(scenario: dict) -> np.ndarray:
    from fedsim.core.codec import flatten
    from fedsim.runner import simulate
    from fedsim.scenario import parse_scenario

    result = simulate(parse_scenario(scenario))
    print(f"  {scenario['backend']}: devices {result.summary['devices']}, "
          f"final train loss {result.records[-1].get('train_loss')}", flush=True)
    return flatten(result.arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=8)
    parser.add_argument("--samples", type=int, default=600)
    args = parser.parse_args()
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not gpus:
        print(f"cuda_check: torch {torch.__version__} sees no CUDA device here; run it on a "
              "GPU machine with torch's CUDA wheel (README: the CUDA route)")
        sys.exit(2)
    args.warmup, args.workers = 0, 1
    base = bench_scenario(args)
    print(f"cuda_check: {args.nodes} nodes, {args.per_round} per round, {args.rounds} rounds; "
          f"{gpus} GPU(s): {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    cpu = final_model({**base, "backend": {"kind": "inline"}})
    cuda = {
        "ray, 1 actor per GPU": {"kind": "ray", "device": "cuda", "num_actors": gpus,
                                 "actor_resources": {"num_cpus": 1, "num_gpus": 1}},
        "ray, 4 actors per GPU": {"kind": "ray", "device": "cuda", "num_actors": 4 * gpus,
                                  "actor_resources": {"num_cpus": 1, "num_gpus": 0.25}},
        "inline": {"kind": "inline", "device": "cuda"},
    }
    models = {name: final_model({**base, "backend": backend}) for name, backend in cuda.items()}
    ok = True
    for name, model in models.items():
        relative = float(np.linalg.norm(model - cpu) / np.linalg.norm(cpu))
        ok &= relative <= TOLERANCE
        print(f"CUDA ({name}) vs CPU: relative difference {relative:.3e} "
              f"({'within' if relative <= TOLERANCE else 'OVER'} {TOLERANCE:g})")
    (first_name, first), *others = models.items()
    for name, model in others:
        same = bool(np.array_equal(model, first))
        ok &= same
        gap = float(np.abs(model - first).max())
        verdict = "bit-identical" if same else f"DIFFERENT, max |diff| {gap:.3e}"
        print(f"CUDA ({name}) vs CUDA ({first_name}): {verdict}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
