"""A generated BERT-class encoder block as today's torch.onnx.export (SDPA path, opset 17) writes it.

The attention mask is built the SDPA way (Cast, Unsqueeze, Expand, Sub, a float-min additive mask,
IsNaN + Where), and LayerNorm's scale has one large channel, so that a few tokens carry an outlier
activation (the pattern static percentile ranges clip on real sentence encoders).
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

D, T, H, FF = 64, 32, 4, 128


def _w(inits: list, name: str, *shape: int, s: float = 0.15) -> str:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    inits.append(numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name))
    return name


def _c(inits: list, name: str, value) -> str:
    inits.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def encoder_block() -> onnx.ModelProto:
    """x [1, T, D] float, attention_mask [1, T] int64 -> y [1, T, D]; one attention + FFN block."""
    i: list = []
    gamma = np.ones(D, np.float32)
    gamma[5] = 8.0  # the outlier channel of BERT-class LayerNorms
    i.append(numpy_helper.from_array(gamma, "ln1_g"))
    N = helper.make_node
    nodes = [
        N("LayerNormalization", ["x", "ln1_g", _w(i, "ln1_b", D, s=0.02)], ["h"], axis=-1, name="ln1"),
        # SDPA-style mask: (1 - mask) * float_min, NaN-guarded, broadcast over heads
        N("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT, name="mask_cast"),
        N("Unsqueeze", ["mf", _c(i, "ax12", np.array([1, 2], np.int64))], ["mu"], name="mask_unsq"),
        N("Expand", ["mu", _c(i, "mshape", np.array([1, 1, T, T], np.int64))], ["me"], name="mask_expand"),
        N("Sub", [_c(i, "one", np.float32(1.0)), "me"], ["minv"], name="mask_sub"),
        N("Mul", ["minv", _c(i, "fmin", np.float32(np.finfo(np.float32).min))], ["madd"], name="mask_mul"),
        N("IsNaN", ["madd"], ["mnan"], name="mask_isnan"),
        N("Where", ["mnan", _c(i, "zero", np.float32(0.0)), "madd"], ["mask"], name="mask_where"),
    ]
    heads = []
    for nm in ("q", "k", "v"):
        nodes += [
            N("MatMul", ["h", _w(i, f"w{nm}", D, D)], [f"{nm}0"], name=f"{nm}_proj"),
            N("Add", [f"{nm}0", _w(i, f"b{nm}", D, s=0.02)], [f"{nm}1"], name=f"{nm}_bias"),
            N("Reshape", [f"{nm}1", _c(i, f"{nm}_shape", np.array([1, T, H, D // H], np.int64))], [f"{nm}2"], name=f"{nm}_reshape"),
            N("Transpose", [f"{nm}2"], [f"{nm}3"], perm=[0, 2, 3, 1] if nm == "k" else [0, 2, 1, 3], name=f"{nm}_tr"),
        ]
        heads.append(f"{nm}3")
    nodes += [
        N("MatMul", ["q3", "k3"], ["s0"], name="scores"),
        N("Mul", ["s0", _c(i, "scale", np.float32(1 / np.sqrt(D // H)))], ["s1"], name="scores_scale"),
        N("Add", ["s1", "mask"], ["s2"], name="scores_mask"),
        N("Softmax", ["s2"], ["p"], axis=-1, name="softmax"),
        N("MatMul", ["p", "v3"], ["ctx0"], name="context"),
        N("Transpose", ["ctx0"], ["ctx1"], perm=[0, 2, 1, 3], name="ctx_tr"),
        N("Reshape", ["ctx1", _c(i, "ctx_shape", np.array([1, T, D], np.int64))], ["ctx2"], name="ctx_reshape"),
        N("MatMul", ["ctx2", _w(i, "wo", D, D)], ["o0"], name="o_proj"),
        N("Add", ["o0", _w(i, "bo", D, s=0.02)], ["o1"], name="o_bias"),
        N("Add", ["o1", "x"], ["r1"], name="residual1"),
        N("LayerNormalization", ["r1", _w(i, "ln2_g", D, s=0.05), _w(i, "ln2_b", D, s=0.02)], ["h2"], axis=-1, name="ln2"),
        N("MatMul", ["h2", _w(i, "w1", D, FF)], ["f0"], name="ffn1"),
        N("Add", ["f0", _w(i, "b1", FF, s=0.02)], ["f1"], name="ffn1_bias"),
        N("Div", ["f1", _c(i, "sqrt2", np.float32(np.sqrt(2.0)))], ["g0"], name="gelu_div"),
        N("Erf", ["g0"], ["g1"], name="gelu_erf"),
        N("Add", ["g1", "one"], ["g2"], name="gelu_add"),
        N("Mul", ["f1", "g2"], ["g3"], name="gelu_mul"),
        N("Mul", ["g3", _c(i, "half", np.float32(0.5))], ["g4"], name="gelu_half"),
        N("MatMul", ["g4", _w(i, "w2", FF, D)], ["f2"], name="ffn2"),
        N("Add", ["f2", _w(i, "b2", D, s=0.02)], ["f3"], name="ffn2_bias"),
        N("Add", ["f3", "r1"], ["y"], name="residual2"),
    ]
    i[:] = [t for k, t in enumerate(i) if t.name not in {u.name for u in i[:k]}]  # "one" is shared
    g = helper.make_graph(nodes, "encoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, D]),
                                             helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, T])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, D])], i)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def encoder_feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Token embeddings with padding masks of varying length; a few tokens (one per sentence, like
    BERT's separator) carry a large value in one channel."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.standard_normal((1, T, D)).astype(np.float32)
        x[0, 0, 5] += 12.0
        length = int(rng.integers(T // 2, T + 1))
        mask = np.zeros((1, T), np.int64)
        mask[0, :length] = 1
        out.append({"x": x, "attention_mask": mask})
    return out
