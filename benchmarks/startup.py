"""startup: where the time goes from `fedsim run scenarios/quickstart.yaml` to its first round.

A fresh process runs `fedsim.runner.simulate` (rounds=1) as `fedsim run` does, and times
its steps from hooks (the pool's `share_task_data` and the end-of-round records):

  interpreter   Python start to this script's first line (measured by the parent)
  imports       `fedsim.cli` and `fedsim.runner` (torch, flwr, pydantic, strategies)
  scenario      load and validate the YAML
  ray start     `make_pool`: `ray.init` (a local cluster) and the actors created, not
                waited for; meanwhile a thread prepares the data: `make_task`, the device
                population, the client partitions and the test set, computed once in the
                driver (`Task.shared_data`)
  data          what is left of the data preparation once Ray has started
  wait actors   what is left of the actors' start (imports of torch, flwr and the
                strategies; the warm-up that imports `torch._dynamo`) once the data is
                ready: the hook calls `RayPool.ready()` here
  round 0       the strategy, the initial model, the central evaluation of round 0
  first round   round 0's record to round 1's: the actors' first jobs and the evaluation

Then, as a cross-check, the parent
times the real command end to end: `fedsim run scenarios/quickstart.yaml --set rounds=1
--quiet` (this includes writing the run directory and plots and shutting Ray down).
Target: the sum of these phases < 10 s.

    .venv/bin/python benchmarks/startup.py [--scenario scenarios/quickstart.yaml] [--no-cli]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    PROCESS_START,
    benchmark_parser,
    dispatch,
    emit,
    load_average,
    run_system,
    table,
)

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 10.0


def measure(args: argparse.Namespace) -> None:
    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def done(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    import fedsim.cli
    import fedsim.runner

    done("imports")
    from fedsim.results import Callback
    from fedsim.scenario import load_scenario

    scenario = load_scenario(ROOT / args.scenario, ["rounds=1"])
    done("scenario")
    make_pool = fedsim.runner.make_pool

    def timed_pool(*pool_args: Any, **kwargs: Any) -> Any:
        pool = make_pool(*pool_args, **kwargs)
        done("ray start")
        share = pool.share_task_data

        def timed_share(data: Any) -> None:
            done("data")
            share(data)
            if hasattr(pool, "ready"):
                pool.ready()
            done("wait actors")

        pool.share_task_data = timed_share
        return pool

    class Stamp(Callback):
        def on_round_end(self, record: dict[str, Any]) -> None:
            done("round 0" if record["round"] == 0 else "first round")

    fedsim.runner.make_pool = timed_pool
    fedsim.runner.simulate(scenario, callbacks=[Stamp()])
    emit({"system": "startup", "phases": phases,
          "interpreter": PROCESS_START - args.parent_start})


def run_cli(scenario: str) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        done = subprocess.run([str(Path(sys.executable).parent / "fedsim"), "run", scenario,
                               "--set", "rounds=1", "--quiet", "--out", out],
                              cwd=ROOT, capture_output=True, text=True)
        return time.perf_counter() - started, done.returncode


def report(args: argparse.Namespace) -> None:
    print(f"startup: {args.scenario} to its first round; cpus={os.cpu_count()}; "
          f"load average before: {load_average()}", flush=True)
    r = run_system(__file__, "startup", [f"--scenario={args.scenario}",
                                         f"--parent-start={time.perf_counter()}"],
                   args.timeout)
    if "error" in r:
        print(f"failed: {r['error']}")
        return
    phases = {"interpreter": r["interpreter"], **r["phases"]}
    total = sum(phases.values())
    rows = [["phase", "seconds", "share"]]
    rows += [[name, f"{s:.2f}", f"{s / total:.0%}"] for name, s in phases.items()]
    rows.append(["total to first round", f"{total:.2f}", ""])
    print(table(rows))
    print(f"load average after: {load_average()}")
    verdict = "meets" if total < TARGET_S else "misses"
    print(f"\ntotal to first round = {total:.2f} s   target < {TARGET_S} s ({verdict})")
    if not args.no_cli:
        wall, code = run_cli(args.scenario)
        print(f"cross-check: `fedsim run {args.scenario} --set rounds=1 --quiet` took "
              f"{wall:.2f} s end to end (exit {code}; includes writing the run directory "
              f"and Ray shutdown)")


def main() -> None:
    parser = benchmark_parser(__doc__, timeout=300)
    parser.add_argument("--scenario", default="scenarios/quickstart.yaml")
    parser.add_argument("--no-cli", action="store_true", help="skip the end-to-end command")
    parser.add_argument("--parent-start", type=float, help=argparse.SUPPRESS)
    dispatch(parser.parse_args(), measure, report)


if __name__ == "__main__":
    main()
