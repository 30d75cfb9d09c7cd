"""Lossless graph simplification through onnxslim (constant folding, dead code, shape-op cleanup).

Reusing onnxslim instead of writing constant folding: it is maintained and tested on thousands of
exported models. Its Conv+BN fusion is skipped by default so that `fold_batchnorm` reports what it
folded and pruning can still read BN scales; set keep_batchnorm=false to let onnxslim fuse them.
If onnxslim fails on a model (custom ops, odd subgraphs) the model is returned untouched and the
reason reported: simplification is an optimisation, never a reason to fail the run.

On an offloaded model (weights.py) onnxslim sees the offloaded weights as graph inputs of the same
type and shape, so it never reads them (it would load every weight, several times); they become
initializers again afterwards. Folding that would need a big weight's values is then not done.

Two onnxslim habits break "lossless" on real models, so they are fenced off here:
- it trusts the declared output shapes: an OCR model whose output was declared [1, T*C] while
  the graph computes [T, 1, C] had its final Reshape folded to the declared shape. The declared
  output shapes are cleared before onnxslim runs (it then writes what the graph computes);
- it folds `Cast(fp16 weight -> fp32)`, storing every weight of an fp16-weight model as fp32 (3.5
  -> 7.0 MB). Such fp16 weights are hidden from it like offloaded ones, and a result whose
  weights grew is not used.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import ModelProto

from onnxslim_compress.graph import weights
from onnxslim_compress.graph.index import op_counts, used_names
from onnxslim_compress.graph.io import clamp_ir_version
from onnxslim_compress.passes.base import Pass, PassResult, param

BN_FUSIONS = ["FusionConvBN", "FusionConvTransposeBN"]


@dataclass
class SimplifyParams:
    keep_batchnorm: bool = param(True, help="skip onnxslim's Conv+BN fusion (fold_batchnorm reports it; pruning reads BN scales)")
    constant_folding: bool = param(True, help="let onnxslim fold constant subgraphs")


class Simplify(Pass):
    name = "simplify"
    Params = SimplifyParams
    lossless = True

    def run(self, model: ModelProto, ctx) -> PassResult:
        import onnxslim  # lazy: onnxslim takes seconds to import, and only this pass needs it

        p: SimplifyParams = self.params
        before = op_counts(model)
        kwargs: dict = {}
        if p.keep_batchnorm:
            kwargs["skip_fusion_patterns"] = BN_FUSIONS
        if not p.constant_folding:
            kwargs["skip_optimizations"] = ["constant_folding"]
        outputs = [o.name for o in model.graph.output]
        declared = {o.name: onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in model.graph.output}
        work, defaults = _hide_defaults(model)
        work, hidden = _hide_offloaded(work)
        work, hidden16 = _hide_cast_weights(work)
        hidden = {**hidden, **hidden16}
        for o in work.graph.output:  # declared shapes are claims; onnxslim must infer, not trust them
            o.type.tensor_type.ClearField("shape")
        out = None
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                out = onnxslim.slim(work, **kwargs)
            if out is not None and hidden:
                _restore_hidden(out, hidden)
            if out is not None and defaults:
                _restore_defaults(out, defaults)
        except Exception as e:  # noqa: BLE001 - onnxslim raises anything; the model stays as it was
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            return PassResult(model, False, {"skipped": [{"node": "<graph>", "reason": f"onnxslim failed: {reason}"}]})
        finally:
            if work is model and out is not model:  # no copy was made: the input gets its declared outputs back
                for o in model.graph.output:
                    o.CopyFrom(declared[o.name])
        if out is None or [o.name for o in out.graph.output] != outputs:
            return PassResult(model, False, {"skipped": [{"node": "<graph>", "reason": "onnxslim changed the outputs"}]})
        for o in out.graph.output:  # onnxslim could infer no shape: the declared one is all there is
            if not o.type.tensor_type.HasField("shape") and declared[o.name].type.tensor_type.HasField("shape"):
                o.type.tensor_type.shape.CopyFrom(declared[o.name].type.tensor_type.shape)
        if _grew(_weight_bytes(model), _weight_bytes(out)):
            return PassResult(model, False, {"skipped": [{"node": "<graph>", "reason": "onnxslim grew the weights"}]})
        clamp_ir_version(out)
        _dedupe_value_info(out)
        after = op_counts(out)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))}
        delta = {k: v for k, v in delta.items() if v}
        n0, n1 = sum(before.values()), sum(after.values())
        return PassResult(out, n1 != n0 or bool(delta), {"nodes_before": n0, "nodes_after": n1, "op_delta": delta})


def _hide_defaults(model: ModelProto) -> tuple[ModelProto, dict[str, onnx.TensorProto]]:
    """(copy for onnxslim, defaults): initializers named like a graph input (IR >= 4: the input's
    default value) are taken out, so onnxslim sees a plain input. Left in, it folds them as
    constants and drops the input: the model then ignores a value the caller feeds."""
    names = {i.name for i in model.graph.input}
    defaults = {t.name: t for t in model.graph.initializer if t.name in names}
    if not defaults:
        return model, {}
    m = ModelProto()
    m.CopyFrom(model)
    keep = [t for t in m.graph.initializer if t.name not in defaults]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    return m, defaults


def _restore_defaults(out: ModelProto, defaults: dict[str, onnx.TensorProto]) -> None:
    """In place: the default values go back beside the inputs that are still there."""
    names = {i.name for i in out.graph.input}
    out.graph.initializer.extend(t for name, t in defaults.items() if name in names)


def _hide_offloaded(model: ModelProto) -> tuple[ModelProto, dict[str, onnx.TensorProto]]:
    """(model for onnxslim, hidden initializers): offloaded main-graph weights become graph inputs."""
    if not any(weights.is_offloaded(t) for t in model.graph.initializer):
        return model, {}
    return weights.as_inputs(model, subgraphs=False)


def _hide_cast_weights(model: ModelProto) -> tuple[ModelProto, dict[str, onnx.TensorProto]]:
    """(model for onnxslim, hidden initializers): fp16/bf16 main-graph weights read only through a
    Cast become graph inputs, so onnxslim cannot fold them to fp32 copies."""
    g = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    low = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    names = [t.name for t in g.initializer if t.data_type in low and readers.get(t.name)
             and all(n.op_type == "Cast" for n in readers[t.name])]
    if not names:
        return model, {}
    m = ModelProto()
    m.CopyFrom(model)
    keep = set(names)
    hidden = {t.name: t for t in m.graph.initializer if t.name in keep}
    rest = [t for t in m.graph.initializer if t.name not in keep]
    del m.graph.initializer[:]
    m.graph.initializer.extend(rest)
    m.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in hidden.values())
    return m, hidden


def _weight_bytes(model: ModelProto) -> int:
    """Bytes of the main graph's weights, initializers and Constant nodes alike (Paddle exports
    keep every weight in a Constant, which onnxslim turns into an initializer); offloaded ones by
    their recorded size."""
    tensors = list(model.graph.initializer)
    tensors += [n.attribute[0].t for n in model.graph.node
                if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"]
    total = 0
    for t in tensors:
        ti = weights.info(t)
        total += int(np.prod(ti.shape, dtype=np.int64)) * ti.dtype.itemsize
    return total


def _grew(before: int, after: int) -> bool:
    """Whether simplification really grew the weights: folding shape subgraphs adds small int64
    constants (MiniLM: +8 kB of 69 MB), folding fp16->fp32 Casts doubles them."""
    return after > before * 1.01 + 65536


def _restore_hidden(out: ModelProto, hidden: dict[str, onnx.TensorProto]) -> None:
    """In place: the hidden weights onnxslim left in use become initializers again; the rest go."""
    used = used_names(out.graph)
    inputs = [i for i in out.graph.input if i.name not in hidden]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    out.graph.initializer.extend(t for name, t in hidden.items() if name in used)


def _dedupe_value_info(model: ModelProto) -> int:
    """onnxslim can write several value_info entries per tensor (YOLOv8n: 1327 for 332 names); keep
    the first of each so the file does not grow from a lossless pass."""
    seen: set[str] = set()
    keep = []
    for vi in model.graph.value_info:
        if vi.name not in seen:
            seen.add(vi.name)
            keep.append(vi)
    removed = len(model.graph.value_info) - len(keep)
    if removed:
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)
    return removed
