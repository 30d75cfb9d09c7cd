"""fp16 conversion for the CUDA EP, which does not run QDQ as int8 (docs/ARCHITECTURE.md "Runtime facts").

Not a pass of its own: this is `quantize`'s `mode: fp16` (`--quantize fp16`), and what quantize
switches to for int8/fp8 on the CUDA EP; REGISTRY therefore has no `to_fp16`.

Graph inputs and outputs stay fp32 (Casts at the edges) so callers keep their feeds. Numerically
sensitive ops (reductions, normalizations, exp/log/pow, softmax) stay fp32, and so does any node
with a constant that fp16 cannot hold: one that overflows (|w| > 65504) or loses more than
CONST_REL_ERROR of its norm in fp16 (an epsilon of 1e-12 would become 0). One tiny subnormal value
among ordinary trained weights is no reason to keep a layer fp32: rejecting those (the old rule)
kept every weight of real models fp32, so fp16 never shrank them. Whether the converted model still
computes the same is measured on data by compress's fidelity floor, not guessed per value here.
Ops in neither table stay fp32 and are reported: an unknown op is never assumed to be safe in half
precision. Nodes are told apart by position (exported graphs often leave names empty), and a
`Cast(fp16 -> fp32)` of an fp16 weight (fp16-weight models) is read through: an fp16 node takes the
fp16 tensor itself.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim_compress.graph import weights
from onnxslim_compress.graph.index import Constants, drop_unused_initializers, subgraph_inputs
from onnxslim_compress.graph.shapes import bind_input_shapes
from onnxslim_compress.passes.quantize.calibration import synthetic_feeds
from onnxslim_compress.runtime.activations import iterate_tensors

#: ops with fp16 kernels whose accuracy is fine in half precision
FP16_OK = {
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu",
    "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip", "Erf", "Gelu", "Neg", "Abs", "Max", "Min",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "Concat",
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Gather", "Expand",
    "Tile", "Pad", "Resize", "Upsample", "Identity", "Dropout", "DepthToSpace", "SpaceToDepth", "Where",
}
#: kept fp32: accumulate many terms or have a narrow/overflowing range in fp16
FP32_SENSITIVE = {
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "ReduceMean", "ReduceSum",
    "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Pow", "Sqrt", "Reciprocal", "Exp", "Log",
    "Softmax", "LogSoftmax", "TopK", "NonMaxSuppression", "CumSum", "Range", "Einsum",
}
#: read any precision, so they never need a Cast in front
NEUTRAL = {"Cast", "Shape", "Size", "CastLike"}
#: inputs that follow the node's precision (others, like Resize scales, keep their own type)
FOLLOW = {"Resize": {0}, "Upsample": {0}, "Clip": {0, 1, 2}, "Pad": {0, 2}, "Where": {1, 2}}
_FP16_MAX = 65504.0
#: a constant is kept fp32 when fp16 rounding moves it by more than this relative L2 error
CONST_REL_ERROR = 1e-3


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of fp32 tensors, from onnx type inference, else from one ORT run on generated inputs."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            types[n.output[0]] = n.attribute[0].t.data_type
    missing = [o for n in g.node for o in n.output if o and not types.get(o)]
    if missing:
        feeds = synthetic_feeds(model, bind_input_shapes(model).inputs, 1)
        for vals in iterate_tensors(model, missing, feeds):
            types.update({k: TensorProto.FLOAT if v.dtype == np.float32 else -1 for k, v in vals.items()})
    return {k for k, v in types.items() if v == TensorProto.FLOAT}


def const_fits_fp16(arr: np.ndarray) -> bool:
    """Whether fp16 holds the constant: no overflow, and the rounding error (underflow of tiny
    values included) is small against the tensor's norm."""
    flat = np.asarray(arr, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        return True
    if not np.all(np.isfinite(flat)) or np.abs(flat).max() > _FP16_MAX:
        return False
    norm = np.linalg.norm(flat)
    if norm == 0:
        return True
    return float(np.linalg.norm(flat.astype(np.float16).astype(np.float64) - flat) / norm) <= CONST_REL_ERROR


def _cast_to(n: onnx.NodeProto) -> int | None:
    return next((a.i for a in n.attribute if a.name == "to"), None)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of initializers, graph inputs and Constant outputs (enough for weight Casts)."""
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in g.input}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant" and n.output and n.attribute and n.attribute[0].name == "value":
            types[n.output[0]] = n.attribute[0].t.data_type
    return types


def convert_fp16(model: onnx.ModelProto, keep_io_fp32: bool = True) -> tuple[onnx.ModelProto, dict]:
    """A new model computing in fp16 where safe; returns (model, stats)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    is_float = _float_tensors(m)
    consts = Constants(g)
    ws = weights.Workspace.of(m)
    outputs = {o.name for o in g.output}

    # If/Loop/Scan bodies read outer tensors by name with the types they had: keep those fp32
    captured = subgraph_inputs(g)
    half: set[int] = set()  # positions of the nodes computing in fp16
    kept: list[dict] = []
    # fp32 tensor -> the fp16 tensor it is a Cast of (fp16-weight models cast each weight up)
    elem = _elem_types(m)
    cast_of16 = {n.output[0]: n.input[0] for n in g.node
                 if n.op_type == "Cast" and _cast_to(n) == TensorProto.FLOAT and elem.get(n.input[0]) == TensorProto.FLOAT16}
    for k, n in enumerate(g.node):
        if n.op_type in FP16_OK:
            bad = [t for t in n.input if t in consts and t in is_float and not const_fits_fp16(consts[t])]
            if bad:
                kept.append({"node": n.name or f"#{k} {n.op_type}", "reason": f"constant {bad[0]} does not fit fp16 (overflow or > {CONST_REL_ERROR:g} rounding error)"})
            else:
                half.add(k)
        elif n.op_type in FP32_SENSITIVE:
            kept.append({"node": n.name or f"#{k} {n.op_type}", "reason": "numerically sensitive op kept fp32"})
        elif n.op_type not in NEUTRAL and n.op_type != "Constant":
            kept.append({"node": n.name or f"#{k} {n.op_type}", "reason": f"no fp16 rule for {n.op_type}: kept fp32"})
    v16: dict[str, str] = {}  # fp16 name of a float tensor
    v32: dict[str, str] = {t: t for t in is_float}  # fp32 name of a float tensor
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[TensorProto] = []
    casts = 0

    def get16(t: str) -> str:
        nonlocal casts
        if t not in v16:
            if t in cast_of16:
                v16[t] = cast_of16[t]
            elif t in consts:
                v16[t] = f"{t}__fp16"
                new_inits.append(weights.new_tensor(consts[t].astype(np.float16), v16[t], ws))
            else:
                v16[t] = f"{t}__to_fp16"
                new_nodes.append(helper.make_node("Cast", [v32[t]], [v16[t]], to=TensorProto.FLOAT16, name=v16[t]))
                casts += 1
        return v16[t]

    def get32(t: str) -> str:
        nonlocal casts
        if t not in v32 or v32[t] is None:
            v32[t] = f"{t}__to_fp32"
            new_nodes.append(helper.make_node("Cast", [v16[t]], [v32[t]], to=TensorProto.FLOAT, name=v32[t]))
            casts += 1
        return v32[t]

    for k, n in enumerate(g.node):
        if n.op_type == "Constant":
            new_nodes.append(n)
            continue
        fp16 = k in half
        follow = FOLLOW.get(n.op_type)
        for i, t in enumerate(n.input):
            if not t or t not in is_float:
                continue
            if n.op_type in NEUTRAL:
                n.input[i] = v32[t] if v32.get(t) else v16[t]
            elif fp16 and (follow is None or i in follow):
                n.input[i] = get16(t)
            else:
                n.input[i] = get32(t)
        if fp16:
            for i, o in enumerate(n.output):
                if o in is_float:
                    name = f"{o}__fp16" if ((o in outputs and keep_io_fp32) or o in captured) else o
                    n.output[i] = name
                    v16[o], v32[o] = name, None
        new_nodes.append(n)
        for o in [o for o in n.output if o.endswith("__fp16")]:  # a captured fp16 result gets its fp32 name back now
            src = o[: -len("__fp16")]
            if src in captured and v16.get(src) == o:
                new_nodes.append(helper.make_node("Cast", [o], [src], to=TensorProto.FLOAT, name=f"{src}__capture_cast"))
                v32[src] = src
                casts += 1
    for o in g.output:  # graph outputs produced in fp16 get a Cast back under their own name
        if o.name in v16 and v32.get(o.name) is None and keep_io_fp32:
            new_nodes.append(helper.make_node("Cast", [v16[o.name]], [o.name], to=TensorProto.FLOAT, name=f"{o.name}__out_cast"))
            casts += 1
    used = {t for n in new_nodes for t in n.input} | captured | outputs
    # the weight Casts that every consumer now reads through are dead, and so are Constant nodes
    # (Paddle exports keep weights there) whose every reader now takes the fp16 copy
    new_nodes = [n for n in new_nodes if not (n.output[0] not in used and (
        (n.op_type == "Cast" and n.output[0] in cast_of16) or n.op_type == "Constant"))]
    del g.node[:]
    g.node.extend(new_nodes)
    drop_unused_initializers(g)
    g.initializer.extend(new_inits)
    del g.value_info[:]
    return m, {"fp16_nodes": len(half), "fp32_nodes": len(kept), "casts": casts, "kept_fp32": kept}
