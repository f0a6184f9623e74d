"""Properties of the compressors in `strategies.compressors` (α and ω as in EF21 and EControl).

Statistical checks compare a Monte-Carlo mean with its expectation. They allow 5 standard errors,
and the standard error comes from the exact variance of the compressor. A seeded draw then fails
only if the property is broken.
"""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from strategies.compressors import (
    QSGD,
    Compressed,
    Identity,
    Natural,
    RandK,
    ScaledUnbiased,
    Sign,
    TopK,
    make_compressor,
)

ALL_COMPRESSORS = [
    Identity(),
    TopK(k=3),
    TopK(ratio=0.1),
    RandK(k=3),
    RandK(ratio=0.5, scaled=False),
    QSGD(levels=1),
    QSGD(levels=300),
    Natural(),
    Sign(),
    ScaledUnbiased(QSGD(levels=4)),
    ScaledUnbiased(Natural()),
]
RANDOMIZED = [RandK(k=3), QSGD(levels=2), Natural()]
Z = 5.0  # standard errors allowed in Monte-Carlo checks

# Magnitudes span subnormals to 1e30, and small integers force ties.
vectors = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=st.integers(1, 40),
    elements=st.one_of(st.integers(-3, 3).map(float), st.floats(-(2.0**100), 2.0**100, width=32)),
)


def squared_norm(x: np.ndarray) -> float:
    return float(np.sum(np.asarray(x, dtype=np.float64) ** 2))


def draws(compressor, v: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([compressor(v, rng).to_dense() for _ in range(n)])


def coordinatewise_draws(compressor, v: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n draws in one call, for a compressor that treats each coordinate on its own."""
    return compressor(np.tile(v, n), np.random.default_rng(seed)).to_dense().reshape(n, v.size)


def assert_unbiased(samples: np.ndarray, v: np.ndarray, coordinate_variance: np.ndarray) -> None:
    """Each coordinate's mean, and the mean error along sign(v), where small biases add up."""
    tolerance = Z * np.sqrt(coordinate_variance / len(samples)) + 1e-12
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - v), tolerance)
    assert_mean_close((samples - v) @ np.sign(v), 0.0)


def assert_mean_close(samples: np.ndarray, expected: float) -> None:
    tolerance = Z * samples.std() / math.sqrt(len(samples)) + 1e-12
    assert abs(samples.mean() - expected) <= tolerance, (samples.mean(), expected, tolerance)


# --- Top-K ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(v=vectors, k=st.integers(1, 50))
def test_top_k_keeps_the_k_largest_magnitudes_and_lowest_index_on_ties(v, k):
    sent = TopK(k=k)(v, np.random.default_rng(0))
    kept = sent.indices
    dropped = np.setdiff1d(np.arange(v.size), kept)
    assert kept.size == min(k, v.size) and np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(sent.values, v[kept])
    if dropped.size:
        weakest_kept = np.abs(v[kept]).min()
        assert weakest_kept >= np.abs(v[dropped]).max()
        tied_dropped = dropped[np.abs(v[dropped]) == weakest_kept]
        tied_kept = kept[np.abs(v[kept]) == weakest_kept]
        assert tied_dropped.size == 0 or tied_kept.max() < tied_dropped.min()


def test_top_k_breaks_ties_towards_the_lowest_index():
    v = np.array([1.0, -2.0, 2.0, 1.0, -2.0, 1.0])
    assert TopK(k=2)(v, np.random.default_rng(0)).indices.tolist() == [1, 2]
    assert TopK(k=4)(v, np.random.default_rng(0)).indices.tolist() == [0, 1, 2, 4]


@settings(max_examples=60, deadline=None)
@given(v=vectors, ratio=st.floats(0.01, 1.0))
def test_top_k_contracts_with_alpha_k_over_d(v, ratio):
    top_k = TopK(ratio=ratio)
    error = squared_norm(top_k(v, np.random.default_rng(0)).to_dense() - v)
    d = v.size
    assert top_k.alpha(d) == top_k.num_kept(d) / d
    assert error <= (1 - top_k.alpha(d)) * squared_norm(v) * (1 + 1e-12)


