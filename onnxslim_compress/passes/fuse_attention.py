"""Fuse scaled-dot-product attention into ONNX Runtime's MultiHeadAttention (com.microsoft).

Why: current `torch.onnx.export` of BERT-class encoders (the SDPA path, transformers 5) writes each
attention as about 16 standard ops - three Reshape/Transpose pairs, a scale Mul on Q and on K, the
score MatMul, the additive mask, Softmax, an IsNaN/Where guard for fully masked rows, the context
MatMul and a Transpose/Reshape back. ONNX Runtime's transformer optimizer does not match that
export (0 Attention fused on all-MiniLM-L6-v2, opt_level 0 and 99), so ORT runs the ops one by one.
Fused into one MultiHeadAttention kernel the same model ran x0.95 in fp32 and x0.89 in int8 at
sequence length 128 (ORT 1.31 CPU EP, 1 thread; BENCHMARKS.md).

The rewrite is pattern / check / rewrite, anchored at each Softmax; a candidate that does not match
is reported with the reason. The pattern (Q, K, V are [B, S, H*D] tensors):

    Qh = Transpose(Reshape(Q, [B, S, H, D]), 0 2 1 3) [* c_q]
    Kt = Transpose(Reshape(K, [B, T, H, D]), 0 2 3 1) [* c_k]     (or 0 2 1 3 then 0 1 3 2)
    P  = Softmax(MatMul(Qh, Kt) [* c | / c] [+ bias], axis -1) [-> Where(IsNaN(P), 0, P)]
    out = Reshape(Transpose(MatMul(P, Transpose(Reshape(V), 0 2 1 3)), 0 2 1 3), [B, S, H*Dv])

becomes MultiHeadAttention(Q, K, V, attention_bias=bias; num_heads=H, scale=c_q*c_k*c). Checks, all on
the shapes one run reads at the bound input shapes: Q/K/V rank 3 float32, the head split is of the
last axis only, the bias is [B|1, H|1, S, T] (MultiHeadAttention broadcasts the first two dims only;
a [B|1, H|1, 1, T] key mask is expanded over the queries first, once per mask tensor),
S and T are not 1 (a per-query mask and a broadcast one are then indistinguishable), and no tensor
the fusion removes is read by a node that stays live.

One known difference: a query row whose keys are ALL masked (only an all-padding sequence has
such rows) gives 0 in an SDPA export (its IsNaN guard) and, fused, the mean of V over the keys (the
mask's -inf is clamped to -1e30 first, so the row is finite, as in the classic export, not NaN).
Runs on the CPU and CUDA targets only: TensorRT has no such kernel and would split its engine there.
The fused graph is timed against the unfused one on the target (passes/timing.py, interleaved,
the first calibration sample) and kept only when it is not slower: on MiniLM-L3's classic export
at 128 tokens it measured 1.00 [1.00-1.01] (a tie), on all-MiniLM-L6 0.95 [0.94-0.95].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxslim_compress.data.generated import GeneratedSource
from onnxslim_compress.data.spec import input_specs
from onnxslim_compress.graph.index import DEFAULT_DOMAINS, GraphIndex, attr
from onnxslim_compress.graph.shapes import dims_of, graph_inputs, infer_shapes, without_big_weights
from onnxslim_compress.passes.base import NoParams, Pass, PassResult
from onnxslim_compress.passes.timing import as_timing, timer_for
from onnxslim_compress.runtime.profiler import first_feed
from onnxslim_compress.runtime.session import Target, shapes_from_run

MS_DOMAIN = "com.microsoft"
#: targets whose ORT execution provider has a MultiHeadAttention kernel
FUSING_TARGETS = ("cpu", "cuda")
#: what a -inf mask entry becomes: far below any score, far from float32's -3.4e38 (no overflow when added)
FINITE_MASK = -1e30
#: the size of unbound dims in the structural shape run (not 1: see _probe_shapes)
PROBE_DIM = 8


@dataclass(frozen=True)
class AttentionMatch:
    """One attention to fuse: the kernel's inputs, its output tensor and the nodes it replaces."""

    q: str
    k: str
    v: str
    bias: str | None
    out: str
    num_heads: int
    scale: float
    nodes: tuple[int, ...]  # positions in graph.node of the replaced nodes
    name: str
    #: the bias is [B|1, H|1, 1, T] (one key mask for every query, the classic BERT export): it is
    #: expanded over the S query rows first, the kernel broadcasting only its first two dims
    expand_bias: bool = False
    #: the graph guarded fully masked rows (Where(IsNaN(P), 0, P)), so its bias may hold -inf: it is
    #: clamped to FINITE_MASK, else such a row would come out NaN instead of finite
    clamp_bias: bool = False


