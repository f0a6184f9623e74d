"""The build-time checks of a run, in one place for `fedsim run` and `fedsim validate`.

A scenario can pass its schema and still be one that no run can start: a
strategy's builder checks the scenario against itself (SGC needs more rounds
than its decoding delay, FedSpeed refuses momentum), a topology must be
connected, a strategy with its own round loop cannot be checkpointed. Those
checks live in the builders, so the only faithful check is to build the run's
task, device population and strategy exactly as the runner does. Both the
runner and `validate` go through `prepare_data` and `build_checked`, so what
`validate` accepts is what `run` starts. Nothing here starts Ray or a pool, and a task whose
data comes from the network (`Task.downloads`: a hub dataset) is checked without loading it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy

from fedsim import checkpoint as ckpt
from fedsim.core.errors import ScenarioError
from fedsim.core.imports import distribution_folders
from fedsim.core.schema import Scenario
from fedsim.core.task import Task
from fedsim.core.vectorize import unsupported_layer
from fedsim.engine.devices import DevicePopulation
from fedsim.engine.flops import model_cost
from fedsim.engine.placement import plan_groups, resolve_device
from fedsim.engine.tasks import make_task, task_class
from fedsim.traces import load_trace
from strategies import BuildContext, build_strategy, strategy_info
from topologies import TopologyError

CHECK_ERRORS: tuple[type[Exception], ...] = (ScenarioError, TopologyError, ckpt.CheckpointError)
"""What a failed build-time check raises; each is one line naming the field."""


def prepare_data(scenario: Scenario, download: bool = True
                 ) -> tuple[Task | None, DevicePopulation]:
    """The task with its shared data computed (unless it `downloads` and `download` is off:
    then only what a check asks for is loaded), and the device population (a Flower app
    brings its own data: no task)."""
    clients = scenario.clients
    trace = (load_trace(clients.trace, clients.traced, scenario.seed)
             if clients.trace is not None else [])
    if scenario.app is not None:
        return None, DevicePopulation(clients, scenario.seed, trace=trace)
    task = make_task(scenario)
    if download or not task.downloads:
        task.shared_data()
    counts_flops = (any(t.compute_flops is not None for t in clients.devices)
                    or any(d.flops is not None for d in trace))
    cost = model_cost(task, scenario.training.batch_size) if counts_flops else None
    devices = DevicePopulation(clients, scenario.seed,
                               labels=lambda i: task.train_data(i).y,  # label-correlated p
                               trace=trace, cost=cost)
    return task, devices


def build_checked(scenario: Scenario, context: BuildContext, checkpointing: bool) -> Strategy:
    """The scenario's strategy built from `context`; a failed check is one of `CHECK_ERRORS`.

    `checkpointing`: the run writes or resumes from checkpoints, which a strategy
    with its own round loop must support.
    """
    check_vectorize(scenario, context.task)
    try:
        strategy = build_strategy(scenario, context)
    except ValueError as exc:  # a builder's plain check of the scenario
        if type(exc) is not ValueError:  # ScenarioError, TopologyError: already one line
            raise
        raise ScenarioError(f"strategy {scenario.strategy.name!r}: {exc}") from None
    if checkpointing and not ckpt.can_resume(strategy):
        raise ckpt.CheckpointError(
            f"checkpoint.every: strategy {scenario.strategy.name!r} runs its own round loop "
            "without a resume path (`resumes_own_loop`); set checkpoint.every: 0")
    return strategy


def checkpointing(scenario: Scenario, resume: bool = False) -> bool:
    """Whether `fedsim run` checkpoints this scenario (it always has a run directory)."""
    return resume or bool(scenario.checkpoint.every)


def check_run(scenario: Scenario, resume: bool = False) -> None:
    """Every check `fedsim run` does before training, without starting anything.

    Leaves the global random state and Flower's log as they were, so a run that
    follows is the same as one that did not check first; libraries' deprecation
    warnings are the run's to show, not the check's.
    """
    check_backend(scenario)
    with _untouched_random_state(), _quiet_flower(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        task, devices = prepare_data(scenario, download=False)
        if task is None:  # a Flower app: its halves were imported and checked on loading
            if resume:
                raise ckpt.CheckpointError("--resume: a Flower app's run keeps no checkpoint "
                                           "(its loop and state are the app's own)")
            return
        # no grid: builders get no services
        build_checked(scenario, BuildContext(scenario, scenario.clients.count, task, devices),
                      checkpointing(scenario, resume))


def local_gpus() -> int:
    """The CUDA devices torch sees in this process (0 with the CPU wheel)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_backend(scenario: Scenario) -> None:
    """The compute device can be had and the run's code can use it; what Ray would ship
    exists. This machine's GPUs are checked inline or for the cluster a run starts here; a
    joined cluster's, and its room for the actors, when the run joins it
    (`fedsim.engine.placement`)."""
    backend = scenario.backend
    ray_runtime_env(scenario)
    if scenario.app is not None and backend.vectorize:
        raise ScenarioError("backend.vectorize: a Flower app's clients run its own ClientApp, "
                            "one at a time; set vectorize: 0")
    if backend.device == "cpu":
        return
    if scenario.app is not None:
        raise ScenarioError("backend.device: a Flower app moves its own model to a device; "
                            "leave device: cpu and give its actors GPUs with "
                            "backend.actor_resources.num_gpus")
    if not task_class(scenario.task.name).cuda:
        raise ScenarioError(f"backend.device: task {scenario.task.name!r} computes with NumPy "
                            "on the CPU; use device: cpu")
    if strategy_info(scenario.strategy.name).client_actions:
        raise ScenarioError(f"backend.device: strategy {scenario.strategy.name!r} has client "
                            "halves of its own, written for the CPU; use device: cpu")
    if backend.address is None:  # this machine's GPUs: inline, or the cluster started here
        resolve_device(backend, local_gpus(), on_ray=backend.kind == "ray")
    if backend.kind == "inline":
        plan_groups(backend, scenario.clients, scenario.seed, None, local_gpus())


