"""Static shapes for analysis: bind dynamic dims, infer, and fall back when onnx's inference fails.

Pruning groups, MAC counts and factorization all need a concrete channel count on every tensor.
Exporters leave symbolic dims (batch, sequence) and onnx's shape inference gives up on some real
models, so this module tries onnx first and, failing that, hands the model to a `ShapeRunner` that
runs it once and reads the shapes off the actual tensors (runtime.session.shapes_from_run: the graph
layer does not import the runtime, so callers that may run the model pass it in).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim_compress.errors import BadInputError

ShapeMap = dict[str, list[int]]
#: (model with static inputs, input shapes, tensor names) -> the shapes of those tensors, read off a run
ShapeRunner = Callable[[onnx.ModelProto, ShapeMap, list[str]], ShapeMap]

log = logging.getLogger("onnxslim_compress")
#: notes already written this process: each unbound-dims note is said once, not per pass
_SAID: set[str] = set()


def parse_input_shapes(specs: list[str] | None) -> ShapeMap:
    """`name:1x3x224x224` (repeatable) -> {"name": [1, 3, 224, 224]}."""
    out: ShapeMap = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        if not sep or not name:
            raise BadInputError(f"--input-shape {spec!r}: expected NAME:1x3x224x224")
        try:
            shape = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise BadInputError(f"--input-shape {spec!r}: dims must be integers separated by 'x'") from None
        if any(d <= 0 for d in shape):
            raise BadInputError(f"--input-shape {spec!r}: dims must be positive")
        out[name] = shape
    return out


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def dims_of(vi: onnx.ValueInfoProto) -> list[int | str]:
    """Dims of a value info: ints where known, the symbol (or '?') where not."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


@dataclass
class BoundShapes:
    """Result of binding: concrete input shapes plus notes on what was assumed."""

    inputs: ShapeMap
    #: dims no evidence bound, counted as default_dim: "name[k] (symbol) = 1"
    assumed: list[str] = field(default_factory=list)
    #: dims bound from the model's metadata (e.g. ultralytics `imgsz`)
    from_metadata: list[str] = field(default_factory=list)


def _is_static(d: int | str) -> bool:
    return isinstance(d, int) and d > 0


def shapes_from_metadata(model: onnx.ModelProto) -> ShapeMap:
    """Input shapes the model's own metadata states: ultralytics exports write `imgsz` ("[640, 640]")
    and leave H/W dynamic, so an image input [N, C, H, W] (or NHWC) with dynamic H/W takes it, batch
    1. Only dynamic dims are filled; a model without such metadata gives {}."""
    meta = {p.key: p.value for p in model.metadata_props}
    raw = meta.get("imgsz")
    if not raw:
        return {}
    nums = [int(v) for v in re.findall(r"\d+", raw)]
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) <= 0:
        return {}
    h, w = nums
    out: ShapeMap = {}
    for vi in graph_inputs(model):
        dims = dims_of(vi)
        if len(dims) != 4:
            continue
        if _is_static(dims[1]) and dims[1] in (1, 3, 4):
            spatial = (2, 3)
        elif _is_static(dims[3]) and dims[3] in (1, 3, 4):
            spatial = (1, 2)
        else:
            continue
        if all(_is_static(dims[k]) for k in spatial):
            continue
        shape = [d if _is_static(d) else 1 for d in dims]
        for k, v in zip(spatial, (h, w), strict=True):
            if not _is_static(dims[k]):
                shape[k] = v
        out[vi.name] = shape
    return out


def shapes_from_feed(model: onnx.ModelProto, feed: dict[str, np.ndarray] | None) -> ShapeMap:
    """Shapes of the inputs with dynamic dims, read off one sample of real data (calibration/eval):
    the best evidence of the sizes the model will run at."""
    out: ShapeMap = {}
    if not feed:
        return out
    for vi in graph_inputs(model):
        dims = dims_of(vi)
        if vi.name not in feed or all(_is_static(d) for d in dims):
            continue
        shape = list(np.shape(feed[vi.name]))
        if dims and len(shape) == len(dims):
            out[vi.name] = [int(v) for v in shape]
    return out


def _example(name: str, dims: list[int | str]) -> str:
    """`name:1x3xHxW`: static dims as they are, a short symbol upper-cased, anything else N."""

    def one(d: int | str) -> str:
        if _is_static(d):
            return str(d)
        return d.upper() if isinstance(d, str) and d.isidentifier() and len(d) <= 8 else "N"

    return f"{name}:" + "x".join(one(d) for d in dims)