class NoMatch(Exception):
    """The reason a Softmax is not the centre of a fusable attention."""


def _scalar(idx: GraphIndex, name: str) -> float | None:
    c = idx.constant(name)
    if c is None or np.asarray(c).size != 1 or not np.issubdtype(np.asarray(c).dtype, np.floating):
        return None
    return float(np.asarray(c).reshape(-1)[0])


class _Matcher:
    """Walks the pattern around one Softmax. Stateless between matches: one instance per Softmax."""

    def __init__(self, idx: GraphIndex, pos: dict[int, int], shapes: dict[str, list[int]], types: dict[str, int]):
        self.idx, self.pos, self.shapes, self.types = idx, pos, shapes, types
        self.used: list[Any] = []

    def node(self, tensor: str, op: str, what: str):
        n = self.idx.producer.get(tensor)
        if n is None or n.op_type != op or n.domain not in DEFAULT_DOMAINS:
            got = "a graph input or constant" if n is None else n.op_type
            raise NoMatch(f"{what} is {got}, not {op}")
        self.used.append(n)
        return n

    def readers(self, tensor: str) -> list[Any]:
        return list(self.idx.consumers.get(tensor, []))

    def shape(self, tensor: str, rank: int, what: str) -> list[int]:
        s = self.shapes.get(tensor)
        if s is None or len(s) != rank:
            raise NoMatch(f"{what} has shape {s}, not rank {rank}")
        return s

    def scaled(self, tensor: str) -> tuple[str, float]:
        """(the tensor before an optional Mul/Div by a scalar constant, the factor)."""
        n = self.idx.producer.get(tensor)
        if n is not None and n.op_type in ("Mul", "Div") and n.domain in DEFAULT_DOMAINS:
            for a, b in ((0, 1), (1, 0)) if n.op_type == "Mul" else ((0, 1),):
                c = _scalar(self.idx, n.input[b])
                if c is not None and c != 0.0:
                    self.used.append(n)
                    return n.input[a], (c if n.op_type == "Mul" else 1.0 / c)
        return tensor, 1.0

    def heads(self, tensor: str, perm: tuple[int, ...], what: str) -> tuple[str, list[int]]:
        """The rank-3 [B, L, H*D] tensor a head split (Reshape to [B, L, H, D], Transpose perm) starts
        from, and the [B, L, H, D] shape."""
        t = self.node(tensor, "Transpose", f"{what}'s head transpose")
        if tuple(attr(t, "perm", ())) != perm:
            raise NoMatch(f"{what}'s Transpose perm {list(attr(t, 'perm', ()))} is not {list(perm)}")
        r = self.node(t.input[0], "Reshape", f"{what}'s head split")
        src = r.input[0]
        s3 = self.shape(src, 3, f"{what} before the head split")
        s4 = self.shape(r.output[0], 4, f"{what}'s head split")
        if s4[:2] != s3[:2] or s4[2] * s4[3] != s3[2]:
            raise NoMatch(f"{what}'s Reshape {s3} -> {s4} does not split the last axis into heads")
        return src, s4

    def match(self, sm) -> AttentionMatch:
        self.shape(sm.input[0], 4, "the Softmax input")
        if attr(sm, "axis", -1) not in (-1, 3):
            raise NoMatch(f"Softmax axis {attr(sm, 'axis', -1)} is not the last")
        self.used.append(sm)
        scores, bias = sm.input[0], None
        add = self.idx.producer.get(scores)
        if add is not None and add.op_type == "Add" and add.domain in DEFAULT_DOMAINS:
            mm_side = [i for i in add.input if (p := self.idx.producer.get(i)) is not None and p.op_type in ("MatMul", "Mul", "Div")
                       and self.idx.constant(i) is None]
            if not mm_side:
                raise NoMatch("the Add before Softmax has no score MatMul operand")
            scores = next((i for i in mm_side if self.idx.producer[i].op_type == "MatMul"), mm_side[0])
            bias = add.input[1] if add.input[0] == scores else add.input[0]
            self.used.append(add)
        scores, c_s = self.scaled(scores)
        mm = self.node(scores, "MatMul", "the scores")
        s_shape = self.shape(mm.output[0], 4, "the scores")
        q_t, c_q = self.scaled(mm.input[0])
        k_t, c_k = self.scaled(mm.input[1])
        q, qs = self.heads(q_t, (0, 2, 1, 3), "Q")
        kt = self.idx.producer.get(k_t)
        if kt is not None and kt.op_type == "Transpose" and tuple(attr(kt, "perm", ())) == (0, 1, 3, 2):
            self.used.append(kt)
            k, ks = self.heads(kt.input[0], (0, 2, 1, 3), "K")
        else:
            k, ks = self.heads(k_t, (0, 2, 3, 1), "K")
        # the probabilities, through the fully-masked-row guard when there is one
        probs = sm.output[0]
        readers = self.readers(probs)
        isnan = [n for n in readers if n.op_type == "IsNaN"]
        if isnan:
            where = [n for n in readers if n.op_type == "Where" and n.input[0] == isnan[0].output[0] and n.input[2] == probs]
            if len(readers) != 2 or not where or _scalar(self.idx, where[0].input[1]) != 0.0:
                raise NoMatch("the probabilities' IsNaN guard is not Where(IsNaN(P), 0, P)")
            self.used += [isnan[0], where[0]]
            probs = where[0].output[0]
            readers = self.readers(probs)
        if len(readers) != 1 or readers[0].op_type != "MatMul" or readers[0].input[0] != probs:
            raise NoMatch("the probabilities are not read by one context MatMul")
        ctx_mm = readers[0]
        self.used.append(ctx_mm)
        v, vs = self.heads(ctx_mm.input[1], (0, 2, 1, 3), "V")
        ctx_out = ctx_mm.output[0]
        same = [n for n in self.readers(ctx_out) if n.op_type == "Reshape" and self.shapes.get(n.output[0]) == self.shapes.get(ctx_out)]
        if same:  # a Reshape to the shape it already has (the SDPA export writes one): skipped over
            self.used.append(same[0])
            ctx_out = same[0].output[0]
        out_t = [n for n in self.readers(ctx_out) if n.op_type != "Shape"]
        if len(out_t) != 1 or out_t[0].op_type != "Transpose" or tuple(attr(out_t[0], "perm", ())) != (0, 2, 1, 3):
            raise NoMatch("the context is not transposed back with perm [0, 2, 1, 3]")
        self.used.append(out_t[0])
        # Shape readers (the merge's target shape computed from the tensor itself) die with the fusion,
        # which the live check verifies; any other reader stops the match there
        out_r = [n for n in self.readers(out_t[0].output[0]) if n.op_type != "Shape"]
        if len(out_r) != 1 or out_r[0].op_type != "Reshape":
            raise NoMatch("the transposed context is not merged back by one Reshape")
        self.used.append(out_r[0])
        out = out_r[0].output[0]
        b, s, h, d = qs
        t = ks[1]
        if ks[2] != h or vs[2] != h or ks[3] != d or vs[1] != t or ks[0] != b or vs[0] != b:
            raise NoMatch(f"Q/K/V head shapes disagree (Q {qs}, K {ks}, V {vs})")
        if s_shape != [b, h, s, t]:
            raise NoMatch(f"scores shape {s_shape} is not [B, H, S, T] = {[b, h, s, t]}")
        if self.shape(out, 3, "the attention output") != [b, s, h * vs[3]]:
            raise NoMatch(f"the attention output {self.shapes.get(out)} is not [B, S, H*Dv]")
        if s == 1 or t == 1:
            raise NoMatch(f"sequence length 1 in the shapes used (S {s}, T {t}): a broadcast mask cannot be told apart")
        expand = False
        if bias is not None:
            bs = self.shape(bias, 4, "the attention bias")
            if bs[0] not in (1, b) or bs[1] not in (1, h) or bs[2] not in (1, s) or bs[3] != t:
                raise NoMatch(f"attention bias {bs} is not [B|1, H|1, S|1, T] = [{b}|1, {h}|1, {s}|1, {t}]")
            expand = bs[2] == 1
        for x in (q, k, v, *([bias] if bias else [])):
            if self.types.get(x, onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT:
                raise NoMatch(f"{x} is not float32")
        return AttentionMatch(q=q, k=k, v=v, bias=bias, out=out, num_heads=h, scale=c_q * c_k * c_s, clamp_bias=bool(isnan),
                              nodes=tuple(sorted({self.pos[id(n)] for n in self.used})), name=sm.name or sm.output[0],
                              expand_bias=expand)


def _timing_feed(model: onnx.ModelProto, ctx) -> dict[str, np.ndarray]:
    """The first calibration sample, else one generated at the probe shapes (masks as ones)."""
    calib = getattr(ctx, "calib", None)
    if calib is not None:
        return first_feed(calib)
    src = GeneratedSource(model, input_specs(model), 1, _probe_shapes(model, getattr(ctx, "input_shapes", None)))
    return next(iter(src))


def _probe_shapes(model: onnx.ModelProto, given: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """Input shapes for the structural shape run: the bound ones, and PROBE_DIM for every dim that
    nothing bound. Why not the usual 1: a sequence of 1 cannot tell a per-query mask from a broadcast
    one, so a model compressed without data would never fuse. Only the pattern's shape relations are
    read at these sizes; the written model is checked by the guard on the run's own inputs."""
    out = {k: list(v) for k, v in (given or {}).items()}
    for vi in graph_inputs(model):
        if vi.name not in out:
            dims = dims_of(vi)
            if dims:
                out[vi.name] = [d if isinstance(d, int) and d > 0 else PROBE_DIM for d in dims]
    return out


def _between_matmuls(idx: GraphIndex, sm: onnx.NodeProto) -> bool:
    """Cheap structural test, no shapes: a MatMul of two runtime tensors among the first eight
    producers before the Softmax (through Add/Mul/Div: mask and scale), and a MatMul reading it
    directly or through the IsNaN guard's Where."""
    frontier, seen = [sm.input[0]], 0
    found = False
    while frontier and seen < 8 and not found:
        t = frontier.pop(0)
        seen += 1
        n = idx.producer.get(t)
        if n is None:
            continue
        if n.op_type == "MatMul" and all(idx.constant(x) is None for x in n.input):
            found = True
        elif n.op_type in ("Add", "Mul", "Div"):
            frontier += [x for x in n.input if idx.constant(x) is None]
    if not found:
        return False
    after = list(idx.consumers.get(sm.output[0], []))
    after += [c for w in after if w.op_type == "Where" for c in idx.consumers.get(w.output[0], [])]
    return any(n.op_type == "MatMul" for n in after)


def _expand_over_queries(idx: GraphIndex, nodes: list[onnx.NodeProto], bias: str, q: str) -> str:
    """Append nodes expanding a [B|1, H|1, 1, T] bias to [B|1, H|1, S, T], S read off `q` ([B, S, H*D])
    at run time (Shape, Gather, Concat, Expand: valid from opset 8). Returns the expanded tensor."""
    one = idx.add_initializer(f"{bias}_ones", np.array([1, 1], dtype=np.int64))
    last = idx.add_initializer(f"{bias}_one", np.array([1], dtype=np.int64))
    at = idx.add_initializer(f"{bias}_seq_axis", np.array([1], dtype=np.int64))
    shp, seq, target, out = (idx.unique_name(f"{bias}_{x}") for x in ("q_shape", "q_len", "rows", "per_query"))
    nodes += [
        helper.make_node("Shape", [q], [shp], name=shp),
        helper.make_node("Gather", [shp, at], [seq], name=seq, axis=0),
        helper.make_node("Concat", [one, seq, last], [target], name=target, axis=0),
        helper.make_node("Expand", [bias, target], [out], name=out),
    ]
    return out


def _clamp(idx: GraphIndex, nodes: list[onnx.NodeProto], bias: str) -> str:
    """Append Max(bias, FINITE_MASK): -inf entries become a large finite value."""
    low = idx.add_initializer(f"{bias}_floor", np.array(FINITE_MASK, dtype=np.float32))
    out = idx.unique_name(f"{bias}_finite")
    nodes.append(helper.make_node("Max", [bias, low], [out], name=out))
    return out


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor onnx's inference can type (weights left out: types only)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(without_big_weights(model), strict_mode=False)
    except Exception:  # noqa: BLE001 - onnx raises several types; untyped tensors count as float32
        return {}
    g = inferred.graph
    out = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.value_info, *g.output]}
    out.update({t.name: t.data_type for t in model.graph.initializer})
    return out


