"""One loop for strategies that run their own `start()`: time-driven, coded, decentralized.

Flower's `Strategy.start()` runs synchronous rounds. A scheme that decides for itself when a
server step happens (FedFix, FedBuff, gradient coding, gossip...) subclasses `OwnLoop` and
writes only its step; the loop owns everything else:

- the `Result` (final arrays, train and server-side evaluation metrics per step);
- the initial evaluation, `evaluate_fn(0, initial_arrays)`, and after every step n its train
  metrics to `on_train_metrics(n, metrics)` then `evaluate_fn(n, arrays)` (where the
  composition root records the step and may checkpoint);
- resume: after `restore_state`, `start()` continues with the step after the restored one
  (`resumes_own_loop = True`), with the scheme's state as it was;
- checkpoint state, as declared data: a scheme lists the names of its state attributes in
  `state_fields`, and `checkpoint_state()` / `restore_state()` handle exactly those (plus
  the loop's own). Their values must be plain data (`is_plain`): numbers, strings, numpy
  arrays, and lists, tuples, dicts and dataclasses of those. A field that holds something
  else at run time (replies in flight, sets) converts itself in `encode_field` /
  `decode_field`, so that a checkpoint never needs pickle.

A step's life: `step(n)` computes step n (calling `aggregate_train`, so that hooks on it see
the step) and returns its global arrays and train metrics, or None to end the run early
(time budget reached, nothing left in flight); the loop records it, calls `evaluate_fn`, then
`after_step(n)`. The scheme's state must be that of the end of step n when `step` returns,
since a checkpoint may be taken while the step is recorded.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
StepOutcome = tuple[ArrayRecord, MetricRecord | None]

_SCALARS = (type(None), bool, int, float, str, np.generic)


def is_plain(value: Any) -> bool:
    """Whether `value` is plain data: a checkpoint can hold it without pickle.

    None, bools, numbers, strings, numpy scalars and (non-object) arrays; lists and tuples of
    plain data; dicts with str or int keys and plain values; dataclass instances whose fields
    are plain.
    """
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, np.ndarray):
        return not value.dtype.hasobject
    if isinstance(value, list | tuple):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str | int) and not isinstance(k, bool) and is_plain(v)
                   for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all(is_plain(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def metrics_to_plain(metrics: MetricRecord) -> dict[str, Any]:
    return {key: copy.deepcopy(value) for key, value in metrics.items()}


class OwnLoop:
    """Base of the strategies that run their own loop (mixed in before Flower's `Strategy`).

    Subclasses declare `state_fields` and implement `setup` and `step`; `prepare`, `launch`
    and `after_step` are optional hooks. Step numbers start at 1; `num_rounds` in `start()`
    is the number of steps.
    """

    state_fields: ClassVar[tuple[str, ...]] = ()
    """Names of the attributes that make up the scheme's state between two steps."""

    resumes_own_loop: ClassVar[bool] = True  # `start()` goes on after a restored step

    _LOOP_FIELDS: ClassVar[tuple[str, ...]] = ("_steps_done", "_train_metrics", "_evaluated")

    on_train_metrics: Callable[[int, MetricRecord | None], None] | None = None
    """Set by the composition root: each step's train metrics, before its `evaluate_fn`."""

    _steps_done: int = 0  # steps recorded so far
    _train_metrics: dict[int, dict[str, Any]]
    _evaluated: dict[int, dict[str, Any]]
    _restored: bool = False
    _evaluate_fn: EvaluateFn | None = None
    _result_arrays: ArrayRecord | None = None

    # ------------------------------------------------------------ what a scheme writes

    def prepare(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int,
                timeout: float | None, config: ConfigRecord) -> None:
        """Per-run context that is not state (grid, clock, config); called first in `start()`,
        fresh or resumed. `initial_arrays` is the restored step's model on a resume."""

    def setup(self, grid: Grid, initial_arrays: ArrayRecord) -> None:
        """A fresh run's state (every `state_fields` attribute), before the initial evaluation."""
        raise NotImplementedError

    def launch(self) -> None:
        """Called once before the first step of `start()`: after the initial evaluation, or
        after a restore."""

    def step(self, n: int) -> StepOutcome | None:
        """Run step n; (its global arrays, its train metrics), or None to end the run."""
        raise NotImplementedError

    def after_step(self, n: int) -> None:
        """Called after step n was recorded (and possibly checkpointed)."""

    def encode_field(self, name: str, value: Any) -> Any:
        """A state field's value as plain data (identity unless overridden)."""
        return value

    def decode_field(self, name: str, value: Any) -> Any:
        """A state field's value from its plain form (inverse of `encode_field`)."""
        return value

    # ------------------------------------------------------------ the loop

    @property
    def steps_done(self) -> int:
        return self._steps_done

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float | None = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: EvaluateFn | None = None) -> Result:
        """Steps 1..`num_rounds` (after a restore: from the step after the restored one)."""
        resumed = self._restored and self._steps_done > 0
        self._restored = False
        self._evaluate_fn = evaluate_fn
        self._result_arrays = initial_arrays
        self.prepare(grid, initial_arrays, num_rounds, timeout, train_config or ConfigRecord())
        if not resumed:
            self._steps_done, self._train_metrics, self._evaluated = 0, {}, {}
            self.setup(grid, initial_arrays)
            self._evaluate(0, initial_arrays)
        self.launch()
        for n in range(self._steps_done + 1, num_rounds + 1):
            outcome = self.step(n)
            if outcome is None:
                break
            self._record(n, *outcome)
            self.after_step(n)
        return self.result()

    def result(self) -> Result:
        """The run's `Result` so far: the last recorded arrays and every step's metrics."""
        return Result(
            arrays=self._result_arrays if self._result_arrays is not None else ArrayRecord(),
            train_metrics_clientapp={n: MetricRecord(m) for n, m in self._train_metrics.items()},
            evaluate_metrics_serverapp={n: MetricRecord(m) for n, m in self._evaluated.items()})

    def _record(self, n: int, arrays: ArrayRecord, metrics: MetricRecord | None) -> None:
        self._steps_done = n
        self._result_arrays = arrays
        if metrics is not None:
            self._train_metrics[n] = metrics_to_plain(metrics)
        if self.on_train_metrics is not None:
            self.on_train_metrics(n, metrics)
        self._evaluate(n, arrays)

    def _evaluate(self, n: int, arrays: ArrayRecord) -> None:
        if self._evaluate_fn is not None:
            evaluated = self._evaluate_fn(n, arrays)
            if evaluated is not None:
                self._evaluated[n] = metrics_to_plain(evaluated)

    # ------------------------------------------------------------ checkpoint state

    def checkpoint_state(self) -> dict[str, Any]:
        """The loop's and the scheme's declared state, as plain data (a deep copy)."""
        state: dict[str, Any] = {}
        for name in (*self._LOOP_FIELDS, *self.state_fields):
            value = self.encode_field(name, getattr(self, name, None))
            if not is_plain(value):
                raise TypeError(f"{type(self).__name__}.{name}: state must be plain data "
                                f"(got {type(value).__name__}); convert it in encode_field")
            state[name] = copy.deepcopy(value)
        return state

    def restore_state(self, state: dict[str, Any]) -> None:
        """Put back `checkpoint_state()`; the next `start()` continues after its step."""
        for name in (*self._LOOP_FIELDS, *self.state_fields):
            if name in state:
                setattr(self, name, self.decode_field(name, copy.deepcopy(state[name])))
        self._restored = True
