"""Specialize: bind graph inputs to constants and fold every If whose condition becomes constant.

Why: exporters put whole networks inside control flow (a voice-activity model keeps its network in
the two branches of an If chosen by the sample-rate input). When the deployment fixes that input,
the If is dead weight: binding the input, folding what depends only on it, and inlining the taken
branch leaves a flat graph every other pass understands. Folding is restricted to nodes that read a
fixed value (directly or through folded results), so nothing else in the graph changes.

Inlining keeps names unique (graph/index.py `uniquify_body_names` first), resolves the branch's
outer-scope references (they already name tensors of the parent scope), and maps the branch
outputs onto the If's outputs. Nested Ifs are folded in the same loop once their parent is inlined,
and inside bodies that stay (a Loop body whose If condition depends only on fixed inputs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph.index import (
    DEFAULT_DOMAINS,
    GraphIndex,
    graph_defs,
    has_subgraph,
    node_bodies,
    rename_tensors,
    subgraph_inputs,
    uniquify_body_names,
)
from onnxslim_compress.graph.shapes import dims_of, elem_type_to_numpy
from onnxslim_compress.passes.base import Flag, Pass, PassResult, param

#: folded results larger than this stay computed at run time (folding is for conditions and shapes)
MAX_FOLD_ELEMENTS = 1 << 16


def _scalar(text: str) -> Any:
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        raise BadInputError(f"--fix-input: {text!r} is not a number or true/false") from None


def parse_fix_inputs(values: list[str] | str) -> dict[str, Any]:
    """`--fix-input sr=16000 --fix-input mask=1,0,1` -> {fix_inputs: {sr: 16000, mask: [1, 0, 1]}}."""
    out: dict[str, Any] = {}
    for text in [values] if isinstance(values, str) else values:
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise BadInputError(f"--fix-input {text!r}: expected NAME=VALUE, e.g. sr=16000 or mask=1,0,1")
        parts = value.split(",")
        out[name] = _scalar(parts[0]) if len(parts) == 1 else [_scalar(v) for v in parts]
    return {"fix_inputs": out}


@dataclass
class SpecializeParams:
    fix_inputs: dict[str, Any] = param(
        default_factory=dict,
        help="graph inputs bound to constants ({name: scalar or list}); Ifs whose condition then is constant are inlined",
        flag=Flag("--fix-input", metavar="NAME=VALUE", enables=True, repeatable=True, parse=parse_fix_inputs,
                  help="bind an input to a constant (repeatable; VALUE a scalar or a comma list), fold the Ifs it decides"),
    )

    def __post_init__(self):
        for k, v in self.fix_inputs.items():
            vals = v if isinstance(v, list) else [v]
            if not isinstance(k, str) or not vals or not all(isinstance(x, (int, float, bool)) for x in vals):
                raise ValueError(f"fix_inputs[{k!r}]: expected a number, true/false or a list of them, got {v!r}")


def fixed_value(vi: onnx.ValueInfoProto, value: Any) -> np.ndarray:
    """The constant bound to input `vi`: its declared dtype; its declared shape when static (one
    value fills it), else a scalar for one value on a rank-0 input and a vector for a list."""
    dtype = elem_type_to_numpy(vi.type.tensor_type.elem_type)
    arr = np.asarray(value, dtype=dtype)
    has_shape = vi.type.tensor_type.HasField("shape")
    dims = dims_of(vi) if has_shape else None
    if dims is not None and all(isinstance(d, int) and d >= 0 for d in dims):
        n = int(np.prod(dims)) if dims else 1
        if arr.size == 1:
            return np.full(dims, arr.reshape(-1)[0], dtype=dtype)
        if arr.size != n:
            raise BadInputError(f"--fix-input {vi.name}: {arr.size} values for declared shape {dims}")
        return arr.reshape(dims)
    rank = None if dims is None else len(dims)
    if arr.ndim == 0 and rank in (None, 0):
        return arr
    if rank in (None, 1):
        return arr.reshape(-1)
    if arr.size == 1:
        return arr.reshape([1] * rank)
    raise BadInputError(f"--fix-input {vi.name}: input has rank {rank} with dynamic dims; give one value")


def with_fixed(data: Iterable[dict[str, np.ndarray]], fixed: dict[str, np.ndarray]) -> Iterable[dict[str, np.ndarray]]:
    """A re-iterable data set whose feeds carry the fixed values (to run the unspecialized model
    on the same inputs as the specialized one, for fidelity)."""
    return _Fixed(data, fixed)


class _Fixed:
    def __init__(self, data: Iterable[dict[str, np.ndarray]], fixed: dict[str, np.ndarray]):
        self.data, self.fixed = data, fixed

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for feed in self.data:
            yield {**feed, **self.fixed}


class _Scope:
    """Constants visible in one graph: its own (initializers, Constant nodes) and its ancestors'."""

    def __init__(self, graph: onnx.GraphProto, parent: _Scope | None, fixed: dict[str, np.ndarray]):
        self.graph, self.parent, self.fixed = graph, parent, fixed
        self.index = GraphIndex(graph)
        self.defs = set(graph_defs(graph))

    def value(self, name: str) -> np.ndarray | None:
        if name in self.fixed:
            return self.fixed[name]
        v = self.index.constant(name)
        if v is not None:
            return v
        if name in self.defs:
            return None  # defined here at run time: shadows nothing further out
        return self.parent.value(name) if self.parent is not None else None