def _live_readers_of_removed(graph: onnx.GraphProto, removed: set[int], new_inputs: set[str], new_output: str) -> list[str]:
    """Tensors that removed nodes produce and a node that stays live still reads: walking back from
    the graph outputs through kept nodes only (the fused kernel reads `new_inputs` and writes
    `new_output`)."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    removed_out = {o for i in removed for o in graph.node[i].output if o} - {new_output}
    live, stack, seen = [], [o.name for o in graph.output] + sorted(new_inputs), set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in removed_out:
            live.append(t)
            continue
        i = None if t == new_output else producer.get(t)
        if i is not None:
            stack.extend(x for x in graph.node[i].input if x)
    return live


class FuseAttention(Pass):
    name = "fuse_attention"
    Params = NoParams
    in_place = True
    lossless = True

    def run(self, model: onnx.ModelProto, ctx) -> PassResult:
        g = model.graph
        kind = getattr(getattr(ctx, "target", None), "kind", "cpu")
        softmaxes = [n for n in g.node if n.op_type == "Softmax" and n.domain in DEFAULT_DOMAINS]
        if not softmaxes:
            return PassResult(model, False, {"fused": 0})
        if kind not in FUSING_TARGETS:
            return PassResult(model, False, {"fused": 0, "skipped": [{"node": "*", "reason": f"target {kind}: "
                                                                     "no MultiHeadAttention kernel"}]})
        idx = GraphIndex(g)
        # the shape run costs one ORT session on the whole model: only when a Softmax could be attention
        softmaxes = [sm for sm in softmaxes if _between_matmuls(idx, sm)]
        if not softmaxes:
            return PassResult(model, False, {"fused": 0, "skipped": [{"node": "*", "reason": "no Softmax between "
                                                                     "a score MatMul and a context MatMul"}]})
        shapes, _, method = infer_shapes(model, _probe_shapes(model, getattr(ctx, "input_shapes", None)),
                                         runner=shapes_from_run)
        types = _elem_types(model)
        pos = {id(n): i for i, n in enumerate(g.node)}
        matches: list[AttentionMatch] = []
        skipped: list[dict[str, str]] = []
        taken: set[int] = set()
        for sm in softmaxes:
            try:
                m = _Matcher(idx, pos, shapes, types).match(sm)
            except NoMatch as e:
                skipped.append({"node": sm.name or sm.output[0], "reason": str(e)})
                continue
            if taken & set(m.nodes):
                skipped.append({"node": m.name, "reason": "overlaps another fused attention"})
                continue
            keep = _live_readers_of_removed(g, set(m.nodes), {m.q, m.k, m.v, *([m.bias] if m.bias else [])}, m.out)
            if keep:
                skipped.append({"node": m.name, "reason": f"{keep[0]} is also read outside the attention"})
                continue
            taken |= set(m.nodes)
            matches.append(m)
        if not matches:
            return PassResult(model, False, {"fused": 0, "skipped": skipped, "shapes": method})
        timer = timer_for(ctx, getattr(ctx, "target", None) or Target())
        before = None
        if timer is not None:  # the unfused graph, timed against and returned if the fused one is not faster
            before = onnx.ModelProto()
            before.CopyFrom(model)
        last = {max(m.nodes): m for m in matches}
        nodes: list[onnx.NodeProto] = []
        expanded: dict[tuple, str] = {}  # one expanded/clamped mask per bias tensor, shared by the layers that read it
        gone = {o for i in taken for o in g.node[i].output if o} - {m.out for m in matches}
        for i, n in enumerate(g.node):
            if i not in last and any(x in gone for x in n.input):
                gone.update(o for o in n.output if o)  # a shape computation only the fused ops read (checked live-free)
                continue
            if i in last:
                m = last[i]
                bias = m.bias or ""
                if m.bias and (m.expand_bias, m.clamp_bias) != (False, False):
                    key = (bias, m.expand_bias, m.clamp_bias)
                    if key not in expanded:
                        t = _expand_over_queries(idx, nodes, bias, m.q) if m.expand_bias else bias
                        expanded[key] = _clamp(idx, nodes, t) if m.clamp_bias else t
                    bias = expanded[key]
                nodes.append(helper.make_node(
                    "MultiHeadAttention", [m.q, m.k, m.v, "", "", bias], [m.out], domain=MS_DOMAIN,
                    name=idx.unique_name(f"{m.name}_mha"), num_heads=m.num_heads, scale=float(m.scale)))
            elif i not in taken:
                nodes.append(n)
        del g.node[:]
        g.node.extend(nodes)
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        timed = None
        if timer is not None and before is not None:  # kept only where it measures not slower: the kernel is not faster everywhere
            t = as_timing(timer(before, model, _timing_feed(before, ctx)))
            timed = {"ratio": round(t.ratio, 3), "ci95": [round(t.lo, 3), round(t.hi, 3)]}
            if t.hi >= 1.0 and t.ratio >= 1.0:
                return PassResult(before, False, {
                    "fused": 0, "timed": timed, "shapes": method,
                    "skipped": skipped + [{"node": "*", "reason": f"{len(matches)} attention(s) fused measured "
                                           f"{t.text()} of the unfused graph on this target: not faster, left unfused"}]})
        stats = {"fused": len(matches), "heads": sorted({m.num_heads for m in matches}),
                 "layers": [{"node": m.name, "num_heads": m.num_heads, "scale": round(m.scale, 6),
                             "bias": m.bias is not None} for m in matches],
                 "skipped": skipped, "shapes": method, **({"timed": timed} if timed else {})}
        return PassResult(model, True, stats)