def bind_input_shapes(
    model: onnx.ModelProto, given: ShapeMap | None = None, default_dim: int = 1, *, metadata: bool = True,
    quiet: bool = False,
) -> BoundShapes:
    """Concrete shapes for every graph input: user-given (or bound from data by the caller), else
    static, else the model's metadata (`imgsz`), else dynamic dims -> default_dim. The last case is
    a guess that changes MAC counts and pruning groups, so it is said once on stderr unless quiet."""
    given = dict(given or {})
    names = {i.name for i in graph_inputs(model)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise BadInputError(f"--input-shape names {unknown[0]!r}, which is not a model input (inputs: {sorted(names)})")
    meta = shapes_from_metadata(model) if metadata else {}
    res = BoundShapes(inputs={})
    hints = []
    for vi in graph_inputs(model):
        dims = dims_of(vi)
        if vi.name in given:
            shape = given[vi.name]
            if dims and len(dims) != len(shape):
                raise BadInputError(
                    f"--input-shape {vi.name}: rank {len(shape)} given, the model expects rank {len(dims)} {dims}"
                )
            for d, g in zip(dims, shape, strict=False):
                if isinstance(d, int) and d > 0 and d != g:
                    raise BadInputError(f"--input-shape {vi.name}: dim {g} given where the model fixes {d}")
            res.inputs[vi.name] = list(shape)
            continue
        shape = []
        for k, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif vi.name in meta:
                shape.append(meta[vi.name][k])
                res.from_metadata.append(f"{vi.name}[{k}] ({d}) = {meta[vi.name][k]}")
            else:
                shape.append(default_dim)
                res.assumed.append(f"{vi.name}[{k}] ({d}) = {default_dim}")
        if any(a.startswith(f"{vi.name}[") for a in res.assumed):
            hints.append(_example(vi.name, dims))
        res.inputs[vi.name] = shape
    if res.assumed and not quiet:
        say_once(f"dynamic dims not bound by data, metadata or --input-shape count as {default_dim}: "
                 f"{', '.join(res.assumed)}; bind them with --input-shape {' --input-shape '.join(hints)}")
    return res


def say_once(msg: str) -> None:
    """A note on stderr (the package logger), at most once per process per message."""
    if msg in _SAID:
        return
    _SAID.add(msg)
    log.warning("onnxslim-compress: note: %s", msg)


def with_static_inputs(model: onnx.ModelProto, shapes: ShapeMap) -> onnx.ModelProto:
    """A copy whose graph inputs carry the given static shapes (value_info of intermediates cleared)."""
    m = copy.deepcopy(model)
    for vi in m.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = int(d)
    del m.graph.value_info[:]
    return m


#: float initializers above this many bytes reach onnx's shape inference as name, type and dims only
_LIGHT_BYTES = 1 << 16
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def without_big_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for shape inference in which big float weights keep name, type and dims but no bytes.

    Shape inference reads constant values only for shape-like inputs (small integer tensors), but
    onnx serializes the whole proto to run it: on a 2 GB model a plain copy cost three extra copies
    of the weights (BENCHMARKS.md "Robustness").
    """
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    g, src = m.graph, model.graph
    g.name = src.name
    for f in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(g, f).extend(getattr(src, f))
    for t in src.initializer:
        if t.data_type in _FLOATS and (t.data_location == TensorProto.EXTERNAL or t.ByteSize() > _LIGHT_BYTES):
            g.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
        else:
            g.initializer.append(t)
    return m


def infer_shapes(model: onnx.ModelProto, given: ShapeMap | None = None, *, runner: ShapeRunner | None = None) -> tuple[
    ShapeMap, BoundShapes, str
]:
    """Static shape of every tensor of the main graph: (shapes, bound inputs, method used).

    The input model is not changed. Method is "onnx" when onnx's inference gave a full answer,
    "onnxruntime" when the shapes were read off one run of `runner` (runtime.session.shapes_from_run),
    "partial" when neither was complete (or no runner was given).
    """
    bound = bind_input_shapes(model, given)
    m = with_static_inputs(without_big_weights(model), bound.inputs)
    shapes: ShapeMap = {}
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
        for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
            d = dims_of(vi)
            static = bool(d) and all(isinstance(x, int) and x >= 0 for x in d)
            scalar = vi.type.tensor_type.HasField("shape") and not d
            if static or scalar:
                shapes.setdefault(vi.name, [int(x) for x in d])
    except Exception:  # noqa: BLE001 - onnx raises several types; the fallback covers all of them
        pass
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = list(a.t.dims)
    needed = {o for n in m.graph.node for o in n.output if o}
    missing = needed - set(shapes)
    if not missing:
        return shapes, bound, "onnx"
    if runner is not None:
        try:
            shapes.update(runner(with_static_inputs(model, bound.inputs), bound.inputs, sorted(missing)))
            return shapes, bound, "onnxruntime"
        except Exception:  # noqa: BLE001 - the model may not run with generated inputs; partial is fine
            pass
    return shapes, bound, "partial"


def elem_type_to_numpy(elem_type: int):
    return helper.tensor_dtype_to_np_dtype(elem_type) if elem_type != TensorProto.UNDEFINED else np.float32
