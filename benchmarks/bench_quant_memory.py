"""Peak memory of a 1000-sample int8 calibration on a BERT-base-size encoder (issue 5's bound: < 4 GB RSS).

    python benchmarks/bench_quant_memory.py [--samples 1000] [--layers 12] [--seq 128]

Builds a BERT-base-shaped encoder with random weights (vocab 30522, hidden 768, 12 heads, FFN 3072,
12 layers: ~110 M parameters, ~440 MB) and a calibration .npz of token ids, then runs
`onnxslim-compress compress --quantize int8 --calib` in a child process and reads its peak RSS
(ru_maxrss). No pretrained BERT-base ships in a PyPI package we can use here, so the weights are
random: the figure measures the calibration's memory, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(layers: int, seq: int, hidden: int = 768, heads: int = 12, ffn: int = 3072, vocab: int = 30522) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def w(name, shape, s=0.02):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name))
        return name

    def c(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def n(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    def ln(x, p):
        return n("LayerNormalization", [x, c(f"{p}.g", np.ones(hidden, np.float32)), c(f"{p}.b", np.zeros(hidden, np.float32))], f"{p}.out", axis=-1)

    def dense(x, k, m, p):
        return n("Add", [n("MatMul", [x, w(f"{p}.W", (k, m))], f"{p}.mm"), w(f"{p}.B", (m,))], f"{p}.out")

    x = n("Gather", [w("word_emb", (vocab, hidden)), "input_ids"], "emb.word")
    x = n("Add", [x, w("pos_emb", (1, seq, hidden))], "emb.sum")
    x = ln(x, "emb.ln")
    dh = hidden // heads
    c("split_heads", np.array([1, seq, heads, dh], np.int64))
    c("merge_heads", np.array([1, seq, hidden], np.int64))
    c("sqrt_dh", np.array(np.sqrt(dh), np.float32))
    c("half", np.array(0.5, np.float32))
    c("one", np.array(1.0, np.float32))
    c("rsqrt2", np.array(1 / np.sqrt(2), np.float32))
    for i in range(layers):
        p = f"l{i}"
        qkv = []
        for k in "qkv":
            t = dense(x, hidden, hidden, f"{p}.{k}")
            t = n("Reshape", [t, "split_heads"], f"{p}.{k}.r")
            perm = [0, 2, 3, 1] if k == "k" else [0, 2, 1, 3]
            qkv.append(n("Transpose", [t], f"{p}.{k}.t", perm=perm))
        s = n("Div", [n("MatMul", [qkv[0], qkv[1]], f"{p}.qk"), "sqrt_dh"], f"{p}.scaled")
        a = n("MatMul", [n("Softmax", [s], f"{p}.sm", axis=-1), qkv[2]], f"{p}.av")
        a = n("Reshape", [n("Transpose", [a], f"{p}.av.t", perm=[0, 2, 1, 3]), "merge_heads"], f"{p}.av.r")
        x = ln(n("Add", [dense(a, hidden, hidden, f"{p}.o"), x], f"{p}.res1"), f"{p}.ln1")
        h = dense(x, hidden, ffn, f"{p}.ff1")
        erf = n("Erf", [n("Mul", [h, "rsqrt2"], f"{p}.g1")], f"{p}.g2")
        h = n("Mul", [n("Mul", [h, "half"], f"{p}.g3"), n("Add", [erf, "one"], f"{p}.g4")], f"{p}.gelu")
        x = ln(n("Add", [dense(h, ffn, hidden, f"{p}.ff2"), x], f"{p}.res2"), f"{p}.ln2")
    nodes[-1].output[0] = "last_hidden"
    g = helper.make_graph(nodes, "bert_base_like", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])],
                          [helper.make_tensor_value_info("last_hidden", TensorProto.FLOAT, [1, seq, hidden])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        m = build(args.layers, args.seq)
        params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
        onnx.save(m, d / "bert.onnx")
        ids = np.random.default_rng(1).integers(0, 30522, (args.samples, 1, args.seq)).astype(np.int64)
        np.savez(d / "calib.npz", input_ids=ids)
        # the pass calibrates on at most calib_samples (default 128); a recipe raises it to every sample
        (d / "r.yaml").write_text(f"passes:\n  - quantize: {{calib_samples: {args.samples}}}\n")
        cmd = [sys.executable, "-m", "onnxslim_compress", "compress", str(d / "bert.onnx"), "-o", str(d / "q.onnx"),
               "--recipe", str(d / "r.yaml"), "--calib", str(d / "calib.npz"), "--threads", "2", "--json"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        rep = json.loads(r.stdout) if r.returncode == 0 else {}
        q = next((p for p in rep.get("passes", []) if p["name"] == "quantize"), {})
        out = {
            "params": params, "model_bytes": os.path.getsize(d / "bert.onnx"), "samples": args.samples, "seq": args.seq,
            "rc": r.returncode, "peak_rss_bytes": peak, "wall_s": round(wall, 1),
            "calib_samples_used": q.get("params", {}).get("calib_samples"), "integer_kernels": q.get("stats", {}).get("integer_kernels"),
            "stderr": r.stderr.strip().splitlines()[-1:] if r.returncode else [],
        }
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
