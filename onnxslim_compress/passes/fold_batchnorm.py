"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm that feeds it.

BN after a weighted op is an affine map per output channel, so it folds exactly into the weights and
bias. A BN is left alone (and the reason reported) when its producer is not one of those ops, when
the producer's output has other readers, when weights are not constant, or in training mode.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto

from onnxslim_compress.graph.index import DEFAULT_DOMAINS, GraphIndex, attr
from onnxslim_compress.passes.base import NoParams, Pass, PassResult

FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


def _out_channel_scale(op: str, node, w: np.ndarray, s: np.ndarray) -> np.ndarray | None:
    """Weight with output channel c multiplied by s[c]; None when the layout is not the expected one."""
    if op == "Conv":
        if w.shape[0] != s.size:
            return None
        return w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    if op == "ConvTranspose":
        group = attr(node, "group", 1)
        cin, cout_g = w.shape[0], w.shape[1]
        if cout_g * group != s.size or cin % group:
            return None
        # output channel o = g*(Cout/g) + j is made from rows of group g, column j
        sg = s.reshape(group, cout_g)
        rows = np.repeat(sg, cin // group, axis=0)  # (Cin, Cout/g)
        return w * rows.reshape(rows.shape + (1,) * (w.ndim - 2))
    # Gemm: weight (N, K) when transB else (K, N)
    if attr(node, "transB", 0):
        return w * s[:, None] if w.shape[0] == s.size else None
    return w * s[None, :] if w.ndim == 2 and w.shape[1] == s.size else None


class FoldBatchNorm(Pass):
    name = "fold_batchnorm"
    Params = NoParams
    in_place = True
    lossless = True

    def run(self, model: ModelProto, ctx) -> PassResult:
        g = model.graph
        idx = GraphIndex(g)
        folded: list[dict] = []
        skipped: list[dict] = []
        remove = []
        for bn in list(g.node):
            if bn.op_type != "BatchNormalization" or bn.domain not in DEFAULT_DOMAINS:
                continue
            why = self._try_fold(bn, idx)
            name = bn.name or bn.output[0]
            if why is None:
                folded.append({"node": name, "into": idx.producer[bn.input[0]].name})
                remove.append(bn)
            else:
                skipped.append({"node": name, "reason": why})
        for bn in remove:
            g.node.remove(bn)
        return PassResult(model, bool(folded), {"folded": len(folded), "layers": folded, "skipped": skipped})

    def _try_fold(self, bn, idx: GraphIndex) -> str | None:
        if attr(bn, "training_mode", 0):
            return "training_mode=1"
        if attr(bn, "spatial", 1) != 1:
            return "spatial=0 (per-activation BN, opset < 9)"
        if len([o for o in bn.output if o]) > 1:
            return "running statistics outputs are used"
        prod = idx.producer.get(bn.input[0])
        if prod is None or prod.op_type not in FOLDABLE or prod.domain not in DEFAULT_DOMAINS:
            return f"producer is {prod.op_type if prod is not None else 'a graph input'}, not Conv/ConvTranspose/Gemm"
        if idx.n_readers(bn.input[0]) != 1:
            return f"output of {prod.name or prod.op_type} has other readers"
        params = [idx.constant(n) for n in bn.input[1:5]]
        if any(p is None for p in params):
            return "scale/bias/mean/var are not constants"
        w = idx.constant(prod.input[1])
        if w is None:
            return f"weight of {prod.name or prod.op_type} is not a constant"
        if prod.op_type == "Gemm" and attr(prod, "transA", 0) not in (0, 1):
            return "unexpected transA"
        gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)
        eps = attr(bn, "epsilon", 1e-5)
        s = gamma / np.sqrt(var + eps)
        alpha = attr(prod, "alpha", 1.0) if prod.op_type == "Gemm" else 1.0
        new_w = _out_channel_scale(prod.op_type, prod, w.astype(np.float64) * alpha, s)
        if new_w is None:
            return f"weight shape {list(w.shape)} does not match {s.size} channels"
        has_bias = len(prod.input) > 2 and prod.input[2]
        if has_bias:
            b = idx.constant(prod.input[2])
            if b is None:
                return "bias is not a constant"
            b = np.asarray(b, dtype=np.float64)
            if prod.op_type == "Gemm":
                b = b * attr(prod, "beta", 1.0)
            try:
                b = np.broadcast_to(b, (s.size,)) if b.ndim <= 1 else np.broadcast_to(b, (1, s.size)).reshape(-1)
            except ValueError:
                return f"bias shape {list(b.shape)} is not per-channel"
        else:
            b = np.zeros(s.size)
        new_b = (b - mean) * s + beta
        base = prod.name or prod.output[0]
        w_name = idx.add_initializer(f"{base}_bnfold_W", new_w.astype(w.dtype))
        b_name = idx.add_initializer(f"{base}_bnfold_B", new_b.astype(w.dtype))
        inputs = [prod.input[0], w_name, b_name]
        del prod.input[:]
        prod.input.extend(inputs)
        if prod.op_type == "Gemm":
            for key in ("alpha", "beta"):
                for a in list(prod.attribute):
                    if a.name == key:
                        prod.attribute.remove(a)
        # the producer now writes the BN's output tensor directly
        del prod.output[:]
        prod.output.append(bn.output[0])
        return None


