"""Running graph passes inside If / Loop / Scan bodies that cannot be flattened.

The passes are written for one graph: producers, consumers and constant weights of `model.graph`.
A body is turned into a standalone *view* model they can work on: the body's nodes and
initializers, its own inputs, every outer-scope tensor it reads as an extra input, and every
outer-scope *constant* it reads copied in as an initializer (so a branch's MatMul whose weight lives
in the parent graph is a weighted op with a constant weight, as in a flat graph). What the pass
returns is merged back: new nodes and initializers go into the body, the borrowed constants are
dropped again (the body reads them from the outer scope as before), and body names that now clash
with names elsewhere are renamed (graph/index.py `uniquify_body_names`).

Calibration of body tensors (`expose`): a copy of the model is rewritten so each wanted body tensor
is also carried out of its body: an extra output of both If branches (the branch that does not
compute it gives an empty tensor, which adds nothing to a histogram), an extra scan output of a
Loop or Scan body (all iterations, stacked). Nested bodies chain this outward to a graph output.

A body whose op is not If/Loop/Scan in the default domain, or that holds an op outside the default
domain, is left untouched with the reason: the passes' rules only know the standard ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.graph.index import (
    DEFAULT_DOMAINS,
    all_names,
    constant_tensor,
    graph_defs,
    iter_bodies,
    node_bodies,
    outer_names,
    uniquify_body_names,
)

CONTROL_FLOW = {"If", "Loop", "Scan"}


def has_bodies(model: onnx.ModelProto) -> bool:
    return any(True for _ in iter_bodies(model.graph))


def subtree_defs(graph: onnx.GraphProto) -> set[str]:
    """Names defined in `graph` and in every body below it."""
    names = set(graph_defs(graph))
    for _, _, body, _ in iter_bodies(graph):
        names |= set(graph_defs(body))
    return names


def blocker(node: onnx.NodeProto, body: onnx.GraphProto) -> str | None:
    """Why a body must stay as it is, or None when passes may work inside it."""
    if node.op_type not in CONTROL_FLOW or node.domain not in DEFAULT_DOMAINS:
        return f"body of a {node.domain + '.' if node.domain else ''}{node.op_type} node: only If/Loop/Scan bodies are handled"
    for n in body.node:
        if n.domain not in DEFAULT_DOMAINS:
            return f"op {n.domain}.{n.op_type} in the body is outside the default domain: the pass rules do not cover it"
    return None


def name_body_nodes(model: onnx.ModelProto) -> None:
    """Give every body node a model-wide unique name: units, layer rows and skip reasons name
    nodes, and body nodes of two branches would otherwise both be `MatMul_0`."""
    seen = {n.name for n in model.graph.node}
    for path, _, body, _ in iter_bodies(model.graph):
        for k, n in enumerate(body.node):
            if not n.name or n.name in seen:
                base = f"{path.replace('/', '.')}.{n.op_type}_{k}"
                name, j = base, 0
                while name in seen:
                    j += 1
                    name = f"{base}_{j}"
                n.name = name
            seen.add(n.name)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the model, bodies included (onnx shape inference + declared)."""
    types: dict[str, int] = {}
    try:
        m = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - declared types are used alone then
        m = model
    graphs = [m.graph] + [b for _, _, b, _ in iter_bodies(m.graph)]
    for g in graphs:
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types.setdefault(vi.name, vi.type.tensor_type.elem_type)
        for t in g.initializer:
            types.setdefault(t.name, t.data_type)
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        types.setdefault(n.output[0], a.t.data_type)
    return types


