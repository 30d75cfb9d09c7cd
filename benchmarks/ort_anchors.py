"""ONNX Runtime's own quantizers as the anchors every int8 benchmark compares against (shared by
bench_zoo.py and bench_quantize.py, so both measure the same thing).

  ort_static   (optionally quant_pre_process, then) quantize_static: QDQ, per-channel, U8S8
               (activations QUInt8, weights QInt8), MinMax, on the given calibration feeds;
  ort_dynamic  quantize_dynamic with its defaults (per-tensor int8 weights, MatMul/Gemm/Conv...).

Both get the same input: opset >= 13 (quantize_static writes per-axis DequantizeLinear, invalid
below 13) and Constant-node weights as initializers (quantize_dynamic skips or refuses them
otherwise). Known failures are worked around and recorded in `notes`; a failure that remains is
raised as SystemExit with one line naming the step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TOOLS = ("ort_static", "ort_dynamic")


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:240]


def ort_input(src: Path, tmp: Path, notes: list[str]) -> Path:
    """The anchors' input: opset >= 13 and Constant weights as initializers (a copy in `tmp`, or
    `src` itself when nothing needs changing)."""
    import onnx

    from onnxslim_compress.graph.io import clamp_ir_version, main_opset, upgrade_opset
    from onnxslim_compress.passes.quantize.placement import constants_to_initializers

    m = onnx.load(str(src))
    before = main_opset(m)
    m, changed = upgrade_opset(m, 13)
    n_const = sum(1 for n in m.graph.node if n.op_type == "Constant")
    if not changed and not n_const:
        return src
    if changed:
        notes.append(f"opset {before} -> 13 first (per-axis DequantizeLinear needs 13)")
    constants_to_initializers(m)
    clamp_ir_version(m)
    p = tmp / "ort_input.onnx"
    onnx.save(m, str(p))
    return p


def quantize(tool: str, src: Path, out: str, feeds: list[dict[str, np.ndarray]], tmp: Path, notes: list[str],
             pre_process: bool = True) -> None:
    """Write `tool`'s int8 model of `src` to `out` (see the module docstring)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    inp = ort_input(src, tmp, notes)
    if tool == "ort_dynamic":
        try:
            quantize_dynamic(str(inp), out)
        except Exception as e:  # noqa: BLE001 - say which step failed, in one line
            raise SystemExit(f"error: quantize_dynamic: {first_line(e)}") from None
        return
    if tool != "ort_static":
        raise ValueError(f"unknown ORT anchor {tool!r}")
    pre = inp
    if pre_process:
        pre = tmp / "pre.onnx"
        try:
            quant_pre_process(str(inp), str(pre))
        except Exception as e:  # noqa: BLE001 - ORT's symbolic shape inference fails on some graphs
            notes.append(f"quant_pre_process failed ({first_line(e)[:120]}); retried without symbolic shapes")
            try:
                quant_pre_process(str(inp), str(pre), skip_symbolic_shape=True)
            except Exception as e2:  # noqa: BLE001
                notes.append(f"quant_pre_process failed again ({first_line(e2)[:120]}); quantized unprocessed")
                pre = inp

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    try:
        quantize_static(str(pre), out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"error: quantize_static: {first_line(e)}") from None
