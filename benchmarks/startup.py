"""startup: where the time goes from `fedsim run scenarios/quickstart.yaml` to its first round.

A fresh process goes through the steps `fedsim run` takes, timing each:

  interpreter   Python start to this script's first line (measured by the parent)
  imports       `fedsim.cli` and `fedsim.runner` (torch, flwr, ray, pydantic, strategies)
  scenario      load and validate the YAML
  ray start     `ray.init` as `fedsim.pool.RayPool` calls it (local cluster, one CPU per core)
  data          `make_task`, the device population, the client partitions and the test set
  actors        `make_pool("ray", ...)`: the actors started and answering
  first round   `fedsim.runner.simulate` with rounds=1 on that Ray cluster: from its
                round-0 record to the end of round 1 (actors' first-call imports, the
                task built in each actor, training, evaluation)

then, as a cross-check, the parent times the real command end to end:
`fedsim run scenarios/quickstart.yaml --set rounds=1 --quiet` (this includes writing the
run directory and plots and shutting Ray down). Target: interpreter + imports + scenario
+ ray start + data + actors + first round < 10 s.

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

from _common import PROCESS_START, emit, fedsim_stamps, load_average, run_system, table

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
    import fedsim.runner  # noqa: F401

    done("imports")
    from fedsim.scenario import load_scenario, scenario_to_dict

    scenario = load_scenario(ROOT / args.scenario, ["rounds=1"])
    done("scenario")
    import ray

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
             num_cpus=os.cpu_count())
    done("ray start")
    from fedsim.devices import DevicePopulation
    from fedsim.pool import WorkerSpec, make_pool
    from fedsim.runner import CLIENT_APP, RUN_ID, run_config
    from fedsim.tasks import make_task

    task = make_task(scenario)
    DevicePopulation(scenario.clients, scenario.seed, labels=lambda i: task.train_data(i).y)
    for i in range(scenario.clients.count):
        task.train_data(i)
    task.test_data(None)
    done("data")
    spec = WorkerSpec(CLIENT_APP, RUN_ID, scenario.clients.count, run_config(scenario))
    pool = make_pool("ray", spec, scenario.backend.num_actors)
    done("actors")
    pool.shutdown()  # simulate() starts its own, on the cluster already up
    stamps, _ = fedsim_stamps(scenario_to_dict(scenario))
    phases["first round"] = stamps[1] - stamps[0]
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="scenarios/quickstart.yaml")
    parser.add_argument("--no-cli", action="store_true", help="skip the end-to-end command")
    parser.add_argument("--quick", action="store_true", help="same as the default (it is short)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--system", help=argparse.SUPPRESS)
    parser.add_argument("--parent-start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.system:
        measure(args)
    else:
        report(args)
    sys.exit(0)


if __name__ == "__main__":
    main()
