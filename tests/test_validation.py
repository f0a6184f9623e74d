"""The validation split: held out of the training data; "best" is chosen on it."""

from __future__ import annotations

from fedsim.engine.tasks import make_task
from fedsim.runner import best_on_validation, simulate
from tests.conftest import scenario


def _client_samples(task) -> int:
    return sum(len(task.train_data(i)) + len(task.test_data(i)) for i in range(task.num_clients))


def test_the_validation_set_is_held_out_of_the_clients_data():
    held = make_task(scenario(task__validation_share=0.1))
    none = make_task(scenario(task__validation_share=0.0))
    assert none.validation_data() is None
    validation = held.validation_data()
    assert validation is not None and len(validation) > 100
    assert _client_samples(held) + len(validation) == _client_samples(none)
    assert len(held.test_data(None)) == len(none.test_data(None))  # the test set is untouched


def test_best_is_the_round_best_on_validation_reported_on_test():
    records = [{"round": 0, "accuracy": 0.5, "val_accuracy": 0.4},
               {"round": 1, "accuracy": 0.9, "val_accuracy": 0.6},  # best on test
               {"round": 2, "accuracy": 0.8, "val_accuracy": 0.7},
               {"round": 3, "accuracy": 0.7, "val_accuracy": 0.7}]  # a tie: the first wins
    assert best_on_validation(records) == {"best_round": 2, "best_val_accuracy": 0.7,
                                           "test_accuracy_at_best": 0.8}
    assert best_on_validation([{"round": 0, "loss": 2.0}]) == {}


def test_a_run_records_validation_metrics_and_its_best_round():
    result = simulate(scenario(rounds=3))
    assert all("val_accuracy" in r and "val_loss" in r for r in result.records)
    best = result.summary["best_round"]
    assert result.summary["test_accuracy_at_best"] == result.records[best]["accuracy"]