def _evaluate(node: onnx.NodeProto, values: list[np.ndarray | None], opsets: list) -> list[np.ndarray] | None:
    """Run one node on constant inputs with onnx's reference evaluator (None if it cannot)."""
    ins, feed = [], {}
    for name, v in zip(node.input, values, strict=True):
        if name:
            ins.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape))
            feed[name] = v
    outs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    g = helper.make_graph([node], "fold", ins, outs)
    try:
        res = ReferenceEvaluator(helper.make_model(g, opset_imports=opsets)).run(None, feed)
    except Exception:  # noqa: BLE001 - an op the evaluator lacks just stays in the graph
        return None
    return [np.asarray(r) for r in res]


class Specialize(Pass):
    """Bind inputs to constants, fold what they decide, inline constant-condition Ifs (module docstring)."""

    name = "specialize"
    Params = SpecializeParams
    in_place = True

    def run(self, model: onnx.ModelProto, ctx) -> PassResult:
        p: SpecializeParams = self.params
        g = model.graph
        inputs = {i.name: i for i in g.input}
        fixed: dict[str, np.ndarray] = {}
        for name, value in p.fix_inputs.items():
            if name not in inputs:
                raise BadInputError(f"--fix-input {name}: no such graph input (inputs: {', '.join(inputs)})")
            fixed[name] = fixed_value(inputs[name], value)
        if not fixed:
            return PassResult(model, False, {"fixed": {}})
        keep = [i for i in g.input if i.name not in fixed]
        del g.input[:]
        g.input.extend(keep)
        old = [t for t in g.initializer if t.name not in fixed]  # an initializer-as-input default is replaced
        del g.initializer[:]
        g.initializer.extend(old + [numpy_helper.from_array(v, k) for k, v in fixed.items()])
        renamed = uniquify_body_names(g)
        stats: dict[str, Any] = {
            "fixed": {k: {"value": v.tolist(), "dtype": str(v.dtype), "shape": list(v.shape)} for k, v in fixed.items()},
            "ifs_folded": [], "constants_folded": 0, "body_tensors_renamed": renamed,
        }
        created = set(fixed)
        self._fold(g, None, dict(fixed), list(model.opset_import), "", stats, created)
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output} | subgraph_inputs(g)
        dead = created - used
        kept_inits = [t for t in g.initializer if t.name not in dead]
        del g.initializer[:]
        g.initializer.extend(kept_inits)
        stats["branches_dropped"] = [f"{r['node']}/{r['dropped']}" for r in stats["ifs_folded"]]
        return PassResult(model, True, stats)

    def _fold(self, graph: onnx.GraphProto, parent: _Scope | None, tainted: dict[str, np.ndarray], opsets: list,
              prefix: str, stats: dict, created: set[str]) -> None:
        """Fold nodes that read fixed values, inline constant-condition Ifs; repeat until stable; then bodies."""
        changed = True
        while changed:
            changed = False
            scope = _Scope(graph, parent, tainted)
            for pos, node in enumerate(graph.node):
                if node.op_type == "If" and node.domain in DEFAULT_DOMAINS:
                    cond = scope.value(node.input[0])
                    if cond is not None and cond.size == 1:
                        self._inline(graph, pos, node, bool(cond.reshape(-1)[0]), prefix, stats)
                        changed = True
                        break
                    continue
                if has_subgraph(node) or node.domain not in DEFAULT_DOMAINS or not any(i in tainted for i in node.input):
                    continue
                values = [scope.value(i) if i else None for i in node.input]
                if any(v is None for i, v in zip(node.input, values, strict=True) if i):
                    continue
                res = _evaluate(node, values, opsets)
                if res is None or any(r.size > MAX_FOLD_ELEMENTS for r in res):
                    continue
                del graph.node[pos]
                for o, r in zip([o for o in node.output if o], res, strict=True):
                    graph.initializer.append(numpy_helper.from_array(r, o))
                    tainted[o] = r
                    created.add(o)
                stats["constants_folded"] += 1
                changed = True
                break
        scope = _Scope(graph, parent, tainted)
        for node in graph.node:
            for attr_name, body in node_bodies(node):
                self._fold(body, scope, tainted, opsets, f"{prefix}{node.name or node.output[0]}/{attr_name}/", stats, created)

    @staticmethod
    def _inline(graph: onnx.GraphProto, pos: int, node: onnx.NodeProto, taken: bool, prefix: str, stats: dict) -> None:
        """Replace the If at `pos` by the nodes of its taken branch (names already unique)."""
        bodies = dict(node_bodies(node))
        keep_name, drop_name = ("then_branch", "else_branch") if taken else ("else_branch", "then_branch")
        branch = onnx.GraphProto()
        branch.CopyFrom(bodies[keep_name])
        defined = set(graph_defs(branch))
        outs = [o.name for o in branch.output]
        mapping, identities = {}, []
        for bo, io in zip(outs, node.output, strict=True):
            if not io:
                continue
            if bo in defined and outs.count(bo) == 1 and bo not in mapping:
                mapping[bo] = io  # the producer in the branch now writes the If's output directly
            else:
                identities.append(helper.make_node("Identity", [bo], [io], name=f"{io}__from_{keep_name}"))
        rename_tensors(branch, mapping)
        new_nodes = list(graph.node[:pos]) + list(branch.node) + identities + list(graph.node[pos + 1:])
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(branch.initializer)
        stats["ifs_folded"].append({
            "node": f"{prefix}{node.name or node.output[0]}", "condition": node.input[0], "taken": keep_name,
            "dropped": drop_name, "dropped_nodes": len(bodies[drop_name].node), "inlined_nodes": len(branch.node),
        })