def test_k_from_ratio_rounds_to_nearest_and_stays_in_1_to_d():
    assert TopK(ratio=0.07).num_kept(100) == 7  # 0.07·100 = 7.000000000000001
    assert TopK(ratio=0.01).num_kept(10) == 1
    assert TopK(ratio=1.0).num_kept(13) == 13
    assert TopK(k=50).num_kept(13) == 13


# --- Rand-K --------------------------------------------------------------------------------


def test_scaled_rand_k_is_unbiased_with_variance_d_over_k_minus_one():
    rng = np.random.default_rng(1)
    v = rng.normal(size=20)
    rand_k = RandK(k=5)
    omega = rand_k.omega(20)
    assert rand_k.is_unbiased and omega == 20 / 5 - 1
    samples = draws(rand_k, v, 3_000)
    assert_unbiased(samples, v, v**2 * omega)
    errors = np.sum((samples - v) ** 2, axis=1)
    assert_mean_close(errors, omega * squared_norm(v))


def test_unscaled_rand_k_contracts_with_alpha_k_over_d_in_expectation():
    rng = np.random.default_rng(2)
    v = rng.normal(size=20)
    rand_k = RandK(k=5, scaled=False)
    assert not rand_k.is_unbiased and rand_k.alpha(20) == 5 / 20
    errors = np.sum((draws(rand_k, v, 2_000) - v) ** 2, axis=1)
    assert_mean_close(errors, (1 - rand_k.alpha(20)) * squared_norm(v))
    with pytest.raises(ValueError, match="biased"):
        rand_k.omega(20)


def test_rand_k_sends_k_distinct_sorted_coordinates():
    sent = RandK(k=7)(np.ones(30), np.random.default_rng(3))
    assert sent.indices.size == 7 and np.all(np.diff(sent.indices) > 0)
    np.testing.assert_array_equal(sent.values, np.full(7, 30 / 7))


# --- QSGD and natural compression ----------------------------------------------------------


def qsgd_coordinate_variance(v: np.ndarray, s: int) -> np.ndarray:
    norm = np.linalg.norm(v)
    fraction = s * np.abs(v) / norm % 1
    return (norm / s) ** 2 * fraction * (1 - fraction)


@pytest.mark.parametrize("s", [1, 4])
def test_qsgd_is_unbiased_and_within_its_variance_bound(s):
    rng = np.random.default_rng(4)
    v = rng.normal(size=16)
    qsgd = QSGD(levels=s)
    variance = qsgd_coordinate_variance(v, s)
    samples = draws(qsgd, v, 2_000)
    assert_unbiased(samples, v, variance)
    assert_mean_close(np.sum((samples - v) ** 2, axis=1), variance.sum())
    assert qsgd.omega(16) == min(16 / s**2, 4 / s)
    assert variance.sum() <= qsgd.omega(16) * squared_norm(v)


@settings(max_examples=50, deadline=None)
@given(
    v=hnp.arrays(np.float64, st.integers(1, 64), elements=st.floats(-1e6, 1e6)), s=st.integers(1, 9)
)
def test_qsgd_variance_bound_holds_for_any_vector(v, s):
    assume(v.any())
    v = v / np.abs(v).max()  # the bound is scale-free; this keeps squares from underflowing
    bound = QSGD(levels=s).omega(v.size) * squared_norm(v)
    assert qsgd_coordinate_variance(v, s).sum() <= bound * (1 + 1e-9)


def test_natural_compression_is_unbiased_with_variance_at_most_one_eighth():
    # |t| = (4/3)·2^a is where the variance of one coordinate reaches t²/8.
    v = np.array([4 / 3, -4 / 3 * 2.0**-5, 4 / 3 * 2.0**7, 0.3, -1.0, 0.0])
    low = 2.0 ** np.floor(np.log2(np.where(v == 0, 1, np.abs(v))))
    up = np.where(v == 0, 0, np.abs(v) / low - 1)
    variance = low**2 * up * (1 - up)
    samples = coordinatewise_draws(Natural(), v, 20_000)
    assert_unbiased(samples, v, variance)
    assert np.all(variance <= v**2 / 8 + 1e-15)
    np.testing.assert_allclose(variance[:3], v[:3] ** 2 / 8)
    assert_mean_close(np.sum((samples - v) ** 2, axis=1), variance.sum())
    magnitudes = np.abs(samples[samples != 0])
    np.testing.assert_array_equal(magnitudes, 2.0 ** np.round(np.log2(magnitudes)))


