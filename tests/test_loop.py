"""The loop base of the strategies that run their own `start()` (fedsim.core.loop)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fedsim import checkpoint as ckpt
from fedsim.core.codec import array_from_numpy, flatten, unflatten
from fedsim.core.loop import OwnLoop, StepOutcome, is_plain
from fedsim.runner import simulate
from fedsim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


class Halving(OwnLoop):
    """x ← x / 2 each step; stops early once the step number reaches `stop_at`."""

    state_fields: ClassVar[tuple[str, ...]] = ("x", "seen")

    def __init__(self, stop_at: int = 10**9) -> None:
        self.stop_at = stop_at
        self.x = np.zeros(0)
        self.seen: set[int] = set()  # not plain: converted by encode_field
        self.grid: Any = None

    def prepare(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int,
                timeout: float | None, config: ConfigRecord) -> None:
        self.like = initial_arrays

    def setup(self, grid: Grid, initial_arrays: ArrayRecord) -> None:
        self.x = flatten(initial_arrays)
        self.seen = set()

    def step(self, n: int) -> StepOutcome | None:
        if n >= self.stop_at:
            return None
        self.x = self.x / 2
        self.seen.add(n)
        return unflatten(self.x, self.like), MetricRecord({"step": n})

    def encode_field(self, name: str, value: Any) -> Any:
        return sorted(value) if name == "seen" else value

    def decode_field(self, name: str, value: Any) -> Any:
        return set(value) if name == "seen" else value


def _arrays() -> ArrayRecord:
    return ArrayRecord({"w": array_from_numpy(np.array([8.0, 4.0], dtype=np.float32))})


def test_the_loop_records_every_step_and_evaluates_before_the_first() -> None:
    evaluated: list[int] = []
    trained: list[int] = []
    loop = Halving()
    loop.on_train_metrics = lambda n, metrics: trained.append(n)
    result = loop.start(None, _arrays(), num_rounds=3,  # type: ignore[arg-type]
                        evaluate_fn=lambda n, a: evaluated.append(n) or MetricRecord({"n": n}))
    assert evaluated == [0, 1, 2, 3] and trained == [1, 2, 3]
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3]
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2, 3]
    assert result.arrays["w"].numpy().tolist() == [1.0, 0.5]


def test_a_step_that_returns_none_ends_the_run() -> None:
    result = Halving(stop_at=3).start(None, _arrays(), num_rounds=10)  # type: ignore[arg-type]
    assert sorted(result.train_metrics_clientapp) == [1, 2]


def test_state_is_the_declared_fields_as_plain_data_and_resume_goes_on_after_its_step() -> None:
    states: dict[int, dict[str, Any]] = {}
    straight = Halving()

    def keep(n: int, arrays: ArrayRecord) -> None:
        states[n] = straight.checkpoint_state()

    final = straight.start(None, _arrays(), num_rounds=5, evaluate_fn=keep)  # type: ignore[arg-type]
    state = states[2]
    assert set(state) == {"_steps_done", "_train_metrics", "_evaluated", "x", "seen"}
    assert state["seen"] == [1, 2] and is_plain(state)
    resumed = Halving()
    resumed.restore_state(state)
    steps: list[int] = []
    arrays = unflatten(state["x"], _arrays())  # what the checkpoint's arrays would be
    result = resumed.start(None, arrays, num_rounds=5,  # type: ignore[arg-type]
                           evaluate_fn=lambda n, a: steps.append(n))
    assert steps == [3, 4, 5] and resumed.seen == {1, 2, 3, 4, 5}
    assert result.arrays["w"].numpy().tobytes() == final.arrays["w"].numpy().tobytes()
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3, 4, 5]


def test_a_field_that_is_not_plain_data_is_refused() -> None:
    class Leaky(Halving):
        def encode_field(self, name: str, value: Any) -> Any:
            return value  # the set goes out as it is

    loop = Leaky()
    loop.seen = {1}
    with pytest.raises(TypeError, match="seen"):
        loop.checkpoint_state()


def test_is_plain() -> None:
    assert is_plain({"a": [1, 2.5, "x", None, np.zeros(3)], 3: (True, np.float32(1))})
    assert not is_plain({1, 2})
    assert not is_plain({(1, 2): 0})
    assert not is_plain(np.array([object()]))
    assert not is_plain(_arrays())


@pytest.mark.parametrize(("path", "overrides"), [
    ("fedfix.yaml", ["clients.count=6", "strategy.name=fedbuff",
                     "strategy.params={buffer_size: 2, restart: immediately}"]),
    ("sgc.yaml", []),
    ("gradient_coding.yaml", []),
    ("dpsgd.yaml", ["clients.count=6"]),
])
def test_the_checkpointed_state_of_every_own_loop_is_plain_data(path: str, overrides: list[str],
                                                                tmp_path: Path) -> None:
    s = load_scenario(ROOT / "scenarios" / path,
                      [*overrides, "rounds=4", "checkpoint.every=3", "output.plots=false"])
    simulate(s, run_dir=tmp_path)
    state = ckpt.load(tmp_path).strategy
    assert state["_steps_done"] == 3
    bad = [name for name, value in state.items() if not is_plain(value)]
    assert bad == []
