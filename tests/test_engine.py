"""The engine: SimGrid in virtual time, devices, channel, pool backends, determinism."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.run import Run

from fedsim.core.codec import flatten
from fedsim.engine.devices import DevicePopulation
from fedsim.engine.grid import SimGrid
from fedsim.engine.pool import InlinePool, WorkerSpec
from fedsim.engine.tasks import make_task
from fedsim.runner import CLIENT_APP, RunStalled, run_config, simulate
from tests.conftest import quadratic, scenario


def _strip_wall(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records]


@pytest.mark.slow
def test_flower_fedavg_reaches_85_percent_on_iid_digits():
    s = scenario(rounds=10, clients__count=10, task__model="cnn",
                 training={"lr": 0.05, "momentum": 0.9, "local_epochs": 2, "batch_size": 16})
    result = simulate(s)
    assert result.summary["final_accuracy"] >= 0.85, result.summary


def test_flower_fedprox_runs_by_name_and_its_proximal_term_pulls_towards_the_global_model():
    plain = simulate(quadratic([0.0, 4.0], rounds=1, training__local_steps=5,
                               strategy={"name": "fedprox", "params": {"proximal_mu": 0.0}}))
    prox = simulate(quadratic([0.0, 4.0], rounds=1, training__local_steps=5,
                              strategy={"name": "fedprox", "params": {"proximal_mu": 5.0}}))
    # both clients start at 0; client 1 (center 4) moves less under the proximal pull
    x_plain = flatten(plain.arrays)[0]
    x_prox = flatten(prox.arrays)[0]
    assert 0 < x_prox < x_plain


def test_same_seed_same_metrics_with_one_or_two_inline_workers():
    one = simulate(scenario(rounds=3, backend={"kind": "inline", "num_actors": 1}))
    two = simulate(scenario(rounds=3, backend={"kind": "inline", "num_actors": 2}))
    assert _strip_wall(one.records) == _strip_wall(two.records)
    np.testing.assert_array_equal(flatten(one.arrays), flatten(two.arrays))


@pytest.mark.ray
def test_same_seed_same_metrics_on_ray_with_one_or_two_actors_as_inline(ray_cluster):
    overrides = {"rounds": 3, "channel": {"uplink": {"noise_sigma": 0.01}},
                 "strategy": {"name": "fedavg", "params": {"fraction_train": 0.5}}}
    inline = simulate(scenario(**overrides))
    for actors in (1, 2):
        on_ray = simulate(scenario(**overrides, backend={"kind": "ray", "num_actors": actors}))
        assert _strip_wall(on_ray.records) == _strip_wall(inline.records)
        np.testing.assert_array_equal(flatten(on_ray.arrays), flatten(inline.arrays))


@pytest.mark.ray
def test_cnn_gives_the_same_bits_on_ray_as_inline(ray_cluster):
    """Convolutions too: one torch thread everywhere, data shared from the driver."""
    overrides = {"rounds": 2, "task": {"name": "digits", "model": "cnn",
                                       "partition": {"kind": "dirichlet", "alpha": 0.5}},
                 "clients": {"count": 8}}
    inline = simulate(scenario(**overrides))
    on_ray = simulate(scenario(**overrides, backend={"kind": "ray", "num_actors": 2}))
    assert _strip_wall(on_ray.records) == _strip_wall(inline.records)
    np.testing.assert_array_equal(flatten(on_ray.arrays), flatten(inline.arrays))


def _tiers(slow_speed: float) -> list[dict]:
    return [{"name": "fast", "share": 3, "speed": 1.0},
            {"name": "slow", "share": 1, "speed": slow_speed}]


LINK = {"bandwidth_mbps": 8.0, "latency_s": 0.1}  # 1e6 bytes/s


def test_round_time_without_deadline_is_the_slowest_devices_down_compute_up():
    s = quadratic([0.0, 1.0, 2.0, 3.0], rounds=1, training__local_steps=2,
                  clients__devices=_tiers(0.1), channel={"uplink": LINK, "downlink": LINK})
    result = simulate(s)
    one_way = 0.1 + 8 / 1e6  # latency + 8 bytes (one float64) at 1e6 bytes/s
    slowest_compute = 2 / 0.1  # 2 samples of work at 0.1 samples/s
    assert result.records[1]["virtual_time_s"] == pytest.approx(2 * one_way + slowest_compute)
    assert result.records[1]["stragglers"] == 0


def test_deadline_drops_and_counts_the_ten_times_slower_device():
    s = quadratic([0.0, 1.0, 2.0, 3.0], rounds=3, training__local_steps=2, deadline_s=5.0,
                  clients__devices=_tiers(0.1), channel={"uplink": LINK, "downlink": LINK})
    result = simulate(s)
    for record in result.records[1:]:
        assert record["stragglers"] == 1 and record["replies"] == 3
        assert record["virtual_time_s"] == pytest.approx(5.0 * record["round"])
    devices = DevicePopulation(s.clients, s.seed)
    slow = int(np.argmin(devices.speed))
    # the model is the average of the three fast clients' updates only
    x = 0.0
    for _ in range(3):
        fast = [c for i, c in enumerate([0.0, 1.0, 2.0, 3.0]) if i != slow]
        x = float(np.mean([c + (x - c) * 0.9 ** 2 for c in fast]))
    assert flatten(result.arrays)[0] == pytest.approx(x)


def test_uplink_noise_adds_the_average_of_the_clients_noise_to_the_model():
    sigma, clients = 0.05, 8
    base = {"rounds": 1, "clients__count": clients,
            "strategy": {"name": "fedavg", "params": {"fraction_evaluate": 0.0}},
            "task__partition": {"kind": "iid"}}
    clean = simulate(scenario(**base))
    noisy_scenario = scenario(**base, channel={"uplink": {"noise_sigma": sigma}})
    noisy = simulate(noisy_scenario)
    diff = flatten(noisy.arrays) - flatten(clean.arrays)
    # FedAvg weights by shard size: the noise of the average has variance sigma^2 sum(w_i^2)
    task = make_task(noisy_scenario)
    sizes = np.array([len(task.train_data(i)) for i in range(clients)])
    expected_std = sigma * math.sqrt(np.sum((sizes / sizes.sum()) ** 2))
    assert abs(diff.mean()) < 4 * expected_std / math.sqrt(diff.size)
    assert diff.std() == pytest.approx(expected_std, rel=0.1)


def test_erasure_one_gives_failures_not_a_crash():
    result = simulate(scenario(rounds=2, channel={"uplink": {"erasure_p": 1.0}}))
    for record in result.records[1:]:
        assert record["failures"] == 6 and record["replies"] == 0
    assert result.summary["total_failures"] == 12


def test_bytes_counted_are_the_arrays_byte_sizes():
    s = scenario(rounds=1, clients__count=4)
    result = simulate(s)
    model_bytes = sum(a.numpy().nbytes for a in result.arrays.values())
    assert model_bytes == (64 * 10 + 10) * 4  # logreg on 8x8 digits, float32
    record = result.records[1]
    assert record["bytes_down"] == 4 * model_bytes
    assert record["bytes_up"] == 4 * model_bytes


def _grid(s) -> SimGrid:
    devices = DevicePopulation(s.clients, s.seed)
    pool = InlinePool(WorkerSpec(CLIENT_APP, 1, s.clients.count, run_config(s)))
    return SimGrid(pool, devices, s.channel, s.seed, Run.create_empty(1))


def test_a_bernoulli_zero_device_never_appears_online():
    s = scenario(clients={"count": 20, "devices": [
        {"name": "never", "share": 1, "availability": {"kind": "bernoulli", "p": 0.0}},
        {"name": "always", "share": 3}]})
    grid = _grid(s)
    never = {int(grid.node_ids[i]) for i in np.flatnonzero(grid.devices.tier_of == 0)}
    assert len(never) == 5
    for _ in range(50):
        online = set(grid.get_node_ids())
        assert online and not online & never
        grid.end_round()


def test_markov_and_cyclic_availability_have_the_configured_long_run_rate():
    s = scenario(clients={"count": 400, "devices": [
        {"name": "markov", "availability": {"kind": "markov", "p": 0.3, "q": 0.1}},
        {"name": "cyclic", "availability": {"kind": "cyclic", "period": 10, "p": 0.2}}]})
    devices = DevicePopulation(s.clients, s.seed)
    online = np.array([devices.available(r) for r in range(300)])
    markov, cyclic = devices.tier_of == 0, devices.tier_of == 1
    assert online[:, markov].mean() == pytest.approx(0.3, abs=0.03)
    assert online[:, cyclic].mean() == pytest.approx(0.2, abs=1e-9)
    # cyclic: on for exactly 2 consecutive rounds of every 10
    first = online[:, np.flatnonzero(cyclic)[0]]
    assert sorted(np.diff(np.flatnonzero(first))[:4].tolist()) == [1, 1, 9, 9]


def test_pull_returns_replies_only_once_the_clock_reaches_them():
    s = quadratic([0.0, 1.0], training__local_steps=2,
                  clients__devices=[{"speed": 1.0}], channel={"uplink": LINK, "downlink": LINK})
    grid = _grid(s)
    content = RecordDict({"arrays": ArrayRecord({"x": Array(np.zeros(1))}),
                          "config": ConfigRecord({"lr": 0.1, "local-steps": 2})})
    ids = grid.push_messages([Message(content, dst_node_id=n, message_type="train")
                              for n in grid.get_node_ids()])
    assert grid.pull_messages(ids) == []
    arrival = grid.next_arrival(ids)
    assert arrival == pytest.approx(2 * (0.1 + 8 / 1e6) + 2.0)
    grid.advance_to(arrival)
    assert len(grid.pull_messages(ids)) == 2


def test_the_server_waits_in_virtual_time_until_enough_devices_are_online():
    s = quadratic([0.0, 1.0, 2.0, 3.0], rounds=5,
                  clients__devices=[{"availability": {"kind": "bernoulli", "p": 0.3}}],
                  strategy={"name": "fedavg", "params": {"min_available_nodes": 3,
                                                         "min_train_nodes": 3,
                                                         "fraction_evaluate": 0.0}})
    result = simulate(s)
    # every round trained >= 3 nodes, although each is online only 30% of the time
    assert all(r["replies"] >= 3 for r in result.records[1:])
    # waiting cost virtual time: 1 s per availability round waited, plus the rounds' own time
    assert result.records[-1]["virtual_time_s"] >= 5


def test_a_wait_that_cannot_end_is_a_clear_error():
    s = quadratic([0.0, 1.0], strategy={"name": "fedavg", "params": {"min_train_nodes": 3}})
    with pytest.raises(RunStalled, match="min_train_nodes"):
        simulate(s)


def test_federated_evaluation_runs_only_every_k_rounds():
    s = scenario(rounds=4, evaluation={"centralized_every": 0, "federated_every": 2},
                 strategy={"name": "fedavg", "params": {"fraction_evaluate": 1.0}})
    records = simulate(s).records
    evaluated = [r["round"] for r in records if "federated_accuracy" in r]
    assert evaluated == [2, 4]
    assert all("accuracy" not in r for r in records)  # no centralized evaluation


def test_node_ids_are_opaque_random_64_bit_integers_fixed_by_the_seed():
    s = scenario(clients={"count": 2000})
    ids = _grid(s).get_node_ids()
    assert len(set(ids)) == 2000 and all(2 <= i < 2**64 for i in ids)
    assert max(ids) >= 2**63  # as on a SuperLink, some do not fit a signed 64-bit integer
    assert ids == _grid(s).get_node_ids()  # same seed, same ids
    assert ids != _grid(scenario(clients={"count": 2000}, seed=1)).get_node_ids()
    partitions = _grid(s).partition_map()
    assert [partitions.partition_of(i) for i in ids] == list(range(2000))


def test_a_local_ray_cluster_requires_a_fresh_token_unless_the_user_chose(monkeypatch):
    from fedsim.engine import pool

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    pool._require_a_token()
    first = os.environ["RAY_AUTH_TOKEN"]
    assert os.environ["RAY_AUTH_MODE"] == "token" and len(first) == 64
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a user's explicit choice is kept
    pool._require_a_token()
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and os.environ["RAY_AUTH_TOKEN"] == first