# --- Sign, identity, scaling of unbiased compressors ---------------------------------------


@settings(max_examples=50, deadline=None)
@given(v=hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e6, 1e6)))
def test_scaled_sign_is_l1_over_d_times_sign_and_contracts_with_alpha_one_over_d(v):
    d = v.size
    sent = Sign()(v, np.random.default_rng(0)).to_dense()
    np.testing.assert_allclose(sent, np.abs(v).sum() / d * np.where(v >= 0, 1, -1))
    error, norm2 = squared_norm(sent - v), squared_norm(v)
    assert error == pytest.approx(norm2 - np.abs(v).sum() ** 2 / d, abs=1e-12 * norm2)
    assert error <= (1 - Sign().alpha(d)) * norm2 * (1 + 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_identity_is_exact(dtype):
    v = np.random.default_rng(5).normal(size=33).astype(dtype)
    sent = Identity()(v, np.random.default_rng(0))
    dense = Compressed.from_arrays(sent.to_arrays(), v.size).to_dense()
    assert dense.dtype == dtype and np.array_equal(dense, v)
    assert Identity().alpha(33) == 1 and Identity().omega(33) == 0


def test_scaled_unbiased_rand_k_is_unscaled_rand_k_with_alpha_k_over_d():
    v = np.random.default_rng(6).normal(size=40)
    scaled = ScaledUnbiased(RandK(k=8))
    assert scaled.alpha(40) == pytest.approx(8 / 40) and not scaled.is_unbiased
    np.testing.assert_allclose(
        scaled(v, np.random.default_rng(7)).to_dense(),
        RandK(k=8, scaled=False)(v, np.random.default_rng(7)).to_dense(),
        rtol=1e-15,
    )
    with pytest.raises(ValueError, match="biased"):
        ScaledUnbiased(TopK(k=1))


def test_scaled_unbiased_natural_contracts_with_alpha_one_over_one_plus_omega():
    v = np.array([4 / 3, -4 / 3 * 2.0**3, 0.7, -1.9])
    scaled = ScaledUnbiased(Natural())
    errors = np.sum((coordinatewise_draws(scaled, v, 20_000) - v) ** 2, axis=1)
    mean_error, standard_error = errors.mean(), errors.std() / math.sqrt(errors.size)
    assert scaled.alpha(4) == 8 / 9
    assert mean_error <= (1 - scaled.alpha(4)) * squared_norm(v) + Z * standard_error


# --- wire format and bit accounting --------------------------------------------------------


D = 1003  # not a multiple of 8, so packed arrays carry padding
IDX = math.ceil(math.log2(D))  # 10 bits per index


@pytest.mark.parametrize(
    ("compressor", "dtype", "value_bits", "index_bits", "nbytes"),
    [
        (Identity(), np.float32, 32 * D, 0, 4 * D),
        (Identity(), np.float64, 64 * D, 0, 8 * D),
        (TopK(k=100), np.float32, 32 * 100, IDX * 100, 4 * 100 + math.ceil(IDX * 100 / 8)),
        (TopK(k=7), np.float64, 64 * 7, IDX * 7, 8 * 7 + math.ceil(IDX * 7 / 8)),
        (RandK(k=7), np.float32, 32 * 7, IDX * 7, 4 * 7 + math.ceil(IDX * 7 / 8)),
        (Sign(), np.float32, D + 32, 0, math.ceil(D / 8) + 4),
        (QSGD(levels=3), np.float32, 8 * D + 32, 0, D + 4),
        (QSGD(levels=300), np.float64, 16 * D + 64, 0, 2 * D + 8),
        (Natural(), np.float32, 10 * D + 32, 0, math.ceil(9 * D / 8) + math.ceil(D / 8) + 4),
        (Natural(), np.float64, 13 * D + 64, 0, math.ceil(12 * D / 8) + math.ceil(D / 8) + 8),
    ],
)
def test_bits_follow_the_documented_formula_and_match_the_arrays_sent(
    compressor, dtype, value_bits, index_bits, nbytes
):
    v = np.random.default_rng(8).normal(size=D).astype(dtype)
    sent = compressor(v, np.random.default_rng(9))
    arrays = sent.to_arrays()
    assert (sent.value_bits(), sent.index_bits()) == (value_bits, index_bits)
    assert sum(array.nbytes for array in arrays.values()) == nbytes
    assert all(a.dtype.kind in "iu" or a.dtype == dtype for a in arrays.values())


@settings(max_examples=60, deadline=None)
@given(v=vectors, index=st.integers(0, len(ALL_COMPRESSORS) - 1))
def test_to_arrays_from_arrays_round_trip_is_exact(v, index):
    sent = ALL_COMPRESSORS[index](v, np.random.default_rng(10))
    arrays = sent.to_arrays()
    received = Compressed.from_arrays(arrays, v.size)
    assert received.encoding == sent.encoding and received.scale == sent.scale
    dense, expected = received.to_dense(), sent.to_dense()
    assert dense.dtype == v.dtype and dense.shape == v.shape
    np.testing.assert_array_equal(dense, expected)
    padding = 8 * sum(a.nbytes for a in arrays.values()) - sent.value_bits() - sent.index_bits()
    assert 0 <= padding < 8 * len(arrays)


@pytest.mark.parametrize("compressor", ALL_COMPRESSORS)
def test_a_message_survives_a_flower_array_record(compressor):
    v = np.random.default_rng(14).normal(size=21).astype(np.float32)
    sent = compressor(v, np.random.default_rng(15))
    record = ArrayRecord({key: Array(array) for key, array in sent.to_arrays().items()})
    received = Compressed.from_arrays({key: a.numpy() for key, a in record.items()}, v.size)
    np.testing.assert_array_equal(received.to_dense(), sent.to_dense())


def test_from_arrays_rejects_unknown_layouts():
    with pytest.raises(ValueError, match="not a compressed message"):
        Compressed.from_arrays({"values": np.ones(3), "scale": np.ones(1)}, 3)
    with pytest.raises(ValueError, match="dense message has 4 values"):
        Compressed.from_arrays({"values": np.ones(3)}, 4)


@pytest.mark.parametrize("compressor", RANDOMIZED)
def test_a_seeded_generator_makes_compression_deterministic(compressor):
    v = np.random.default_rng(11).normal(size=50)

    def wire(seed: int) -> dict[str, np.ndarray]:
        return compressor(v, np.random.default_rng(seed)).to_arrays()

    first, again, other = wire(12), wire(12), wire(13)
    assert all(np.array_equal(first[key], again[key]) for key in first)
    assert any(not np.array_equal(first[key], other[key]) for key in first)


# --- scenario specs ------------------------------------------------------------------------


def test_make_compressor_builds_the_named_compressor():
    assert make_compressor({"name": "top_k", "ratio": 0.01}) == TopK(ratio=0.01)
    assert make_compressor({"name": "rand_k", "k": 4, "scaled": False}) == RandK(k=4, scaled=False)
    assert make_compressor({"name": "qsgd", "levels": 8}) == QSGD(levels=8)
    assert make_compressor({"name": "sign"}) == Sign()
    assert make_compressor({"name": "natural"}) == Natural()
    assert make_compressor({"name": "identity"}) == Identity()


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"name": "top_k", "ratio": 0.0}, "top_k.ratio"),
        ({"name": "top_k", "ratio": 1.5}, "top_k.ratio"),
        ({"name": "rand_k", "k": 0}, "rand_k.k"),
        ({"name": "qsgd", "levels": 0}, "qsgd.levels"),
        ({"name": "qsgd"}, "qsgd.levels"),
        ({"name": "sign", "ratio": 0.1}, "sign.ratio"),
        ({"name": "top_k", "k": 2, "ratio": 0.1}, "exactly one of k or ratio"),
        ({"name": "top_k"}, "exactly one of k or ratio"),
        ({"name": "top_one"}, "'top_one'"),
    ],
)
def test_invalid_specs_are_rejected_naming_the_field(spec, named):
    with pytest.raises(ValidationError) as error:
        make_compressor(spec)
    assert named in str(error.value)
