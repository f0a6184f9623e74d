"""Model-aware compute time (FLOPs) and measured network presets with a shared uplink."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedsim.checks import prepare_data
from fedsim.core.errors import ScenarioError
from fedsim.engine.flops import forward_flops_per_sample, model_cost
from fedsim.engine.tasks import make_task
from tests.conftest import quadratic, scenario
from tests.test_engine import _grid

SMALL_CNN_MACS = (16 * 8 * 8 * 1 * 9     # conv 1->16, 3x3, on 8x8
                  + 32 * 4 * 4 * 16 * 9  # conv 16->32, 3x3, on 4x4 (after pooling)
                  + 128 * 64 + 64 * 10)  # dense 128->64, 64->10


def _forward_flops(model: str) -> float:
    task = make_task(scenario(task__model=model))
    return forward_flops_per_sample(task.make_model(), task.train_data(0).x[0])


def test_logistic_regression_costs_exactly_two_d_k_flops_per_sample():
    d, k = 64, 10
    assert _forward_flops("logreg") == 2 * d * k
    cost = model_cost(make_task(scenario(task__model="logreg")), batch_size=16)
    assert cost.train_flops_per_sample == 3 * 2 * d * k


def test_the_projects_cnn_costs_twice_its_hand_counted_multiply_adds():
    assert _forward_flops("cnn") == pytest.approx(2 * SMALL_CNN_MACS, rel=0.01)


def test_a_flops_device_computes_three_forward_passes_per_sample_over_its_rate():
    s = scenario(task__model="cnn", clients__devices=[{"flops": 1e6}])
    _, devices = prepare_data(s)
    work = 100.0
    compute = devices.job_time(0, s.channel, work=work).compute
    assert compute == pytest.approx(work * 3 * _forward_flops("cnn") / 1e6)


def test_a_named_device_class_gives_flops_and_a_memory_limit_that_refuses_big_models():
    s = scenario(clients__devices=[{"device_class": "raspberry_pi_4"}])
    _, devices = prepare_data(s)
    assert devices.speed[0] == pytest.approx(5e9 / (3 * 2 * 64 * 10))
    tiny = scenario(clients__devices=[{"flops": 1e9, "memory_bytes": 1000}])
    with pytest.raises(ScenarioError, match=r"clients\.devices\.0\.memory_bytes: .*needs"):
        prepare_data(tiny)


def test_a_trace_device_too_small_for_the_model_is_never_online(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "big", "flops": 1e9}\n{"id": "small", "flops": 1e9, '
                    '"memory_bytes": 10}\n')
    s = scenario(clients={"count": 2, "trace": {"path": str(path)}})
    _, devices = prepare_data(s)
    online = devices.available(0, 0.0)
    small = [i for i in range(2) if devices.trace[devices._rank_in_tier[i]].id == "small"]
    assert online.sum() == 1 and not online[small[0]]


def test_speed_and_flops_together_are_one_error_naming_the_field():
    with pytest.raises(ScenarioError, match=r"clients\.devices\.0: give one of speed, flops"):
        scenario(clients__devices=[{"speed": 10.0, "flops": 1e9}])


def test_a_preset_fills_the_links_and_keys_given_beside_it_win():
    s = scenario(channel={"preset": "wifi", "uplink": {"latency_s": 0.5}},
                 clients__devices=[{"preset": "5g"}])
    assert s.channel.uplink.bandwidth_mbps == pytest.approx(53.4)
    assert s.channel.uplink.latency_s == 0.5
    tier = s.clients.devices[0]
    assert tier.uplink.shared and tier.uplink.bandwidth_mbps == 30.0
    assert not tier.downlink.shared
    with pytest.raises(ScenarioError, match=r"channel: downlink\.shared: sharing applies to"):
        scenario(channel={"downlink": {"shared": True, "bandwidth_mbps": 1.0}})
    with pytest.raises(ScenarioError, match=r"channel\.uplink: .*needs its bandwidth_mbps"):
        scenario(channel={"uplink": {"shared": True}})


def _upload_times(n: int, shared: bool) -> list[float]:
    """Push one train job to each of n devices at once; seconds after compute to arrival."""
    link = {"bandwidth_mbps": 0.001, "shared": shared}  # 8 bytes up: 0.064 s alone
    s = quadratic([0.0] * n, clients__devices=[{"speed": 1.0}], channel={"uplink": link})
    grid = _grid(s)
    content = RecordDict({"arrays": ArrayRecord({"x": Array(np.zeros(1))}),
                          "config": ConfigRecord({"lr": 0.1, "local-steps": 1})})
    ids = grid.push_messages([Message(content, dst_node_id=node, message_type="train")
                              for node in grid.get_node_ids()])
    return [grid._in_flight[mid].arrival - 1.0 for mid in ids]  # compute: 1 sample at 1/s


@pytest.mark.parametrize("n", [2, 5])
def test_n_simultaneous_uploads_through_a_shared_cell_take_n_times_one(n):
    [alone] = _upload_times(1, shared=True)
    assert alone == pytest.approx(64 / 1000)
    assert _upload_times(n, shared=True) == pytest.approx([n * alone] * n)
    assert _upload_times(n, shared=False) == pytest.approx([alone] * n)
