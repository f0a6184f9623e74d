"""The communication channel: transfer time, additive noise, erasure, byte counts.

Noise is applied to the float arrays inside a message's records, so every
strategy experiences it without knowing. Integer arrays (e.g. the indices of
a sparsified update) are sent error-free: they model the error-protected
header of a packet. Bytes are the payload of the arrays, prod(shape) x
itemsize, exactly what a compressed message saves; the npy headers and the
config/metric records are left out of the count.
"""

from __future__ import annotations

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
