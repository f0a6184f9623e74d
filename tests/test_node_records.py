"""Per-node records, per-tier summaries and the timeline add up to the round records."""

from __future__ import annotations

import csv
import json

import pytest

from fedsim.results import RunWriter
from fedsim.runner import simulate
from tests.conftest import quadratic

# quadratic jobs do 1 sample of work: a job takes 1/speed seconds plus transfers
FAST, SLOW = {"name": "fast", "share": 1, "speed": 100.0}, {"name": "slow", "share": 1,
                                                            "speed": 1.0}


def _run(tmp_path, scenario):
    result = simulate(scenario, [RunWriter(tmp_path, plots=False)])
    with (tmp_path / "nodes.csv").open() as f:
        nodes = [{k: float(v) for k, v in row.items() if k != "tier"} | {"tier": row["tier"]}
                 for row in csv.DictReader(f)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    return result.records, nodes, summary


def _total(rows, key):
    return sum(r.get(key, 0) for r in rows)


def _adds_up(records, nodes):
    for node in nodes:
        assert node["sent"] == (node["completed"] + node["straggled"] + node["failed"]
                                + node["dropped"] + node["in_flight"])
    assert _total(nodes, "sent") == _total(records, "sent")
    assert _total(nodes, "completed") == _total(records, "replies")
    assert _total(nodes, "straggled") == _total(records, "stragglers")
    assert _total(nodes, "failed") + _total(nodes, "dropped") == _total(records, "failures")
    assert _total(nodes, "bytes_up") == _total(records, "bytes_up")
    assert _total(nodes, "bytes_down") == _total(records, "bytes_down")


def test_a_deadline_between_two_tiers_job_times_makes_one_tier_all_stragglers(tmp_path):
    lossy = {"name": "lossy", "share": 1, "speed": 100.0, "dropout_p": 0.3,
             "uplink": {"erasure_p": 0.3}}
    scenario = quadratic([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], rounds=4, deadline_s=0.5,
                         clients={"count": 6, "devices": [FAST, SLOW, lossy]})
    records, nodes, summary = _run(tmp_path, scenario)
    for record in records[1:]:  # a synchronous round settles every job it sent
        assert record["sent"] == record["replies"] + record["failures"] + record["stragglers"]
    _adds_up(records, nodes)
    assert {n["in_flight"] for n in nodes} == {0}
    tiers = summary["tiers"]
    assert tiers["slow"]["straggled_rate"] == 1.0
    assert tiers["fast"]["straggled_rate"] == 0.0
    assert _total([n for n in nodes if n["tier"] == "slow"], "straggled") \
        == summary["total_stragglers"] > 0
    assert tiers["lossy"]["dropped_rate"] > 0 and tiers["lossy"]["failed_rate"] > 0
    assert tiers["slow"]["examples_share"] == 0.0  # none of its replies was aggregated
    assert tiers["fast"]["availability"] == tiers["fast"]["participation"] == 1.0


def test_an_async_strategy_books_the_jobs_still_in_flight(tmp_path):
    scenario = quadratic([0.0, 1.0, 2.0], rounds=5, training={"lr": 0.01, "local_steps": 1},
                         clients={"count": 3, "devices": [FAST, SLOW]},
                         strategy={"name": "fedfix", "params": {"period_s": 0.3}})
    records, nodes, _ = _run(tmp_path, scenario)
    _adds_up(records, nodes)
    assert _total(nodes, "in_flight") > 0  # the slow device's job outlives the run


def test_gradient_coding_books_each_abandoned_worker_as_a_straggler(tmp_path):
    scenario = quadratic([0.0, 1.0, 2.0, 3.0], rounds=3,
                         clients={"count": 4, "devices": [FAST, SLOW]},
                         strategy={"name": "gradient_coding", "params": {"s": 2}})
    records, nodes, summary = _run(tmp_path, scenario)
    _adds_up(records, nodes)
    assert summary["tiers"]["slow"]["straggled_rate"] == 1.0


def test_the_timeline_is_a_chrome_trace_with_one_compute_event_per_job(tmp_path):
    scenario = quadratic([0.0, 1.0, 2.0, 3.0], rounds=3, deadline_s=0.5,
                         clients={"count": 4, "devices": [FAST, SLOW]})
    records, _, _ = _run(tmp_path, scenario)
    trace = json.loads((tmp_path / "timeline.json").read_text())["traceEvents"]
    computes = [e for e in trace if e["name"] == "compute"]
    assert len(computes) == _total(records, "sent")
    assert all(e["ph"] == "X" and e["dur"] > 0 for e in computes)
    cuts = [e for e in trace if e["name"] == "straggler_cut"]
    assert len(cuts) == _total(records, "stragglers") > 0
    tiers = {e["args"]["name"] for e in trace if e["name"] == "process_name"}
    assert tiers == {"tier fast", "tier slow"}


@pytest.mark.parametrize(("limit", "shown"), [(0, 0), (2, 2), (50, 4)])
def test_the_timeline_keeps_a_sample_of_devices_from_every_tier(tmp_path, limit, shown):
    scenario = quadratic([0.0, 1.0, 2.0, 3.0], rounds=2, output={"timeline_nodes": limit},
                         clients={"count": 4, "devices": [FAST, SLOW]})
    result = simulate(scenario)
    assert len({e["node"] for e in result.timeline}) == shown
    if shown:
        assert {e["tier"] for e in result.timeline} == {"fast", "slow"}


def test_each_tier_reports_its_own_federated_evaluation(tmp_path):
    """Quadratic clients hold one example each: the tiers' means average to the run's."""
    scenario = quadratic([0.0, 1.0, 2.0, 7.0], rounds=2,
                         clients={"count": 4, "devices": [FAST, SLOW]},
                         strategy={"name": "fedavg", "params": {"fraction_evaluate": 1.0}})
    records, _, summary = _run(tmp_path, scenario)
    tiers = summary["tiers"]
    per_tier = [tiers[t]["federated_loss"] for t in ("fast", "slow")]
    assert per_tier[0] != per_tier[1]
    assert sum(per_tier) / 2 == pytest.approx(records[-1]["federated_loss"])
