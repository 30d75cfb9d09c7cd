"""What `inspect` shows about channel groups: one row per group, with members, status and MACs.

Apart from groups.py because a row needs the MAC model of apply.py, and apply.py builds on the
analysis of groups.py: this module sits above both, so neither imports the other in a loop.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxslim_compress.graph.index import attr
from onnxslim_compress.graph.shapes import ShapeMap
from onnxslim_compress.passes.prune.apply import MacModel
from onnxslim_compress.passes.prune.groups import WEIGHT_OPS, ChannelAnalysis, analyze


def member_role(an: ChannelAnalysis, i: int, gid: int) -> str:
    """Producer/consumer for weight ops (by which side lies in the group), else the rule's role."""
    n = an.view.nodes[i]
    if n.op_type in WEIGHT_OPS and (n.op_type != "MatMul" or n.input[1] in an.view.init):
        y, x = n.output[0], n.input[0]
        out_axis = 1 if n.op_type != "MatMul" else len(an.view.shape(y) or [0]) - 1
        in_axis = 1 if n.op_type != "MatMul" else len(an.view.shape(x) or [0]) - 1
        sides = []
        if an.space_group.get((y, out_axis)) == gid:
            sides.append("producer")
        if an.space_group.get((x, in_axis)) == gid:
            sides.append("consumer")
        if n.op_type == "Conv" and attr(n, "group", 1) > 1 and len(sides) == 2:
            return "depthwise" if attr(n, "group", 1) == an.view.dim(x, 1) else "grouped"
        if sides:
            return "+".join(sides)
    roles = [r for j, key, r in an.visits if j == i and an.space_group.get(key) == gid]
    return "blocker" if "blocker" in roles else (roles[0] if roles else "pass")


def describe_groups(model: onnx.ModelProto, input_shapes: ShapeMap | None = None) -> list[dict]:
    """One row per group: members, channel count, prunable or frozen (why), MACs attached.

    Keys: group (id), name (first producer), channels (widest space), units (prunable sets of
    channels, e.g. heads), prunable_units, prunable (any unit free), status (prunable / partial /
    frozen), reason and reasons (why units are frozen), macs (of the Conv/Gemm/MatMul touching the
    group), members ([{node, op, role}]).
    """
    an = analyze(model, input_shapes)
    macs = MacModel(an)
    node_macs = macs.per_node(np.zeros(an.n_units, dtype=bool))
    rows = []
    for gid in range(an.n_groups):
        units = np.nonzero(an.group == gid)[0]
        nodes = an.group_nodes(gid)
        members = [
            {"node": an.view.nodes[i].name or f"#{i}", "op": an.view.nodes[i].op_type, "role": member_role(an, i, gid)}
            for i in nodes
        ]
        free = int((~an.frozen[units]).sum())
        reasons = list(dict.fromkeys(an.reason[u] for u in units if an.frozen[u]))
        channels = max(s.size for k, s in an.spaces.items() if an.space_group[k] == gid)
        status = "prunable" if free == len(units) else ("frozen" if free == 0 else "partial")
        gmacs = sum(node_macs.get(i, 0) for i in nodes if i in node_macs and macs.touches(i, gid))
        producers = [x["node"] for x in members if "producer" in x["role"]]
        rows.append(
            {
                "group": gid,
                "name": producers[0] if producers else (members[0]["node"] if members else f"group {gid}"),
                "prunable": free > 0,
                "channels": int(channels),
                "units": len(units),
                "prunable_units": free,
                "status": status,
                "reason": reasons[0] if reasons else None,
                "reasons": reasons,
                "macs": int(gmacs),
                "members": members,
            }
        )
    return rows
