"""Compute devices, actor resources per kind of actor, and what Ray is asked for.

No GPU here: device selection and its errors, the groups of actors a cluster gets, and
the moving of models and batches to the job's device (on torch's `meta` device, which
any torch has) are checked on the CPU; tests/test_cluster.py runs a real two-node cluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict
from typer.testing import CliRunner

from fedsim.checks import check_run
from fedsim.cli import app
from fedsim.core.codec import flatten
from fedsim.core.device import computing_on, usable_device
from fedsim.core.errors import ScenarioError
from fedsim.core.schema import BackendSpec, ClientsSpec
from fedsim.core.training import TrainConfig, local_batches
from fedsim.engine.devices import tier_assignment
from fedsim.engine.placement import ActorGroup, Cluster, plan_groups
from fedsim.engine.pool import InlinePool, Job, WorkerSpec
from fedsim.engine.tasks import make_task
from fedsim.runner import CLIENT_APP, run_config, simulate
from tests.conftest import scenario

ROOT = Path(__file__).resolve().parents[1]
TWO_TIERS = {"count": 8, "devices": [
    {"name": "big", "share": 0.25, "actor_resources": {"num_cpus": 1, "num_gpus": 0.25}},
    {"name": "phone", "share": 0.75}]}


def _strip_wall(records):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records]


def one_line_error(**overrides) -> str:
    with pytest.raises(ScenarioError) as caught:
        check_run(scenario(**overrides))
    assert "\n" not in str(caught.value)
    return str(caught.value)


# ------------------------------------------------------------------ device selection


def test_cuda_where_torch_has_none_is_one_line_naming_backend_device():
    assert not torch.cuda.is_available()  # the CPU wheel: what this test is about
    for device in ("cuda", "cuda:1"):
        line = one_line_error(backend={"kind": "inline", "device": device})
        assert line.startswith(f"backend.device: '{device}'") and "no GPU" in line
    result = CliRunner().invoke(app, ["validate", str(ROOT / "scenarios" / "quickstart.yaml"),
                                      "--set", "backend.device=cuda"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and "backend.device" in result.output
    assert "Traceback" not in result.output


def test_device_names_outside_cpu_cuda_auto_are_refused_by_the_schema():
    with pytest.raises(ScenarioError, match=r"backend\.device: String should match"):
        scenario(backend={"device": "gpu"})
    with pytest.raises(ScenarioError, match=r"num_gpus: .*fraction of one GPU or whole"):
        scenario(backend={"actor_resources": {"num_gpus": 1.5}})


def test_cuda_is_refused_for_code_written_for_the_cpu():
    assert "strategy 'ef21'" in one_line_error(
        strategy={"name": "ef21", "params": {}}, backend={"device": "cuda"})
    assert "task 'quadratic'" in one_line_error(
        task={"name": "quadratic", "params": {"centers": [0.0] * 6}},
        backend={"device": "cuda"})


def test_auto_is_the_cpu_where_there_is_no_gpu_and_cuda_where_there_is():
    backend = BackendSpec(device="auto")
    clients = ClientsSpec(count=4)
    [inline] = plan_groups(backend, clients, 0, None, local_gpus=0)
    assert inline.device == "cpu" and inline.options == {"num_cpus": 1.0, "num_gpus": 0.0}
    [on_gpu] = plan_groups(backend, clients, 0, Cluster({"CPU": 4, "GPU": 1},
                                                        [{"CPU": 4, "GPU": 1}]), 0)
    assert on_gpu.device == "cuda" and on_gpu.options["num_gpus"] == 1  # one actor per GPU
    assert on_gpu.num_workers == 1


def test_a_worker_refuses_a_cuda_device_this_process_does_not_have():
    with pytest.raises(RuntimeError, match="sees 0 CUDA device"):
        usable_device("cuda")


def test_models_and_batches_go_to_the_jobs_device():
    task = make_task(scenario())
    arrays = task.initial_arrays()
    data = task.train_data(0)
    with computing_on(torch.device("meta")):
        model = task.model_with(arrays)
        x, y = next(local_batches(data, TrainConfig(batch_size=4)))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert x.device.type == y.device.type == "meta"
    assert next(local_batches(data, TrainConfig(batch_size=4)))[0].device.type == "cpu"


# ------------------------------------------------------------------ kinds of actors


def test_a_tier_with_gpu_actors_beside_cpu_phones_shares_the_cluster():
    backend = BackendSpec(device="cuda", actor_resources={"num_cpus": 1})
    clients = ClientsSpec.model_validate(TWO_TIERS)
    cluster = Cluster({"CPU": 6, "GPU": 1}, [{"CPU": 4, "GPU": 1}, {"CPU": 2}])
    phones, big = plan_groups(backend, clients, 0, cluster, 0)
    tier_of = tier_assignment(clients, 0)
    assert big.name == "big" and big.partitions == frozenset(np.flatnonzero(tier_of == 0))
    assert big.options == {"num_cpus": 1.0, "num_gpus": 0.25} and big.device == "cuda"
    assert big.num_workers == 2  # one per member: 0.25 GPU each would allow 4
    assert phones.partitions == frozenset(np.flatnonzero(tier_of == 1))
    assert phones.device == "cpu" and phones.options["num_gpus"] == 0
    assert phones.num_workers == 4  # the CPUs the GPU actors left


@pytest.mark.parametrize(("backend", "clients", "cluster", "field"), [
    ({"device": "cuda"}, {"count": 4}, ({"CPU": 4}, [{"CPU": 4}]), "backend.device"),
    ({"device": "cuda:1"}, {"count": 4}, ({"CPU": 4, "GPU": 2}, [{"CPU": 4, "GPU": 2}]),
     "backend.device"),
    ({"device": "cuda", "actor_resources": {"num_cpus": 1}}, {"count": 4},
     ({"CPU": 4, "GPU": 1}, [{"CPU": 4, "GPU": 1}]), "backend.device"),
    ({"num_actors": 3}, {"count": 4}, ({"CPU": 2}, [{"CPU": 2}]), "backend.num_actors"),
    ({}, TWO_TIERS, ({"CPU": 4}, [{"CPU": 4}]), "clients.devices.0.actor_resources"),
    ({"actor_resources": {"num_cpus": 2}}, {"count": 4}, ({"CPU": 2}, [{"CPU": 1}, {"CPU": 1}]),
     "backend.actor_resources"),
])
def test_requests_a_cluster_cannot_hold_name_their_field(backend, clients, cluster, field):
    with pytest.raises(ScenarioError) as caught:
        plan_groups(BackendSpec(**backend), ClientsSpec.model_validate(clients), 0,
                    Cluster(*cluster), 0)
    assert str(caught.value).startswith(f"{field}: ")


def test_a_tiers_jobs_run_on_its_own_workers_with_the_numbers_of_one_worker():
    clients = {**TWO_TIERS, "devices": [
        {**TWO_TIERS["devices"][0], "actor_resources": {"num_cpus": 1}, "num_actors": 2},
        TWO_TIERS["devices"][1]]}
    one = scenario(clients=clients | {"devices": [{"share": 0.25}, {"share": 0.75}]})
    tiers = scenario(clients=clients, backend={"kind": "inline", "num_actors": 3})
    groups = plan_groups(tiers.backend, tiers.clients, tiers.seed, None, 0)
    assert [g.num_workers for g in groups] == [3, 2]
    pool = InlinePool(WorkerSpec(CLIENT_APP, 1, 8, run_config(tiers)), groups)
    big = groups[1].partitions
    jobs = [Job(100 + p, p, "train", str(p), "g", 0, seed=p) for p in range(8)]
    batches = pool._groups.split(jobs, {})
    assert {w for w, b in batches.items() for j in b if j.partition_id in big} <= {3, 4}
    assert {w for w, b in batches.items() for j in b if j.partition_id not in big} <= {0, 1, 2}
    assert _strip_wall(simulate(tiers).records) == _strip_wall(simulate(one).records)


def test_a_resumed_nodes_state_goes_to_a_worker_of_its_tiers_group():
    """A checkpoint's worker indices may come from another layout of workers."""
    groups = [ActorGroup(1, partitions=frozenset({0}), name="a"),
              ActorGroup(2, partitions=frozenset({1}), name="b")]
    pool = InlinePool(WorkerSpec(CLIENT_APP, 1, 2, run_config(scenario())), groups)
    state = RecordDict({"memory": ConfigRecord({"x": 1})})
    pool.set_states({"pinned": {7: 0, 8: 0}, "states": {7: (0, state), 8: (1, state)}})
    assert pool._pinned == {7: 0, 8: 1}
    assert pool.get_states()["states"] == {7: (0, state), 8: (1, state)}
    job = Job(8, 1, "train", "m", "g", 0, seed=0)
    assert list(pool._groups.split([job], pool._pinned)) == [1]


