"""Device traces: availability in virtual seconds, the plain format, FedScale's pickles."""

from __future__ import annotations

import os
import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.run import Run

from fedsim.core.errors import ScenarioError
from fedsim.core.keys import DROPPED_OUT
from fedsim.engine.devices import DevicePopulation
from fedsim.engine.grid import SimGrid
from fedsim.engine.pool import InlinePool, WorkerSpec
from fedsim.engine.traces import TraceDevice
from fedsim.runner import CLIENT_APP, run_config
from fedsim.traces import fedscale_trace, load_trace, read_trace, write_trace
from tests.conftest import quadratic

OFFLINE_10_TO_30 = '{"id": "%s", "speed_sps": 1.0, "online": [[0, 10], [30, 1e9]]}\n'


def _trace_grid(s) -> SimGrid:
    clients = s.clients
    devices = DevicePopulation(clients, s.seed,
                               trace=load_trace(clients.trace, clients.traced, s.seed))
    pool = InlinePool(WorkerSpec(CLIENT_APP, 1, clients.count, run_config(s)))
    return SimGrid(pool, devices, s.channel, s.seed, Run.create_empty(1))


def _train(node: int, steps: int) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"x": Array(np.zeros(1))}),
                          "config": ConfigRecord({"lr": 0.1, "local-steps": steps})})
    return Message(content, dst_node_id=node, message_type="train")


def test_a_trace_device_going_offline_mid_job_fails_at_that_moment(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text(OFFLINE_10_TO_30 % "a" + OFFLINE_10_TO_30 % "b")
    s = quadratic([0.0, 1.0], training__local_steps=8,
                  clients__trace={"path": str(path)})
    grid = _trace_grid(s)
    first, second = grid.get_node_ids()
    grid.advance_to(1.0)
    [early] = grid.push_messages([_train(first, 8)])  # needs 8 s: done at 9, before 10
    grid.advance_to(5.0)
    [late] = grid.push_messages([_train(second, 8)])  # would be done at 13: offline at 10
    assert grid.next_arrival([early]) == pytest.approx(9.0)
    assert grid.next_arrival([late]) == pytest.approx(10.0)
    grid.advance_to(9.0)
    [reply] = grid.pull_messages([early, late])
    assert not reply.has_error()
    grid.advance_to(10.0)
    [failure] = grid.pull_messages([late])
    assert failure.has_error() and failure.error.code == DROPPED_OUT
    grid.advance_to(20.0)
    assert grid.get_node_ids() == []
    grid.advance_to(30.0)
    assert grid.get_node_ids() == [first, second]


def test_trace_devices_mix_with_a_model_based_tier(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(f"{{\"id\": {i}, \"speed_sps\": {10 * (i + 1)}}}\n"
                            for i in range(5)))
    s = quadratic([0.0] * 6, clients__trace={"path": str(path), "sample": 2, "seed": 3},
                  clients__devices=[{"name": "phone", "speed": 7.0}])
    devices = _trace_grid(s).devices
    assert sorted(devices.speed.tolist()).count(7.0) == 4
    traced = devices.speed[devices.tier_of == 1]
    assert len(traced) == 2 and set(traced) <= {10.0, 20.0, 30.0, 40.0, 50.0}


@pytest.mark.parametrize(("line", "field"), [
    ('{"id": "a"}', "speed_sps"),
    ('{"id": "a", "speed_sps": -1}', "speed_sps"),
    ('{"id": "a", "speed_sps": 1, "online": [[5, 2]]}', "online"),
    ('{"id": "a", "speed_sps": 1, "colour": 1}', "colour"),
    ('{"speed_sps": 1}', "id"),
    ("[1, 2]", "JSON object"),
])
def test_a_bad_trace_line_is_one_error_naming_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "ok", "speed_sps": 1}\n' + line + "\n")
    with pytest.raises(ScenarioError, match=rf"t\.jsonl:2: .*{field}") as info:
        read_trace(path)
    assert "\n" not in str(info.value)


def _fedscale_files(tmp_path: Path) -> tuple[Path, Path]:
    capacity = {1: {"computation": 20.0, "communication": 8000.0},
                2: {"computation": 50.0, "communication": 1500.5},
                3: {"computation": 5.0, "communication": 40000.0}}
    behave = {1: {"duration": 700, "active": [0, 400], "inactive": [100, 600],
                  "finish_time": 1000, "model": "SM-G960"},
              2: {"duration": 300, "active": [50], "inactive": [], "finish_time": 500,
                  "model": "Pixel"}}
    paths = tmp_path / "client_device_capacity", tmp_path / "client_behave_trace"
    for path, data in zip(paths, (capacity, behave), strict=True):
        path.write_bytes(pickle.dumps(data))
    return paths


def test_fedscale_pickles_convert_to_the_plain_format_and_back(tmp_path):
    devices = fedscale_trace(*_fedscale_files(tmp_path))
    first, second, third = devices
    assert first.speed_sps == pytest.approx(1000 / 60)  # 3 x 20 ms per training sample
    assert first.up_mbps == first.down_mbps == pytest.approx(8.0)
    assert first.online == ((0.0, 100.0), (400.0, 600.0)) and first.period_s == 1000
    assert second.online == ((50.0, 500.0),)  # active to the end: until finish_time
    assert third.always_online and third.speed_sps == pytest.approx(1000 / 15)
    assert not first.is_online(1150) and first.is_online(1450)  # repeats every 1000 s
    write_trace(devices, tmp_path / "plain.jsonl")
    assert read_trace(tmp_path / "plain.jsonl") == devices


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("hostile", [Fraction(1, 3), _Payload()])
def test_a_fedscale_pickle_holding_any_global_is_refused(tmp_path, monkeypatch, hostile):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "client_device_capacity"
    path.write_bytes(pickle.dumps({1: {"computation": hostile, "communication": 1.0}}))
    with pytest.raises(ScenarioError, match="refused: it refers to"):
        fedscale_trace(path)
    assert not (tmp_path / "pwned").exists()


def test_trace_availability_repeats_and_spans_adjacent_intervals():
    device = TraceDevice("d", speed_sps=1.0, online=((0.0, 5.0), (5.0, 10.0)), period_s=10.0)
    assert device.offline_during(2.0, 40.0) is None  # on for ever: intervals meet, wrap
    gap = TraceDevice("g", speed_sps=1.0, online=((0.0, 5.0), (6.0, 10.0)), period_s=10.0)
    assert gap.offline_during(12.0, 40.0) == pytest.approx(15.0)
    assert gap.offline_during(15.5, 16.0) == pytest.approx(15.5)


@pytest.mark.parametrize("active", [["x"], [True], [float("nan")], "0,5", [[0]]])
def test_a_fedscale_behaviour_of_the_wrong_type_is_one_line(tmp_path, active):
    capacity, behave = _fedscale_files(tmp_path)
    behave.write_bytes(pickle.dumps({1: {"active": active, "inactive": [5],
                                         "finish_time": 100}}))
    with pytest.raises(ScenarioError, match=r"device 1: active, inactive: expected lists"):
        fedscale_trace(capacity, behave)
