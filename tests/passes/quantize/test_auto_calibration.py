"""calibration="auto": per tensor, the range method with the lowest error at the consumer's output."""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress import Context, Target
from onnxslim_compress.passes.quantize import calibration as cal
from onnxslim_compress.passes.quantize.quantize import Quantize
from onnxslim_compress.runtime.session import make_session

CPU1 = Target("cpu", threads=1)


def _t(name: str, *shape: int, s: float = 0.2) -> onnx.TensorProto:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)


def outlier_net() -> onnx.ModelProto:
    """x [1, 8, 32, 32] -> conv1 3x3 -> relu -> conv2 1x1 -> y."""
    i = [_t("w1", 16, 8, 3, 3), _t("b1", 16), _t("w2", 8, 16, 1, 1), _t("b2", 8)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32])], i)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m


def _feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Normal inputs; channel 3 carries a value of 40 at one position of every other sample (0.006 %
    of the values: percentile 99.99 clips them, and conv1 reads channel 3 with ordinary weights)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        x = rng.standard_normal((1, 8, 32, 32)).astype(np.float32)
        if k % 2 == 0:
            x[0, 3, rng.integers(32), rng.integers(32)] = 40.0
        out.append({"x": x})
    return out


def _rel_err(m: onnx.ModelProto, q: onnx.ModelProto, feeds) -> float:
    a, b = make_session(m, CPU1), make_session(q, CPU1)
    num = sum(float(np.square(a.run(None, f)[0] - b.run(None, f)[0]).sum()) for f in feeds)
    den = sum(float(np.square(a.run(None, f)[0]).sum()) for f in feeds)
    return (num / den) ** 0.5


@pytest.fixture(scope="module")
def results():
    m, calib, ev = outlier_net(), _feeds(32, 0), _feeds(16, 7)
    out = {}
    for method in ("auto", "minmax", "percentile", "entropy", "mse"):
        res = Quantize(calibration=method, bias_correction=False)(m, Context(target=CPU1, calib=calib))
        out[method] = (res.stats, _rel_err(m, res.model, ev))
    return out


def test_auto_keeps_minmax_for_the_outlier_input_and_beats_every_single_method(results):
    st, err = results["auto"]
    assert st["calibration"] == "auto"
    # percentile (and entropy) would clip the 40s conv1 reads; auto keeps a range that holds them
    picks = {r["tensor"]: r for r in st["calibration_picks"]}
    assert picks["x"]["method"] in ("minmax", "mse")
    assert picks["x"]["range"][1] >= 0.9 * 40.0
    # x and r1 (conv1's output Q moved past the Relu) are read by a conv; y (QLinearConv's output) by nothing
    assert st["calibration_choices"]["percentile (no weighted consumer)"] == 1
    assert set(picks) == {"x", "r1"}
    singles = {m: e for m, (_, e) in results.items() if m != "auto"}
    assert singles["percentile"] > 1.5 * singles["minmax"]  # the clipping is what costs here
    assert err <= min(singles.values()) * 1.0001


def test_choose_range_scores_are_the_consumer_output_error():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 4)).astype(np.float32)
    x[:4, 1] = 50.0  # 0.25 % of the values: an outlier channel
    h = cal.Histogram()
    h.update(x)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    method, (lo, hi), scores = cal.choose_range(h, x, [w], symmetric=False, percentile=99.0)
    for m, e in scores.items():
        a, b = cal.compute_range(h, m, symmetric=False, percentile=99.0)
        assert e == pytest.approx(float(np.square((cal.fake_quant(x, a, b, False) - x) @ w).sum()), rel=1e-6)
    assert method == min(scores, key=scores.get) and hi == pytest.approx(50.0, rel=0.01)
