"""Clocks for time-driven strategies: virtual on `SimGrid`, wall clock on a deployed grid.

A time-driven strategy (FedFix, asynchronous FedAvg, FedBuff...) decides *when* to aggregate
from the clock, not from rounds. It asks the clock for two things only:

- `collect_until(grid, ids, t)`: every reply among `ids` that has arrived by time t (the
  clock is then at t), for schemes that act at fixed instants;
- `wait_for_replies(grid, ids)`: block until at least one reply has arrived and return
  every reply that arrived at that same instant, for schemes that act on arrivals.

A strategy gets its clock from its grid services (`fedsim.core.services`): SimGrid's
virtual clock jumps straight to the next event (nothing sleeps); on a deployed grid the same
calls sleep and poll `pull_messages` (`WallClock`). Two instants closer than
`RESOLUTION_S` are one instant, so that job times such as 0.2 s that are not exact in binary
still tie with an aggregation tick they land on.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

from flwr.app import Message
from flwr.serverapp import Grid

RESOLUTION_S = 1e-9
"""Events less than this far apart (in seconds) happen at the same instant."""


class Clock(ABC):
    """The time a strategy lives in, measured in seconds from the start of the run."""

    @abstractmethod
    def now(self) -> float:
        """Seconds since the run started."""

    @abstractmethod
    def wait_until(self, t: float) -> None:
        """Let time pass until `t` (no-op if it already has)."""

    @abstractmethod
    def collect_until(self, grid: Grid, message_ids: Sequence[str], t: float) -> list[Message]:
        """Wait until `t`; the replies among `message_ids` that arrived by then."""

    @abstractmethod
    def wait_for_replies(self, grid: Grid, message_ids: Sequence[str],
                         until: float = math.inf) -> list[Message]:
        """Wait for the next reply among `message_ids` (at most until `until`).

        Returns every reply that arrived at that instant (empty if `until` came first or
        no reply can come).
        """


class WallClock(Clock):
    """Real time on a deployed Flower grid: sleep, then poll `pull_messages`."""

    def __init__(self, poll_interval_s: float = 0.1) -> None:
        self.poll_interval_s = poll_interval_s
        self._start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._start

    def wait_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)

    def collect_until(self, grid: Grid, message_ids: Sequence[str], t: float) -> list[Message]:
        self.wait_until(t)
        return list(grid.pull_messages(message_ids))

    def wait_for_replies(self, grid: Grid, message_ids: Sequence[str],
                         until: float = math.inf) -> list[Message]:
        while True:
            replies = list(grid.pull_messages(message_ids))
            if replies or not message_ids or self.now() >= until:
                return replies
            time.sleep(min(self.poll_interval_s, max(until - self.now(), 0.0)))
