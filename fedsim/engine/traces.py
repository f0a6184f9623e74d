"""Devices replayed from a trace: measured speed, links, and availability in seconds.

A trace device is online during half-open intervals [start, end) of virtual seconds from
the start of the run, repeated every `period_s` when given (FedScale's behaviour traces
repeat that way). Unlike the round-based availability models, a trace device that goes
offline in the middle of a job drops out at that moment (`offline_during`).
The plain file format is read and written by `fedsim.traces`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TraceDevice:
    """One measured device. `speed_sps` (training samples per second) or `flops` (FLOP/s:
    the task model's FLOPs decide its speed) gives its compute; `None` bandwidth is
    unlimited; `online` empty means always online."""

    id: str
    speed_sps: float | None = None
    flops: float | None = None
    memory_bytes: float | None = None
    up_mbps: float | None = None
    down_mbps: float | None = None
    up_latency_s: float = 0.0
    down_latency_s: float = 0.0
    online: tuple[tuple[float, float], ...] = ()
    period_s: float | None = None
    _starts: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(s for s, _ in self.online))

    @property
    def always_online(self) -> bool:
        return not self.online

    def is_online(self, t: float) -> bool:
        """Whether the device is online at virtual time `t`."""
        if not self.online:
            return True
        t = self._folded(t)
        i = bisect.bisect_right(self._starts, t) - 1
        return i >= 0 and t < self.online[i][1]

    def offline_during(self, start: float, end: float) -> float | None:
        """The first moment in [start, end) the device is offline, or None if it stays on."""
        if not self.online:
            return None
        if not self.is_online(start):
            return start
        t = start
        while t < end:
            off = self._end_of_interval(t)
            if off >= end:
                return None
            if not self.is_online(off):
                return off
            t = off  # the next interval starts right where this one ends
        return None

    def _end_of_interval(self, t: float) -> float:
        """End of the online interval holding `t` (which must be online)."""
        folded = self._folded(t)
        i = bisect.bisect_right(self._starts, folded) - 1
        return t + (self.online[i][1] - folded)

    def _folded(self, t: float) -> float:
        return t % self.period_s if self.period_s else t


def online_at(devices: list[TraceDevice], t: float) -> np.ndarray:
    """Boolean vector: which trace devices are online at virtual time `t`."""
    return np.fromiter((d.is_online(t) for d in devices), dtype=bool, count=len(devices))


def check_intervals(online: list[tuple[float, float]], period_s: float | None) -> str | None:
    """Why these online intervals are not usable (sorted, disjoint, finite, inside the
    period), or None."""
    last_end = -math.inf
    for start, end in online:
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
            return f"interval [{start}, {end}]: times must be finite seconds >= 0"
        if end <= start:
            return f"interval [{start}, {end}]: end must be after start"
        if start < last_end:
            return f"interval [{start}, {end}]: intervals must be sorted and not overlap"
        if period_s is not None and end > period_s:
            return f"interval [{start}, {end}]: ends after period_s ({period_s})"
        last_end = end
    return None