def model_constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Every initializer and Constant-node tensor of every graph (names are unique model-wide)."""
    out: dict[str, onnx.TensorProto] = {}
    graphs = [model.graph] + [b for _, _, b, _ in iter_bodies(model.graph)]
    for g in graphs:
        for t in g.initializer:
            out[t.name] = t
        for n in g.node:
            t = constant_tensor(n) if n.op_type == "Constant" else None
            if t is not None:
                c = onnx.TensorProto()
                c.CopyFrom(t)
                c.name = n.output[0]
                out[n.output[0]] = c
    return out


@dataclass
class View:
    """A body as a standalone model (see the module docstring)."""

    path: str
    node: onnx.NodeProto
    body: onnx.GraphProto
    model: onnx.ModelProto
    #: outer-scope constants copied in as initializers: name -> their serialized original
    borrowed: dict[str, bytes] = field(default_factory=dict)


def make_view(model: onnx.ModelProto, path: str, node: onnx.NodeProto, body: onnx.GraphProto,
              consts: dict[str, onnx.TensorProto], types: dict[str, int]) -> View:
    g = onnx.GraphProto()
    g.CopyFrom(body)
    g.name = f"view_{path}"
    del g.value_info[:]
    borrowed: dict[str, bytes] = {}
    for t in sorted(outer_names(body)):
        if t in consts:
            c = onnx.TensorProto()
            c.CopyFrom(consts[t])
            g.initializer.append(c)
            borrowed[t] = consts[t].SerializeToString()
        elif t in types:
            g.input.append(helper.make_tensor_value_info(t, types[t], None))
        else:
            g.input.append(helper.make_empty_tensor_value_info(t))
    vm = helper.make_model(g, opset_imports=list(model.opset_import))
    vm.ir_version = model.ir_version
    return View(path, node, body, vm, borrowed)


def merge_view(v: View, out: onnx.ModelProto) -> None:
    """Put what a pass made of `v.model` back into the body `v.body` (in place)."""
    body = v.body
    g = out.graph
    inits = []
    changed: dict[str, str] = {}
    for t in g.initializer:
        if t.name in v.borrowed:
            if t.SerializeToString() == v.borrowed[t.name]:
                continue  # read from the outer scope again
            changed[t.name] = f"{t.name}__body"  # edited in place by the pass: a body-local copy
        inits.append(t)
    outputs = list(g.output)
    del body.node[:]
    body.node.extend(g.node)
    del body.initializer[:]
    body.initializer.extend(inits)
    del body.output[:]
    body.output.extend(outputs)
    del body.value_info[:]
    # the edited copy is this body's own: nested bodies still read the outer original
    for t in body.initializer:
        if t.name in changed:
            t.name = changed[t.name]
    for n in body.node:
        n.input[:] = [changed.get(i, i) for i in n.input]
    for o in body.output:
        if o.name in changed:
            o.name = changed[o.name]


def bodies_to_process(model: onnx.ModelProto) -> tuple[list[tuple[str, onnx.NodeProto, onnx.GraphProto]], list[dict]]:
    """(handled bodies inner first, untouched bodies with the reason). Inner first: merging an
    outer body copies its nodes, so inner bodies must already hold their final form."""
    todo, skipped = [], []
    for path, node, body, _ in reversed(iter_bodies(model.graph)):
        why = blocker(node, body)
        if why is None:
            todo.append((path, node, body))
        else:
            skipped.append({"body": path, "op": node.op_type, "reason": why})
    return todo, skipped


def prepare(model: onnx.ModelProto) -> None:
    """Unique tensor and node names across the model: views, exposure and merging key on names."""
    uniquify_body_names(model.graph)
    name_body_nodes(model)


Snapshot = list[tuple[str, onnx.AttributeProto, bytes]]


def snapshot(model: onnx.ModelProto) -> Snapshot:
    """The subgraph attributes of the main graph's nodes, serialized with the path prefix of the
    bodies below them (bodies only, not the main graph's weights), so `restore` can put back the
    ones in which no body changed: the renaming `prepare` did there is undone."""
    out = []
    for n in model.graph.node:
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                out.append((f"{n.name or n.output[0]}/{a.name}", a, a.SerializeToString()))
    return out


def rebind(snap: Snapshot, model: onnx.ModelProto) -> Snapshot:
    """`snap` (taken from a model before `prepare`) for a copy of it made later: the same saved
    bytes, bound to the copy's attributes, matched by node and attribute name. Lets each of many
    candidates built from one prepared model put its untouched bodies back as they were in the input."""
    now = {prefix: a for prefix, a, _ in snapshot(model)}
    return [(prefix, now[prefix], data) for prefix, _, data in snap if prefix in now]


def restore(snap: Snapshot, changed: set[str]) -> None:
    """Put back every snapshotted attribute no changed body lies in."""
    for prefix, a, data in snap:
        if not any(p == prefix or p.startswith((prefix + "/", prefix + "[")) for p in changed):
            a.ParseFromString(data)


def apply_to_bodies(
    model: onnx.ModelProto, fn: Callable[[View], tuple[onnx.ModelProto | None, dict[str, Any]]],
    snap: Snapshot | None = None,
) -> list[dict[str, Any]]:
    """In place: run `fn` on a view of every handled body and merge what it returns.

    `fn` returns (new view model or None for no change, a stats row). A failure inside one body
    leaves that body as it was, reported with the reason: never a crash on a body the pass does
    not understand. Untouched bodies stay byte for byte as they were (`snap`: taken before a
    caller's own `prepare`). Returns one row per body: {body, op, changed, ...stats} or {..., reason}.
    """
    snap = snap if snap is not None else snapshot(model)
    prepare(model)
    todo, rows = bodies_to_process(model)
    rows = [{**r, "changed": False} for r in rows]
    types = tensor_types(model)
    consts = model_constants(model)
    for path, node, body in todo:
        view = make_view(model, path, node, body, consts, types)
        try:
            out, st = fn(view)
        except Exception as e:  # noqa: BLE001 - one body the pass cannot handle stays as it was
            rows.append({"body": path, "op": node.op_type, "changed": False,
                         "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
            continue
        if out is not None:
            merge_view(view, out)
        rows.append({"body": path, "op": node.op_type, "changed": out is not None, **st})
    changed = {r["body"] for r in rows if r["changed"]}
    restore(snap, changed)  # untouched means as it was: the renaming of `prepare` is undone there
    if changed:
        uniquify_body_names(model.graph)  # names a pass made in one body may repeat another scope's
    return rows


# ------------------------------------------------------------------------------------------------
# carrying body tensors out, for calibration


def _empty(name: str, elem_type: int) -> onnx.NodeProto:
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    return helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(np.zeros([0], dtype), name))


def expose(model: onnx.ModelProto, wanted: list[str], types: dict[str, int], *, ifs_in_loops: bool = True,
           ) -> tuple[onnx.ModelProto, dict[str, str], dict[str, int]]:
    """A copy of `model` whose graph outputs also carry the wanted tensors (bodies included).

    Returns (copy, {wanted name: graph output name}, {wanted name: Loop/Scan levels it was stacked
    through}: each adds a leading iteration axis, so a channel axis k arrives as k + levels). A
    tensor that cannot be carried out (a body of an op other than If/Loop/Scan, an unknown element
    type) is missing from the mapping. `ifs_in_loops=False` leaves out tensors of If branches
    inside a Loop/Scan body: when the branch taken changes between iterations, the empty stand-in
    of the other branch gives scan outputs of different shapes, which the Loop cannot stack.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    taken = all_names(m.graph)

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    def carry(graph: onnx.GraphProto, want: set[str], in_loop: bool) -> dict[str, tuple[str, int]]:
        defs = set(graph_defs(graph))
        res = {t: (t, 0) for t in want if t in defs}
        for node in list(graph.node):
            bodies = node_bodies(node)
            if not bodies or node.op_type not in CONTROL_FLOW or node.domain not in DEFAULT_DOMAINS:
                continue
            if node.op_type == "If" and in_loop and not ifs_in_loops:
                continue
            got = {}
            for attr_name, body in bodies:
                sub = {t for t in want if t in subtree_defs(body) and t in types}
                got[attr_name] = carry(body, sub, in_loop or node.op_type != "If") if sub else {}
            names = sorted({t for d in got.values() for t in d})
            stacked = 0 if node.op_type == "If" else 1
            for t in names:
                depth = 0
                for attr_name, body in bodies:
                    out = fresh(f"{t}__cfx_{attr_name}")
                    if t in got[attr_name]:
                        inner, depth = got[attr_name][t]
                        body.node.append(helper.make_node("Identity", [inner], [out], name=out))
                    elif node.op_type == "If":
                        body.node.append(_empty(out, types[t]))
                    else:
                        continue
                    body.output.append(helper.make_tensor_value_info(out, types[t], None))
                res[t] = (fresh(f"{t}__cfx"), depth + stacked)
                node.output.append(res[t][0])
                if node.op_type == "Scan":
                    for a in node.attribute:
                        if a.name in ("scan_output_axes", "scan_output_directions"):
                            a.ints.append(0)
        return res

    carried = carry(m.graph, set(wanted), False)
    existing = {o.name for o in m.graph.output}
    for t, (top, _) in carried.items():
        if top not in existing:
            m.graph.output.append(helper.make_tensor_value_info(top, types.get(t, TensorProto.FLOAT), None))
            existing.add(top)
    return m, {t: v[0] for t, v in carried.items()}, {t: v[1] for t, v in carried.items()}


def untouched_rows(model: onnx.ModelProto, steps: list[Any]) -> list[dict[str, Any]]:
    """Bodies no pass changed, with the reasons the passes gave (report key `subgraphs_untouched`).

    A pass that works inside bodies records stats["bodies"] rows {body, changed, reason?}; a body
    that no step changed is listed with the reasons reported for it, or with the note that no pass
    that works inside bodies ran.
    """
    changed: set[str] = set()
    reasons: dict[str, list[str]] = {}
    for s in steps:
        for row in (s.stats or {}).get("bodies", []) if isinstance(s.stats, dict) else []:
            if row.get("changed"):
                changed.add(row["body"])
            elif row.get("reason"):
                reasons.setdefault(row["body"], []).append(f"{s.name}: {row['reason']}")
    out = []
    for path, node, body, _ in iter_bodies(model.graph):
        if path in changed:
            continue
        why = reasons.get(path) or ["no pass that works inside bodies changed it (quantize and low_rank do)"]
        out.append({"node": path.rsplit("/", 1)[0], "body": path, "op": node.op_type, "body_nodes": len(body.node),
                    "body_weights": len(body.initializer), "reason": "; ".join(why)})
    return out