def check_vectorize(scenario: Scenario, task: Task) -> None:
    """`backend.vectorize` only where a group trains exactly as its clients would one by one
    (`fedsim.core.vectorize`): the default train action, no client mods, the task's default
    cross-entropy loss, a model without per-client random draws or batch statistics."""
    if not scenario.backend.vectorize:
        return
    if strategy_info(scenario.strategy.name).client_actions:
        raise ScenarioError(f"backend.vectorize: strategy {scenario.strategy.name!r} trains "
                            "with client halves of its own, which keep per-node state or run "
                            "their own steps; vectorised groups run the default train (FedAvg, "
                            "FedProx and Flower's other strategies); set vectorize: 0")
    if scenario.client_mods.train:
        raise ScenarioError("backend.vectorize: client_mods.train wraps each client's train "
                            "message, which a vectorised group does not handle one by one; "
                            "remove the mods or set vectorize: 0")
    if type(task).loss is not Task.loss:
        raise ScenarioError(f"backend.vectorize: task {scenario.task.name!r} has a loss of its "
                            "own; vectorised groups train with the default cross-entropy; set "
                            "vectorize: 0")
    with torch.random.fork_rng(devices=[]):
        layer = unsupported_layer(task.make_model())
    if layer is not None:
        raise ScenarioError(f"backend.vectorize: task.model {task.model_name!r} has layer "
                            f"{layer}, which a vectorised group cannot train as its clients "
                            "would one by one (dropout, batch or instance norm, recurrent "
                            "layers); set vectorize: 0")


CODE_FILES = ("*.py", "*.pyc", "*.pyo", "*.so", "*.pyd")
"""What a working_dir never ships: Ray puts it first on the actors' import path, and it is
for data files (a folder without them is at most a namespace package, which every
installed package of the same name outranks)."""


def ray_runtime_env(scenario: Scenario) -> dict[str, Any] | None:
    """`backend.runtime_env` as Ray takes it: `py_modules` names installed distributions,
    shipped as their package and metadata folders (so the nodes import and register exactly
    what is installed here, never a scenario's folder); `working_dir` an existing folder,
    shipped without code files (`CODE_FILES`)."""
    spec = scenario.backend.runtime_env
    if spec is None:
        return None
    env: dict[str, Any] = {}
    if spec.working_dir is not None:
        folder = Path(spec.working_dir)
        if "://" not in spec.working_dir and not folder.is_dir():
            raise ScenarioError(f"backend.runtime_env.working_dir: {spec.working_dir!r} is not "
                                "a folder")
        env["working_dir"] = spec.working_dir if "://" in spec.working_dir else str(
            folder.resolve())
        env["excludes"] = list(CODE_FILES)
    if spec.py_modules:
        env["py_modules"] = [folder for i, name in enumerate(spec.py_modules)
                             for folder in distribution_folders(
                                 name, f"backend.runtime_env.py_modules.{i}")]
    if spec.pip:
        env["pip"] = list(spec.pip)
    return env


@contextlib.contextmanager
def _untouched_random_state() -> Iterator[None]:
    """Builders may seed or draw from the global generators; a later run must not notice."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


@contextlib.contextmanager
def _quiet_flower() -> Iterator[None]:
    """Flower's build-time warnings belong in a run's log, not in `validate`'s output."""
    logger = logging.getLogger("flwr")
    saved, saved_propagate = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [logging.NullHandler()], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved, saved_propagate
