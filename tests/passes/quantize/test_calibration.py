"""Calibration: streamed histograms, each clipping method on known distributions, scales/zero points."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.passes.quantize import calibration as cal
from onnxslim_compress.passes.quantize.placement import quantize_weight


def _hist(x: np.ndarray, chunks: int = 10) -> cal.Histogram:
    h = cal.Histogram()
    for part in np.array_split(x, chunks):
        h.update(part)
    return h


def test_histogram_growth_is_exact():
    rng = np.random.default_rng(0)
    # ranges grow chunk by chunk, forcing several doublings
    x = np.concatenate([rng.standard_normal(20000) * s for s in (0.1, 1.0, 5.0, 40.0)]).astype(np.float32)
    h = _hist(x, 4)
    assert h.counts.sum() == x.size
    assert h.min == pytest.approx(float(x.min())) and h.max == pytest.approx(float(x.max()))
    edges = np.linspace(-h.width, h.width, h.nbins + 1)
    ref, _ = np.histogram(x, edges)
    assert np.abs(ref - h.counts).sum() <= 4  # only float rounding at bin edges may differ


def test_minmax_is_exact():
    x = np.array([-3.5, 0.25, 7.0, 1.0], np.float32)
    h = _hist(x, 2)
    assert cal.compute_range(h, "minmax", symmetric=False) == (-3.5, 7.0)
    assert cal.compute_range(h, "minmax", symmetric=True) == (-7.0, 7.0)


def test_percentile_on_normal_and_uniform():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(400_000).astype(np.float32)
    lo, hi = cal.compute_range(_hist(x), "percentile", symmetric=False, percentile=99.0)
    assert lo == pytest.approx(np.percentile(x, 1.0), abs=0.02)
    assert hi == pytest.approx(np.percentile(x, 99.0), abs=0.02)
    lo, hi = cal.compute_range(_hist(x), "percentile", symmetric=True, percentile=99.0)
    assert hi == pytest.approx(np.percentile(np.abs(x), 99.0), abs=0.02) and lo == -hi
    u = rng.uniform(0, 10, 200_000).astype(np.float32)
    lo, hi = cal.compute_range(_hist(u), "percentile", symmetric=False, percentile=99.9)
    assert lo == pytest.approx(0.01, abs=0.02) and hi == pytest.approx(9.99, abs=0.02)


def test_entropy_clips_long_tails_but_not_uniform():
    rng = np.random.default_rng(2)
    lap = rng.laplace(0, 1.0, 400_000).astype(np.float32)
    lo, hi = cal.compute_range(_hist(lap), "entropy", symmetric=True)
    amax = float(np.abs(lap).max())
    assert 4.0 < hi < 0.9 * amax  # a Laplace tail is clipped, the bulk is kept
    u = rng.uniform(-1, 1, 200_000).astype(np.float32)
    lo, hi = cal.compute_range(_hist(u), "entropy", symmetric=True)
    assert hi > 0.95  # nothing to gain by clipping a uniform distribution


def test_mse_matches_known_optimum_for_laplace():
    # optimal 8-bit uniform clip for Laplace(b) is about 9.89 b (Banner et al., ACIQ)
    rng = np.random.default_rng(3)
    lap = rng.laplace(0, 1.0, 1_000_000).astype(np.float32)
    lo, hi = cal.compute_range(_hist(lap), "mse", symmetric=True)
    assert hi == pytest.approx(9.89, rel=0.15) and lo == -hi
    u = rng.uniform(0, 4, 200_000).astype(np.float32)
    lo, hi = cal.compute_range(_hist(u), "mse", symmetric=False)
    assert hi > 3.8 and lo == 0.0


def test_qparams_against_numpy_reference():
    q = cal.asymmetric_qparams(-1.0, 3.0)
    assert q.scale == pytest.approx(4.0 / 255) and q.zero_point == 64
    q = cal.asymmetric_qparams(0.5, 2.0)  # the range is widened to contain 0
    assert q.scale == pytest.approx(2.0 / 255) and q.zero_point == 0
    q = cal.symmetric_qparams(-2.54, 1.0)
    assert q.scale == pytest.approx(0.02) and q.zero_point == 0
    w = np.array([[1.0, -0.5], [0.1, 0.2], [-4.0, 2.0]], np.float32)  # 3 output channels on axis 0
    qw, s = quantize_weight(w, 0, 127)
    np.testing.assert_allclose(s, np.array([1.0, 0.2, 4.0]) / 127, rtol=1e-6)
    np.testing.assert_array_equal(qw, np.round(w / s[:, None]))
    assert np.abs(qw).max() == 127
    qw, s = quantize_weight(w, None, 127)
    assert float(s) == pytest.approx(4.0 / 127)


def _small_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 64])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


class _Stream:
    """A re-iterable data set that makes each sample on demand (nothing is held between samples)."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        rng = np.random.default_rng(0)
        for _ in range(self.n):
            yield {"x": rng.standard_normal((1, 64, 64)).astype(np.float32)}


def _peak(n: int) -> int:
    m = _small_model()
    tracemalloc.start()
    hists, _ = cal.collect_histograms(m, ["x", "h", "y"], _Stream(n))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert all(h.samples == n for h in hists.values())
    return peak


def test_memory_is_flat_in_the_number_of_samples():
    small, large = _peak(50), _peak(500)
    assert large < 1.3 * small + 64 * 1024  # 10x the samples, same peak
