"""Inside If/Loop/Scan bodies activation ranges are chosen as at the top level (calibration="auto":
per tensor, the method whose range costs least at the consumer's output), not by a fixed percentile.

The graph: an If on `cond` whose branches each hold a 1x1 Conv reading the outer input x. x is
N(0, 1) with one spike (+40) in channel 0 on a few samples (fewer than 0.01 % of its values), and
both Convs weigh channel 0 heavily - the BERT-class outlier-channel pattern of issue 16 inside a
branch. Percentile 99.99 clips the spike to ~4, and the Conv multiplies the clipped part by 3 on
every output channel; minmax keeps it at a coarser step, which costs far less there."""

from __future__ import annotations

import numpy as np
import onnx
from builders import run
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress import Context, Target
from onnxslim_compress.cli.main import kept_float_lines
from onnxslim_compress.jobs.compress import compress
from onnxslim_compress.passes.base import Pipeline
from onnxslim_compress.passes.quantize.quantize import Quantize

CPU1 = Target("cpu", threads=1)


def if_convs() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    inits, branches = [], []
    for k, name in enumerate(("then", "else")):
        w = (rng.standard_normal((8, 16, 1, 1)) * 0.2).astype(np.float32)
        w[:, 0] = 3.0 * (1 if k == 0 else -1)
        inits += [numpy_helper.from_array(w, f"w_{name}"), numpy_helper.from_array(np.zeros(8, np.float32), f"b_{name}")]
        branches.append(helper.make_graph(
            [helper.make_node("Conv", ["x", f"w_{name}", f"b_{name}"], [f"y_{name}"], name=f"conv_{name}")], name, [],
            [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, None)]))
    g = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], name="if0", then_branch=branches[0], else_branch=branches[1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 16]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def feeds(n: int = 16) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x = rng.standard_normal((1, 16, 16, 16)).astype(np.float32)
        if i % 4 == 0:
            x[0, 0, i % 16, 3] = 40.0
        out.append({"x": x, "cond": np.array(i % 2 == 0)})
    return out


def pearson(m: onnx.ModelProto, q: onnx.ModelProto, data) -> float:
    a = np.concatenate([run(m, f)[0].ravel() for f in data]).astype(np.float64)
    b = np.concatenate([run(q, f)[0].ravel() for f in data]).astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1])


def test_body_ranges_are_chosen_by_the_consumer_output_error_like_top_level_ones():
    m, data = if_convs(), feeds()
    pct = Quantize(mode="int8", calibration="percentile")(m, Context(target=CPU1, calib=data))
    auto = Quantize(mode="int8")(m, Context(target=CPU1, calib=data))
    assert pct.stats["body_quantized_units"] == 2 and auto.stats["body_quantized_units"] == 2
    p_pct, p_auto = pearson(m, pct.model, data), pearson(m, auto.model, data)
    print(f"body calibration: percentile pearson {p_pct:.4f}, auto {p_auto:.4f}")
    assert p_pct < 0.99 < p_auto  # the floor's default bound: percentile misses it, auto meets it
    assert auto.stats["body_calibration_choices"]["minmax"] == 1  # x, read by both branches' Convs (outputs: percentile)


def test_the_floor_keeps_body_units_float_when_only_they_miss_it():
    # percentile in the branches: pearson 0.725 with both body Convs int8, under the default floor.
    # The back-off used to rank top-level units only (none here), so every round was the same
    # model and the run exited 3; body units are ranked with them now and kept float, reported.
    m, data = if_convs(), feeds()
    res = compress(m, pipeline=Pipeline([Quantize(mode="int8", calibration="percentile")]), calib=data, target=CPU1)
    nh = res.report["no_harm"]
    assert nh["attempts"][0]["worst"]["pearson"] < 0.99 and not nh["attempts"][-1]["shortfalls"]
    st = res.report["passes"][0]["stats"]
    assert st["candidate_units"] == 2 and st["kept_float"] and st["body_quantized_units"] == 2 - len(st["kept_float"])
    assert pearson(m, res.model, data) >= 0.99
    lines = "\n".join(kept_float_lines(res.report))
    assert f"quantize: {st['body_quantized_units']} of 2 units quantized" in lines
    assert all(f"float: {n}: sensitive: output cosine" in lines for n in st["kept_float"])


def test_an_outer_tensor_read_by_both_branches_is_chosen_on_both_readers(monkeypatch):
    """x is read by the then- and the else-branch Conv: its one range (calibration auto) is chosen
    on both consumers' outputs, not on whichever body was planned last."""
    m, data = if_convs(), feeds()
    seen = []
    real = Quantize._act_params

    def spy(self, hists, groups, fmt, rows, consumers, stats):
        seen.append({t: len(mats) for t, (_, mats) in consumers.items()})
        return real(self, hists, groups, fmt, rows, consumers, stats)

    monkeypatch.setattr(Quantize, "_act_params", spy)
    res = Quantize(mode="int8")(m, Context(target=CPU1, calib=data))
    assert res.stats["body_quantized_units"] == 2
    body_call = next(c for c in seen if "x" in c)
    assert body_call["x"] == 2
