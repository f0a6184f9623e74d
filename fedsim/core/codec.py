"""The array codec: models and flat vectors to and from Flower's `ArrayRecord`, fast.

Every message carries arrays; these functions make the same bytes as Flower's
own `Array(ndarray)` / `ArrayRecord(state_dict)` without its per-call npy
header formatting, which costs as much as copying a small model.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.common.constant import SType


def model_to_arrays(model: torch.nn.Module) -> ArrayRecord:
    """The model's state dict as an ArrayRecord (the bytes `ArrayRecord(state_dict)` makes)."""
    record = ArrayRecord()
    for key, tensor in model.state_dict().items():
        record[key] = array_from_numpy(tensor.detach().cpu().numpy())
    return record


@torch.no_grad()
def arrays_to_model(model: torch.nn.Module, arrays: ArrayRecord) -> torch.nn.Module:
    """Copy `arrays` into the model's parameters and buffers, in place.

    What `load_state_dict(strict=True)` does for a plain module (same keys, same shapes,
    values cast to the tensor's dtype), without its per-module hook machinery, which
    costs more than the copy for small models.
    """
    state = model.state_dict(keep_vars=True)
    if state.keys() != arrays.keys():
        raise KeyError(f"model keys {sorted(state)} != array keys {sorted(arrays)}")
    for key, tensor in state.items():
        values = torch.from_numpy(array_to_numpy(arrays[key]))
        if values.shape != tensor.shape:
            raise ValueError(f"{key}: array of shape {tuple(values.shape)} for a tensor of "
                             f"shape {tuple(tensor.shape)}")
        tensor.copy_(values)
    return model


@functools.lru_cache(maxsize=1024)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The header `np.save` writes for a C-ordered array of this dtype and shape."""
    buffer = io.BytesIO()
    np.save(buffer, np.empty(shape, dtype=dtype), allow_pickle=False)
    data = buffer.getvalue()
    return data[:len(data) - np.dtype(dtype).itemsize * math.prod(shape)]


def array_from_numpy(values: np.ndarray) -> Array:
    """`Array(values)`, byte for byte, without `np.save`'s per-call header formatting.

    Models go through this twice per job; Flower's path spends as long formatting and
    parsing the npy header as copying a small model's weights.
    """
    if not values.flags.c_contiguous or values.dtype.hasobject:
        return Array(values)
    header = _npy_header(values.dtype.str, values.shape)
    return Array(dtype=str(values.dtype), shape=tuple(values.shape), stype=SType.NUMPY,
                 data=header + values.tobytes())


def array_to_numpy(array: Array) -> np.ndarray:
    """`array.numpy()` (a writable copy), reading the npy header only if it is not the usual one."""
    if array.stype == SType.NUMPY:
        dtype = np.dtype(array.dtype)
        shape = tuple(array.shape)
        if not dtype.hasobject:
            header = _npy_header(dtype.str, shape)
            if array.data.startswith(header):
                values = np.frombuffer(array.data, dtype=dtype, offset=len(header))
                if values.size == math.prod(shape):
                    return values.reshape(shape).copy()
    return array.numpy()


def flatten(arrays: ArrayRecord) -> np.ndarray:
    """All arrays of a record as one float64 vector (for inner products, norms)."""
    parts = [array_to_numpy(a).ravel() for a in arrays.values()]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def unflatten(vector: np.ndarray, like: ArrayRecord) -> ArrayRecord:
    """Arrays shaped and typed like `like`, filled from a flat vector."""
    out, offset = {}, 0
    for key, array in like.items():
        template = array_to_numpy(array)
        size = template.size
        out[key] = vector[offset:offset + size].reshape(template.shape).astype(template.dtype)
        offset += size
    return ArrayRecord({k: array_from_numpy(np.ascontiguousarray(v)) for k, v in out.items()})


@functools.lru_cache(maxsize=64)
def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def array_nbytes(array: Array) -> int:
    """Payload bytes of a Flower `Array`, read from its header (no decoding)."""
    return math.prod(array.shape) * _itemsize(array.dtype)


def arrays_nbytes(arrays: ArrayRecord) -> int:
    """Payload bytes of every array in a record: what one model costs on a link."""
    return sum(array_nbytes(a) for a in arrays.values())


def payload_nbytes(content: RecordDict) -> int:
    """Bytes of every array in a message's records (what the simulated channel counts).

    Reads the records directly: `RecordDict.array_records` builds a checked copy of the
    dict on every access, which cost more than the count (the grid counts every message
    twice)."""
    return sum(arrays_nbytes(record) for record in content.values()
               if isinstance(record, ArrayRecord))
