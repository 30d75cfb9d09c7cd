"""uint8 embedding tables for the CPU EP: DQ -> Gather -> Q -> DQ, which ORT runs as a uint8 Gather.

Why: transformer word embeddings are most of a small encoder's bytes (MiniLM-L3: 11.7M of 17M
parameters) and are read a few rows at a time, so the table can be stored as uint8. ORT drops the
DQ/Q pair around a Gather that shares one scale and zero point on both sides (measured: the
optimized graph is Gather(uint8) -> DequantizeLinear), so the table is never dequantized whole.
Per-tensor asymmetric is what that fusion accepts.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim_compress.graph import weights
from onnxslim_compress.graph.index import DEFAULT_DOMAINS, GraphIndex


def quantize_gather_tables(model: onnx.ModelProto, exclude: list[str], min_elements: int = 65536) -> tuple[list[dict], list[dict]]:
    """In place. Returns (layer rows, skipped rows)."""
    g = model.graph
    idx = GraphIndex(g)
    rows: list[dict] = []
    skipped: list[dict] = []
    plan: dict[str, tuple[list[onnx.NodeProto], list[onnx.NodeProto]]] = {}
    for node in g.node:
        if node.op_type != "Gather" or node.domain not in DEFAULT_DOMAINS:
            continue
        table, out = node.input[0], node.output[0]
        t = idx.initializers.get(table)
        if t is None or t.data_type != TensorProto.FLOAT or table in idx.inputs:
            continue
        if int(np.prod(t.dims)) < min_elements:
            continue
        why = None
        if any(re.search(rx, node.name) for rx in exclude):
            why = "excluded"
        elif idx.n_readers(table) != 1:
            why = "table shared with other nodes (e.g. a tied output projection)"
        elif out in idx.outputs or out in idx.captured:
            why = "Gather output is a graph output or read by a subgraph"
        readers = idx.consumers.get(out, [])
        reuse = _existing_q(readers, idx)
        if why is None and reuse is None and any(c.op_type == "QuantizeLinear" for c in readers):
            why = "output quantized next to float readers"
        if why:
            skipped.append({"node": node.name, "reason": why})
            continue
        arr = weights.read(t)
        base = node.name or table
        if reuse is not None:
            # the output is already quantized with (scale, zp): Q(table)[ids] == Q(table[ids]), exact
            sn, zn, scale, zp = reuse
        else:
            lo, hi = min(float(arr.min()), 0.0), max(float(arr.max()), 0.0)
            scale = (hi - lo) / 255.0 or 1.0
            zp = int(np.clip(round(-lo / scale), 0, 255))
            sn = idx.add_initializer(f"{base}_table_scale", np.array(scale, np.float32))
            zn = idx.add_initializer(f"{base}_table_zero_point", np.array(zp, np.uint8))
        q = np.clip(np.round(arr / scale) + zp, 0, 255).astype(np.uint8)
        qn = idx.add_initializer(f"{base}_table_uint8", q)
        deq = idx.unique_name(f"{table}_dequantized")
        before = [helper.make_node("DequantizeLinear", [qn, sn, zn], [deq], name=idx.unique_name(f"{base}_table_dq"))]
        after = []
        if reuse is None:
            oq, odq = idx.unique_name(f"{out}_quantized"), idx.unique_name(f"{out}_dequantized")
            after = [
                helper.make_node("QuantizeLinear", [out, sn, zn], [oq], name=idx.unique_name(f"{base}_out_q")),
                helper.make_node("DequantizeLinear", [oq, sn, zn], [odq], name=idx.unique_name(f"{base}_out_dq")),
            ]
            for c in readers:
                for k, name in enumerate(c.input):
                    if name == out:
                        c.input[k] = odq
        node.input[0] = deq
        plan[node.name] = (before, after)
        g.initializer.remove(t)
        rows.append({"node": node.name, "op": "Gather", "precision": "uint8 table", "weights": "per-tensor",
                     "elements": int(arr.size), "max_abs_error": float(scale / 2)})
    if plan:
        nodes = []
        for node in g.node:
            b, a = plan.get(node.name, ([], []))
            nodes += [*b, node, *a]
        del g.node[:]
        g.node.extend(nodes)
    return rows, skipped


def _existing_q(readers: list[onnx.NodeProto], idx: GraphIndex) -> tuple[str, str, float, int] | None:
    """(scale name, zp name, scale, zp) when the only reader is a per-tensor uint8 QuantizeLinear."""
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or len(readers[0].input) < 3:
        return None
    sn, zn = readers[0].input[1], readers[0].input[2]
    s, z = idx.constant(sn), idx.constant(zn)
    if s is None or z is None or s.size != 1 or z.dtype != np.uint8:
        return None
    return sn, zn, float(s.reshape(-1)[0]), int(z.reshape(-1)[0])