@pytest.mark.ray
def test_ray_gets_each_kinds_resources_and_the_run_its_inline_numbers(ray_cluster, tmp_path):
    """What Ray assigned to each actor, read inside the actor, is what the scenario asked.
    The shipped working_dir is data: Ray puts it first on the actors' import path, and a
    module in it must not shadow an installed one (networkx: every actor imports it)."""
    (tmp_path / "networkx.py").write_text("raise ImportError('shadowed')\n")
    clients = {"count": 6, "devices": [
        {"name": "big", "share": 0.5, "num_actors": 1,
         "actor_resources": {"num_cpus": 0.5, "memory": 64 * 2**20}},
        {"name": "phone", "share": 0.5}]}
    on_ray = simulate(scenario(clients=clients, backend={
        "kind": "ray", "num_actors": 1, "actor_resources": {"num_cpus": 0.25},
        "runtime_env": {"working_dir": str(tmp_path)}}))
    inline = simulate(scenario(clients=clients))
    actors = on_ray.summary["actors"]
    assert [(a["group"], a["resources"]) for a in actors] == [
        ("backend", {"CPU": 0.25}), ("big", {"CPU": 0.5, "memory": float(64 * 2**20)})]
    assert on_ray.summary["devices"] == ["cpu"]
    assert _strip_wall(on_ray.records) == _strip_wall(inline.records)
    np.testing.assert_array_equal(flatten(on_ray.arrays), flatten(inline.arrays))


# ------------------------------------------------------------------ runtime_env


def test_runtime_env_ships_installed_distributions_only(tmp_path):
    line = one_line_error(backend={"runtime_env": {"py_modules": ["fedsim", "no-such-dist"]}})
    assert line.startswith("backend.runtime_env.py_modules.1: 'no-such-dist' is not an "
                           "installed distribution")
    assert one_line_error(backend={"runtime_env": {"working_dir": str(tmp_path / "none")}}
                          ).startswith("backend.runtime_env.working_dir: ")
