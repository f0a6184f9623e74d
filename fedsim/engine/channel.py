"""The communication channel: transfer time, additive noise, erasure, byte counts.

Noise is applied to the float arrays inside a message's records, so every
strategy experiences it without knowing. Integer arrays (e.g. the indices of
a sparsified update) are sent error-free: they model the error-protected
header of a packet. Bytes are the payload of the arrays, prod(shape) x
itemsize, exactly what a compressed message saves; the npy headers and the
config/metric records are left out of the count.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fedsim.core.codec import array_from_numpy, array_to_numpy
from fedsim.core.schema import LinkSpec


def transfer_time(link: LinkSpec, nbytes: int) -> float:
    """Virtual seconds to send `nbytes` over `link`: latency + size / bandwidth."""
    if link.bandwidth_mbps is None:
        return link.latency_s
    return link.latency_s + nbytes * 8 / (link.bandwidth_mbps * 1e6)


def add_noise(content: RecordDict, sigma: float, gen: np.random.Generator) -> RecordDict:
    """A copy of `content` with N(0, sigma^2) added to every float array entry."""
    if sigma == 0:
        return content
    noisy = RecordDict()
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays = {}
            for name, array in record.items():
                values = array_to_numpy(array)
                if np.issubdtype(values.dtype, np.floating):
                    noise = gen.standard_normal(values.shape) * sigma
                    values = (values + noise).astype(values.dtype)
                arrays[name] = array_from_numpy(values)
            noisy[key] = ArrayRecord(arrays)
        else:
            noisy[key] = record
    return noisy


def is_lost(link: LinkSpec, gen: np.random.Generator) -> bool:
    return link.erasure_p > 0 and bool(gen.random() < link.erasure_p)


class SharedUplink:
    """One cell's uplink whose bandwidth is divided equally among the uploads in flight
    (processor sharing): n uploads of one size that start together all finish after n times
    the time one alone takes. Latency is added after the last bit.

    Uploads are added as jobs are pushed, never starting before the clock; `settle(now)`
    commits the sharing up to `now` (nothing added later can change it) and `finish_times()`
    plays the rest forward with the uploads known so far.
    """

    def __init__(self, link: LinkSpec) -> None:
        assert link.bandwidth_mbps is not None
        self._bps = link.bandwidth_mbps * 1e6
        self._latency = link.latency_s
        self._t = 0.0
        self._active: dict[str, float] = {}  # upload key -> bits left at `_t`
        self._waiting: list[tuple[float, str, float]] = []  # (start, key, bits), start > _t

    def add(self, key: str, start: float, nbytes: int) -> None:
        self._waiting.append((start, key, nbytes * 8.0))

    def settle(self, now: float) -> None:
        """Commit the sharing up to `now`; uploads finished by then are forgotten."""
        self._t, self._active, self._waiting = self._play(now)[1:]

    def finish_times(self) -> dict[str, float]:
        """Arrival time of every upload not finished at the last `settle`."""
        return self._play(math.inf)[0]

    def _play(self, until: float) -> tuple[dict[str, float], float, dict[str, float],
                                           list[tuple[float, str, float]]]:
        t, active = self._t, dict(self._active)
        waiting = sorted(self._waiting)
        done: dict[str, float] = {}
        while (active or waiting) and t < until:
            if not active:
                t = min(waiting[0][0], until)
            else:
                share = self._bps / len(active)
                first_done = t + min(active.values()) / share
                next_start = waiting[0][0] if waiting else math.inf
                step_to = min(first_done, next_start, until)
                least = min(active.values())
                finished = ([k for k, bits in active.items() if bits <= least * (1 + 1e-12)]
                            if step_to == first_done else [])
                sent = (step_to - t) * share
                t = step_to
                for key in active:
                    active[key] -= sent
                for key in finished:
                    done[key] = t + self._latency
                    del active[key]
            while waiting and waiting[0][0] <= t:
                _, key, bits = waiting.pop(0)
                active[key] = bits
        return done, t, active, waiting
