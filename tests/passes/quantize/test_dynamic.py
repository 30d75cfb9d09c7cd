"""Dynamic MatMul units (activations=auto/dynamic) on a generated SDPA-mask encoder block."""

from __future__ import annotations

import numpy as np
import pytest
from encoder import encoder_block, encoder_feeds

from onnxslim_compress import Context, Target
from onnxslim_compress.passes.quantize.quantize import Quantize
from onnxslim_compress.runtime.session import make_session

CPU1 = Target("cpu", threads=1)


def _outputs(model, feeds):
    s = make_session(model, CPU1)
    return [s.run(None, f)[0] for f in feeds]


def _mean_cos(ref, got) -> float:
    return float(np.mean([np.ravel(a).astype(np.float64) @ np.ravel(b) / np.linalg.norm(a) / np.linalg.norm(b)
                          for a, b in zip(ref, got, strict=True)]))


@pytest.fixture(scope="module")
def block():
    m = encoder_block()
    ev = encoder_feeds(16, seed=5)
    return m, encoder_feeds(32), ev, _outputs(m, ev)


def test_auto_runs_the_weight_matmuls_dynamic_and_keeps_the_mask_paths_float(block):
    m, calib, ev, ref = block
    res = Quantize()(m, Context(target=CPU1, calib=calib))
    st = res.stats
    assert st["activations"] == "auto" and st["dynamic_units"] == 6  # q, k, v, o, ffn1, ffn2
    # ORT fused every unit into its dynamic integer kernels (and nothing else is integer)
    assert st["integer_kernels_by_op"] == {"MatMulIntegerToFloat": 3, "DynamicQuantizeMatMul": 3}
    ops = [n.op_type for n in res.model.graph.node]
    assert "QuantizeLinear" not in ops  # no static Q on the LayerNorm / Softmax / mask paths
    assert ops.count("DynamicQuantizeLinear") == 4  # q/k/v share one; o, ffn1, ffn2
    assert ops.count("MatMul") == 2  # the two activation x activation MatMuls stay float
    for name in ("mask_cast", "mask_expand", "mask_mul", "mask_isnan", "mask_where", "softmax", "ln1", "ln2"):
        assert name in {n.name for n in res.model.graph.node}
    cos_auto = _mean_cos(ref, _outputs(res.model, ev))
    static = Quantize(activations="static")(m, Context(target=CPU1, calib=calib))
    cos_static = _mean_cos(ref, _outputs(static.model, ev))
    # measured: auto 0.9966, static percentile 0.9926 (the outlier channel costs the static ranges)
    assert cos_auto >= 0.995
    assert cos_auto > cos_static


def test_dynamic_is_orts_structure_and_static_keeps_the_old_placement(block):
    m, calib, ev, ref = block
    dyn = Quantize(activations="dynamic")(m, Context(target=CPU1, calib=calib))
    assert dyn.stats["dynamic_units"] == 6 and dyn.stats["quantized_units"] == 6
    static = Quantize(activations="static")(m, Context(target=CPU1, calib=calib))
    assert static.stats["dynamic_units"] == 0
    assert "QLinearMatMul" in static.stats["integer_kernels_by_op"]
    assert "DynamicQuantizeLinear" not in {n.op_type for n in static.model.graph.node}


def test_dynamic_per_channel_weight_scales_are_per_column(block):
    m, calib, _, _ = block
    res = Quantize(activations="dynamic")(m, Context(target=CPU1, calib=calib))
    inits = {t.name: t for t in res.model.graph.initializer}
    mmi = next(n for n in res.model.graph.node if n.op_type == "MatMulInteger" and n.name.startswith("ffn1"))
    assert list(inits[mmi.input[1]].dims) == [64, 128] and list(inits[mmi.input[3]].dims) == [128]
    pt = Quantize(activations="dynamic", per_channel=False)(m, Context(target=CPU1, calib=calib))
    inits = {t.name: t for t in pt.model.graph.initializer}
    mmi = next(n for n in pt.model.graph.node if n.op_type == "MatMulInteger" and n.name.startswith("ffn1"))
    assert list(inits[mmi.input[3]].dims) == []
