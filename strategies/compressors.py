"""Compression operators for what a client sends: identity, Top-K, Rand-K, QSGD, natural, sign.

A compressor maps a flat model-sized vector ``v`` (1-D float32/float64; the caller flattens the
parameters) and a seeded ``numpy.random.Generator`` to a `Compressed` message. It is a pure
function of ``(v, rng)``: error feedback (EF14, EF21, EControl) keeps its memory outside, in the
node's state, and wraps these operators.

Two constants describe a compressor C on vectors of d coordinates (as in the EF21 and EControl
papers):

- contraction ``alpha(d)`` = α ∈ [0, 1] with E‖C(v) − v‖² ≤ (1 − α)‖v‖² for every v (EControl
  writes δ). Error-feedback step sizes are functions of α;
- variance ``omega(d)`` = ω, for unbiased compressors only: E[Q(v)] = v and
  E‖Q(v) − v‖² ≤ ω‖v‖². Such a Q is contractive by itself only when ω < 1 (α = 1 − ω), so
  ``alpha`` returns max(0, 1 − ω). EF21 uses unbiased compressors as Q/(1 + ω), which is
  contractive with α = 1/(1 + ω): that is `ScaledUnbiased`.

=============  ======================  =========================  ==========================
compressor     α                       ω                          reference
=============  ======================  =========================  ==========================
Identity       1                       0
TopK           K/d                     (biased)                   Stich et al., NeurIPS 2018
RandK scaled   max(0, 2 − d/K)         d/K − 1                    Stich et al., NeurIPS 2018
RandK          K/d                     (biased)
QSGD(s)        max(0, 1 − ω)           min(d/s², √d/s)            Alistarh et al., NeurIPS 2017
Natural        7/8                     1/8                        Horváth et al., MSML 2022
Sign           1/d                     (biased)                   Karimireddy et al., ICML 2019
=============  ======================  =========================  ==========================

Compressors are pydantic dataclasses. A scenario names one as ``{name: top_k, ratio: 0.01}``,
and `make_compressor` validates it against `CompressorSpec`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import ConfigDict, Field, TypeAdapter, model_validator
from pydantic.dataclasses import dataclass as spec_dataclass

Encoding = Literal["dense", "sparse", "sign", "qsgd", "natural"]


def _index_width(d: int) -> int:
    """Bits of one index into d coordinates: ⌈log2 d⌉ (0 when d = 1)."""
    return (d - 1).bit_length()


def _exponent_width(dtype: np.dtype) -> int:
    """Bits of a natural-compression exponent code for `dtype` (see `Compressed`)."""
    info = np.finfo(dtype)
    lowest_exponent = info.minexp - info.nmant  # the smallest subnormal is 2**lowest_exponent
    return (info.maxexp - lowest_exponent + 1).bit_length()


def _pack_uint(codes: np.ndarray, width: int) -> np.ndarray:
    """Non-negative integers below 2**width, `width` bits each, most significant bit first."""
    bits = np.empty((codes.size, width), dtype=np.uint8)
    for j in range(width):
        bits[:, j] = (codes >> (width - 1 - j)) & 1
    return np.packbits(bits.ravel())


def _unpack_uint(packed: np.ndarray, width: int, count: int) -> np.ndarray:
    bits = np.unpackbits(packed, count=count * width).reshape(count, width)
    codes = np.zeros(count, dtype=np.int64)
    for j in range(width):
        codes = (codes << 1) | bits[:, j]
    return codes


@dataclass(frozen=True, eq=False)
class Compressed:
    """One compressed vector as it crosses the wire.

    ``dense = to_dense()`` has ``size`` (= d) coordinates of ``dtype`` (the model's float type):

    ========  ====================================  ================  ========================
    encoding  values                                indices           dense
    ========  ====================================  ================  ========================
    dense     d floats                              None              values
    sparse    K floats                              K int32, sorted   values at indices, else 0
    sign      d int8 in {−1, +1}                    None              scale · values
    qsgd      d int8 in [−s, s] (int16 if s > 127)  None              scale · values
    natural   d int16 codes c                       None              c = 0 ↦ 0,
                                                                      c ↦ sign(c)·scale·2^(1−|c|)
    ========  ====================================  ================  ========================

    ``scale`` is set exactly for the last three encodings and is kept rounded to ``dtype``, since
    that is what is sent. For natural compression it starts as the largest power of two sent.

    Bits: what the receiver needs to rebuild ``to_dense()`` exactly, given that both ends know
    d. Framing is not counted: the Flower message, array names and dtype/shape headers.
    With B = bits of ``dtype`` (32 for float32):

    - `value_bits`: dense d·B; sparse K·B; sign d + B (one bit per coordinate, sign(0) sent as
      +, plus the scale); qsgd d·8 + B (d·16 + B when s > 127; a fixed-width level, not the
      paper's Elias code); natural d·(1 + w) + B (a sign bit and a w-bit exponent offset from
      the scale, w = 9 for float32 and 12 for float64, because subnormal powers of two are kept
      too; the paper's 9 bits per float32 coordinate drop them).
    - `index_bits`: sparse K·⌈log2 d⌉, else 0. The EF21 papers plot K·32, the value bits of a
      float32 Top-K message. That leaves out the indices, so they are reported apart.

    `to_arrays` sends exactly these bits as plain numpy arrays: floats in ``dtype``, int8/int16
    levels, and indices, signs and exponents bit-packed into uint8. So the bytes that the
    simulator counts are ⌈bits/8⌉ per array: at most 7 bits of padding per packed array. The
    channel adds noise to float arrays only ("values", "scale"). The integer arrays (indices,
    signs, levels, exponents) go through error-free, like a protected packet header.
    """

    encoding: Encoding
    values: np.ndarray
    size: int
    dtype: np.dtype
    indices: np.ndarray | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if (self.indices is not None) != (self.encoding == "sparse"):
            raise ValueError(
                f"indices must be given exactly for sparse messages, not {self.encoding}"
            )
        if (self.scale is not None) != (self.encoding in ("sign", "qsgd", "natural")):
            raise ValueError(
                f"scale must be given exactly for sign/qsgd/natural, not {self.encoding}"
            )
        if self.scale is not None:
            object.__setattr__(self, "scale", float(self.dtype.type(self.scale)))

    def to_dense(self) -> np.ndarray:
        """The d-vector the receiver applies."""
        if self.encoding == "dense":
            return self.values.copy()
        if self.encoding == "sparse":
            dense = np.zeros(self.size, dtype=self.dtype)
            dense[self.indices] = self.values
            return dense
        scale = self.dtype.type(self.scale)
        if self.encoding in ("sign", "qsgd"):
            return self.values.astype(self.dtype) * scale
        magnitude = np.maximum(np.abs(self.values), 1).astype(np.int32)
        powers = np.ldexp(np.full(self.size, scale, dtype=self.dtype), 1 - magnitude)
        return (np.sign(self.values) * powers).astype(self.dtype)

    def value_bits(self) -> int:
        """Bits of the values (and of the scale) sent; see the class docstring."""
        float_bits = self.dtype.itemsize * 8
        match self.encoding:
            case "dense" | "sparse":
                return self.values.size * float_bits
            case "sign":
                return self.size + float_bits
            case "qsgd":
                return self.size * self.values.itemsize * 8 + float_bits
            case "natural":
                return self.size * (1 + _exponent_width(self.dtype)) + float_bits

    def index_bits(self) -> int:
        """Bits of the indices sent: K·⌈log2 d⌉ for sparse messages, else 0."""
        if self.indices is None:
            return 0
        return self.indices.size * _index_width(self.size)

    def scaled(self, factor: float) -> Compressed:
        """The same message decoding to ``factor`` times the vector."""
        if self.scale is None:
            return replace(self, values=(self.values * factor).astype(self.dtype))
        return replace(self, scale=self.scale * factor)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The message as plain numpy arrays, e.g. for a Flower ``ArrayRecord``."""
        match self.encoding:
            case "dense":
                return {"values": self.values}
            case "sparse":
                return {
                    "values": self.values,
                    "indices": _pack_uint(self.indices, _index_width(self.size)),
                }
            case "sign":
                arrays = {"signs": np.packbits(self.values > 0)}
            case "qsgd":
                arrays = {"levels": self.values}
            case "natural":
                arrays = {
                    "signs": np.packbits(self.values > 0),
                    "exponents": _pack_uint(np.abs(self.values), _exponent_width(self.dtype)),
                }
        return arrays | {"scale": np.array([self.scale], dtype=self.dtype)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], size: int) -> Compressed:
        """Inverse of `to_arrays`, for a vector of ``size`` coordinates (known to both ends)."""
        arrays = {key: np.asarray(array) for key, array in arrays.items()}
        match sorted(arrays):
            case ["values"]:
                values = arrays["values"]
                if values.size != size:
                    raise ValueError(f"a dense message has {size} values, got {values.size}")
                return cls("dense", values, size, values.dtype)
            case ["indices", "values"]:
                values = arrays["values"]
                indices = _unpack_uint(arrays["indices"], _index_width(size), values.size)
                return cls("sparse", values, size, values.dtype, indices.astype(np.int32))
            case ["scale", "signs"]:
                positive = np.unpackbits(arrays["signs"], count=size).astype(bool)
                signs = np.where(positive, 1, -1).astype(np.int8)
                return cls("sign", signs, size, arrays["scale"].dtype, scale=arrays["scale"][0])
            case ["levels", "scale"]:
                levels = arrays["levels"]
                return cls("qsgd", levels, size, arrays["scale"].dtype, scale=arrays["scale"][0])
            case ["exponents", "scale", "signs"]:
                dtype = arrays["scale"].dtype
                magnitude = _unpack_uint(arrays["exponents"], _exponent_width(dtype), size)
                positive = np.unpackbits(arrays["signs"], count=size).astype(bool)
                codes = np.where(positive, magnitude, -magnitude).astype(np.int16)
                return cls("natural", codes, size, dtype, scale=arrays["scale"][0])
        raise ValueError(f"not a compressed message: arrays {sorted(arrays)}")


class Compressor(Protocol):
    """``C(v, rng) -> Compressed``, with its contraction parameter α."""

    @property
    def is_unbiased(self) -> bool: ...

    def alpha(self, d: int) -> float: ...

    def __call__(self, v: np.ndarray, rng: np.random.Generator) -> Compressed: ...


class UnbiasedCompressor(Compressor, Protocol):
    """A compressor with E[Q(v)] = v and E‖Q(v) − v‖² ≤ ω‖v‖²."""

    def omega(self, d: int) -> float: ...


def _vector(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim != 1 or v.size == 0 or not np.issubdtype(v.dtype, np.floating):
        raise ValueError(f"expected a non-empty 1-D float vector, got {v.dtype} of shape {v.shape}")
    return v


_SPEC = ConfigDict(extra="forbid")


@spec_dataclass(frozen=True, kw_only=True, config=_SPEC)
class Identity:
    """Sends v as it is (α = 1, ω = 0): error feedback with it is the uncompressed method."""

    name: Literal["identity"] = "identity"
    is_unbiased: ClassVar[bool] = True

    def alpha(self, d: int) -> float:
        return 1.0

    def omega(self, d: int) -> float:
        return 0.0

    def __call__(self, v: np.ndarray, rng: np.random.Generator) -> Compressed:
        v = _vector(v)
        return Compressed("dense", v.copy(), v.size, v.dtype)


@spec_dataclass(frozen=True, kw_only=True, config=_SPEC)
class _Sparsifier:
    """Keeps K coordinates. Give exactly one of ``k`` (≥ 1) or ``ratio`` ∈ (0, 1] (K ≈ ratio·d)."""

    k: int | None = Field(default=None, ge=1)
    ratio: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _exactly_one_of_k_or_ratio(self) -> _Sparsifier:
        if (self.k is None) == (self.ratio is None):
            raise ValueError(f"give exactly one of k or ratio, got k={self.k}, ratio={self.ratio}")
        return self

    def num_kept(self, d: int) -> int:
        """K for d coordinates: ``k``, or ``ratio·d`` rounded to the nearest integer; in [1, d]."""
        wanted = self.k if self.k is not None else round(self.ratio * d)
        return min(d, max(1, wanted))


@spec_dataclass(frozen=True, kw_only=True, config=_SPEC)
class TopK(_Sparsifier):
    """The K coordinates of largest magnitude; ties go to the lowest index.

    ‖C(v) − v‖² is the mass of the d − K smallest coordinates, at most (1 − K/d)‖v‖², so
    α = K/d, deterministically.
    """

    name: Literal["top_k"] = "top_k"
    is_unbiased: ClassVar[bool] = False

    def alpha(self, d: int) -> float:
        return self.num_kept(d) / d

    def __call__(self, v: np.ndarray, rng: np.random.Generator) -> Compressed:
        v = _vector(v)
        d, k = v.size, self.num_kept(v.size)
        magnitude = np.abs(v)
        kth_largest = np.partition(magnitude, d - k)[d - k]
        above = np.flatnonzero(magnitude > kth_largest)
        ties = np.flatnonzero(magnitude == kth_largest)[: k - above.size]
        indices = np.sort(np.concatenate([above, ties])).astype(np.int32)
        return Compressed("sparse", v[indices], d, v.dtype, indices)


@spec_dataclass(frozen=True, kw_only=True, config=_SPEC)
class RandK(_Sparsifier):
    """K coordinates drawn uniformly without replacement.

    ``scaled=True`` (default) multiplies them by d/K. That makes the compressor unbiased with
    ω = d/K − 1, and contractive only when K > d/2. ``scaled=False`` is biased and contractive
    with α = K/d: E‖C(v) − v‖² = (1 − K/d)‖v‖² exactly.
    """

    name: Literal["rand_k"] = "rand_k"
    scaled: bool = True

    @property
    def is_unbiased(self) -> bool:
        return self.scaled

    def omega(self, d: int) -> float:
        if not self.scaled:
            raise ValueError("unscaled Rand-K is biased; it has no variance parameter ω")
        return d / self.num_kept(d) - 1

    def alpha(self, d: int) -> float:
        if self.scaled:
            return max(0.0, 1 - self.omega(d))
        return self.num_kept(d) / d

    def __call__(self, v: np.ndarray, rng: np.random.Generator) -> Compressed:
        v = _vector(v)
        d, k = v.size, self.num_kept(v.size)
        indices = np.sort(rng.choice(d, size=k, replace=False)).astype(np.int32)
        values = v[indices] * (d / k) if self.scaled else v[indices]
        return Compressed("sparse", values.astype(v.dtype), d, v.dtype, indices)


@spec_dataclass(frozen=True, kw_only=True, config=_SPEC)
class QSGD:
    """Stochastic quantization to ``levels`` = s levels per sign (Alistarh et al. 2017).

    Q(v)_i = ‖v‖₂/s · sign(v_i) · ξ_i, where ξ_i is s|v_i|/‖v‖₂ rounded down or up at random so
    that E ξ_i = s|v_i|/‖v‖₂. Unbiased, with ω = min(d/s², √d/s) (their Lemma 3.1).
    """

    name: Literal["qsgd"] = "qsgd"
    levels: int = Field(ge=1, le=32767)
    is_unbiased: ClassVar[bool] = True

    def omega(self, d: int) -> float:
        return min(d / self.levels**2, math.sqrt(d) / self.levels)

    def alpha(self, d: int) -> float:
        return max(0.0, 1 - self.omega(d))

    def __call__(self, v: np.ndarray, rng: np.random.Generator) -> Compressed:
        v = _vector(v)
        s = self.levels
        norm = float(np.linalg.norm(v.astype(np.float64)))
        ratio = np.minimum(np.abs(v) * (s / norm), s) if norm > 0 else np.zeros(v.size)
        lower = np.floor(ratio)
        level = lower + (rng.random(v.size) < ratio - lower)
        level_dtype = np.int8 if s <= np.iinfo(np.int8).max else np.int16
        levels = (np.sign(v) * level).astype(level_dtype)
        return Compressed("qsgd", levels, v.size, v.dtype, scale=norm / s)


@spec_dataclass(frozen=True, kw_only=True, config=_SPEC)
class Natural:
    """Natural compression C_nat (Horváth, Ho, Horváth, Sahu, Canini, Richtárik 2022).

    Each coordinate t with 2^a ≤ |t| < 2^(a+1) becomes sign(t)·2^(a+1) with probability
    (|t| − 2^a)/2^a, else sign(t)·2^a. Unbiased, with ω = 1/8. Only a sign and an exponent are
    sent.
    """

    name: Literal["natural"] = "natural"
    is_unbiased: ClassVar[bool] = True

    def omega(self, d: int) -> float:
        return 1 / 8

    def alpha(self, d: int) -> float:
        return 1 - self.omega(d)

    def __call__(self, v: np.ndarray, rng: np.random.Generator) -> Compressed:
        v = _vector(v)
        mantissa, exponent = np.frexp(np.abs(v).astype(np.float64))  # |t| = mantissa·2^exponent
        round_up = rng.random(v.size) < 2 * mantissa - 1
        power = exponent - 1 + round_up
        nonzero = mantissa > 0
        if not nonzero.any():
            return Compressed("natural", np.zeros(v.size, np.int16), v.size, v.dtype, scale=0.0)
        top = int(power[nonzero].max())
        magnitude = np.where(nonzero, top - power + 1, 0)
        codes = np.where(v < 0, -magnitude, magnitude).astype(np.int16)
        return Compressed("natural", codes, v.size, v.dtype, scale=math.ldexp(1.0, top))


@spec_dataclass(frozen=True, kw_only=True, config=_SPEC)
class Sign:
    """Scaled sign ‖v‖₁/d · sign(v) (Karimireddy et al. 2019), sign(0) taken as +1.

    ‖C(v) − v‖² = ‖v‖² − ‖v‖₁²/d ≤ (1 − 1/d)‖v‖², so α = 1/d (at worst; ‖v‖₁²/(d‖v‖²)).
    """

    name: Literal["sign"] = "sign"
    is_unbiased: ClassVar[bool] = False

    def alpha(self, d: int) -> float:
        return 1 / d

    def __call__(self, v: np.ndarray, rng: np.random.Generator) -> Compressed:
        v = _vector(v)
        signs = np.where(v >= 0, 1, -1).astype(np.int8)
        scale = float(np.abs(v).sum(dtype=np.float64)) / v.size
        return Compressed("sign", signs, v.size, v.dtype, scale=scale)


@dataclass(frozen=True)
class ScaledUnbiased:
    """Q/(1 + ω) for an unbiased Q: contractive with α = 1/(1 + ω).

    This is how EF21 uses unbiased compressors (so does the EF21 authors' framework,
    ``burlachenkok/ef21_with_rare_features``). E‖λQ(v) − v‖² =
    (λ²(1 + ω) − 2λ + 1)‖v‖² is smallest at λ = 1/(1 + ω), where it equals
    (1 − 1/(1 + ω))‖v‖². Scaled Rand-K becomes unscaled Rand-K.
    """

    inner: UnbiasedCompressor
    is_unbiased: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not self.inner.is_unbiased:
            raise ValueError(
                f"{self.inner} is biased; only unbiased compressors are scaled by 1/(1+ω)"
            )

    def alpha(self, d: int) -> float:
        return 1 / (1 + self.inner.omega(d))

    def __call__(self, v: np.ndarray, rng: np.random.Generator) -> Compressed:
        return self.inner(v, rng).scaled(self.alpha(np.size(v)))


CompressorSpec = Annotated[
    Identity | TopK | RandK | QSGD | Natural | Sign, Field(discriminator="name")
]
"""A compressor as a scenario names it, e.g. ``{"name": "top_k", "ratio": 0.01}``."""

_SPEC_ADAPTER: TypeAdapter[Compressor] = TypeAdapter(CompressorSpec)


def make_compressor(spec: Mapping[str, Any] | Compressor) -> Compressor:
    """The compressor named by ``spec``.

    Raises ``pydantic.ValidationError`` for an unknown name, a bad parameter (the error names the
    field) or an extra key.
    """
    return _SPEC_ADAPTER.validate_python(spec)
