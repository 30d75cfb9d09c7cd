"""Remove nodes whose outputs nobody reads, and initializers nobody uses.

Why a pass of our own beside onnxslim: pruning and factorization leave orphaned weights behind, and
this must run after them without re-running a full simplification. Only default-domain nodes are
removed: a custom op may have effects we cannot see, so it is never guessed to be dead.
"""

from __future__ import annotations

from onnx import ModelProto

from onnxslim_compress.graph.index import DEFAULT_DOMAINS, GraphIndex, drop_unused_initializers, has_subgraph
from onnxslim_compress.passes.base import NoParams, Pass, PassResult


class EliminateDead(Pass):
    name = "eliminate_dead"
    Params = NoParams
    in_place = True
    lossless = True

    def run(self, model: ModelProto, ctx) -> PassResult:
        g = model.graph
        removed_nodes: list[str] = []
        kept_custom: list[str] = []
        while True:
            idx = GraphIndex(g)
            dead = []
            for node in g.node:
                outs = [o for o in node.output if o]
                if any(idx.n_readers(o) for o in outs):
                    continue
                if node.domain not in DEFAULT_DOMAINS or has_subgraph(node):
                    kept_custom.append(node.name or node.op_type)
                    continue
                dead.append(node)
            if not dead:
                break
            for node in dead:
                removed_nodes.append(node.name or node.op_type)
                g.node.remove(node)
        idx = GraphIndex(g)
        unused = drop_unused_initializers(g)
        live = set(idx.producer) | idx.inputs | set(idx.initializers)
        stale_vi = [v for v in g.value_info if v.name not in live]
        for v in stale_vi:
            g.value_info.remove(v)
        stats = {
            "nodes_removed": len(removed_nodes),
            "initializers_removed": len(unused),
            "skipped": [{"node": n, "reason": "unused output of a custom-domain or control-flow op"} for n in sorted(set(kept_custom))],
        }
        return PassResult(model, bool(removed_nodes or unused), stats)
