"""Low-rank factorization of Gemm, MatMul and Conv weights (SVD, TRP energy rule, ALDS, whitened SVD).

A weight W (out m x in n) becomes Dec @ Enc, two thinner ops, which saves work only when the rank r
is below m*n/(m+n). Ranks come from a rank fraction, the energy rule of TRP, or ALDS's global
allocation (minimize the worst relative error under a size budget). With calibration data the SVD is
whitened by the input Gram matrix, so the dropped directions are the ones the data barely excites
and the reported error is the output error, not the weight error. Formulas: onnxslim_compress/lowrank_math.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxslim_compress import lowrank_math as lm
from onnxslim_compress.activations import Moments, accumulate
from onnxslim_compress.context import fingerprint
from onnxslim_compress.errors import BadInputError
from onnxslim_compress.model_io import main_opset
from onnxslim_compress.pass_api import Pass, PassResult
from onnxslim_compress.shapes import infer_shapes

#: weight element types the SVD can round-trip (bfloat16/int weights are left alone)
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
#: largest ALDS group count tried (more groups = more SVDs for rarely useful, very thin groups)
_MAX_K = 16
#: calibration rows kept per sample and layer (a seeded subsample bounds the Gram cost on big maps)
_MAX_ROWS = 8192


@dataclass
class LowRankParams:
    mode: Literal["ratio", "energy", "alds"] = "energy"
    value: float = 0.9
    alds_measure: Literal["params", "macs"] = "params"
    conv_form: Literal["channel", "spatial", "auto"] = "channel"
    round_to: int = 1
    data_aware: bool | None = None
    calib_samples: int = 64
    ridge: float = 1e-6
    alds_seeds: int = 3
    min_params: int = 4096
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not 0.0 < self.value <= 1.0:
            raise ValueError(f"low_rank: value must be in (0, 1] for mode {self.mode}, got {self.value}")
        for key in ("round_to", "calib_samples", "alds_seeds"):
            if getattr(self, key) < 1:
                raise ValueError(f"low_rank: {key} must be >= 1")
        if self.ridge < 0 or self.min_params < 0:
            raise ValueError("low_rank: ridge and min_params must be >= 0")
        for rx in self.exclude:
            try:
                re.compile(rx)
            except re.error as e:
                raise ValueError(f"low_rank: exclude pattern {rx!r} is not a regex ({e})") from None


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    out = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = n.attribute[0].t
    return out


def find_layers(model: onnx.ModelProto, shapes: dict, p: LowRankParams) -> tuple[list[Layer], list[dict]]:
    """Gemm/MatMul with a constant 2-D weight and group=1 Conv; everything else is skipped with a reason."""
    consts, layers, skipped = _constants(model), [], []
    for node in model.graph.node:
        if node.op_type not in ("Gemm", "MatMul", "Conv"):
            continue
        name = node.name or node.output[0]

        def skip(reason: str, name: str = name) -> None:
            skipped.append({"node": name, "reason": reason})

        if any(re.search(rx, name) for rx in p.exclude):
            skip("excluded by pattern")
            continue
        a = _attrs(node)
        wname = node.input[0 if node.op_type == "MatMul" and node.input[0] in consts else 1]
        if node.op_type == "MatMul" and node.input[0] in consts:
            skip("constant is the left MatMul operand")
            continue
        if wname not in consts or node.input[0] in consts:
            skip("weight is not a constant" if wname not in consts else "both operands are constant")
            continue
        t = consts[wname]
        if t.data_type not in _FLOAT_TYPES:
            skip(f"weight type {onnx.TensorProto.DataType.Name(t.data_type)} not supported")
            continue
        w = numpy_helper.to_array(t)
        out_shape, in_shape = shapes.get(node.output[0]), shapes.get(node.input[0])
        if node.op_type == "Conv":
            if a.get("group", 1) != 1:
                skip(f"grouped Conv (group={a['group']})")
                continue
            nd = w.ndim - 2
            spec = ("patch", tuple(w.shape[2:]), tuple(a.get("strides", [1] * nd)), tuple(a.get("dilations", [1] * nd)),
                    tuple(a.get("pads", [0] * 2 * nd)), a.get("auto_pad", b"NOTSET").decode())
            rows = int(np.prod([out_shape[0]] + out_shape[2:])) if out_shape else None
            layer = Layer(node, w.reshape(w.shape[0], -1).astype(np.float64), w.dtype, node.input[0], spec, rows,
                          len(in_shape) if in_shape else None, in_shape[2:] if in_shape else None)
        else:
            if w.ndim != 2:
                skip(f"weight has rank {w.ndim}, not 2")
                continue
            trans_a, trans_b = a.get("transA", 0), a.get("transB", 0)
            wt = w if trans_b else w.T  # (out, in)
            axis = (0 if trans_a else 1) if node.op_type == "Gemm" else -1
            rows = int(np.prod(out_shape[:-1])) if out_shape else None
            layer = Layer(node, wt.astype(np.float64), w.dtype, node.input[0], ("axis", axis), rows,
                          len(in_shape) if in_shape else None)
        if layer.w.size < p.min_params:
            skip(f"small layer: {layer.w.size} params < min_params={p.min_params}")
            continue
        layers.append(layer)
    return layers, skipped


def collect_grams(model: onnx.ModelProto, layers: list[Layer], ctx: Any, p: LowRankParams) -> dict[tuple, np.ndarray]:
    """Stream the Gram matrix of every target layer's input rows (im2col patches for Conv)."""
    requests = sorted({(L.act, L.spec) for L in layers}, key=repr)
    rng = np.random.default_rng(ctx.seed)

    def compute() -> dict[tuple, np.ndarray]:
        moments = {r: Moments(axis=-1) for r in requests}

        def update(values: dict[str, np.ndarray]) -> None:
            for act, spec in requests:
                x = values[act]
                if spec[0] == "axis":
                    rows = np.moveaxis(x, spec[1], -1).reshape(-1, x.shape[spec[1]])
                else:
                    _, kernel, strides, dil, pads, auto = spec
                    pads = lm.conv_pads(list(x.shape[2:]), list(kernel), list(strides), list(dil), list(pads), auto)
                    rows = lm.patches(x, list(kernel), list(strides), list(dil), pads)
                if rows.shape[0] > _MAX_ROWS:
                    rows = rows[rng.choice(rows.shape[0], _MAX_ROWS, replace=False)]
                moments[(act, spec)].update(rows)

        accumulate(model, sorted({r[0] for r in requests}), ctx.calib, update, limit=p.calib_samples)
        return {r: m.xtx for r, m in moments.items() if m.xtx is not None}

    key = (fingerprint(model), "low_rank.gram", tuple(requests), p.calib_samples, id(ctx.calib), ctx.seed)
    return ctx.cache.get_or_compute(key, compute)


