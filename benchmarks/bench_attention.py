"""Attention fusion and int8 on the transformer encoders, at the sequence lengths users run.

    python benchmarks/bench_attention.py [--models minilm minilm_l6] [--seq 32 128] [--runs 300] [--threads 1]

Why: the zoo (bench_zoo.py) measures the encoders at 32 tokens, where attention is a small share
of the time; sentence encoders run at 64-256. Per model and sequence length L, on passages of real
sentences (models/datasets.passages: consecutive sentences joined to about L tokens, the shipped
tokenizer; calibration and evaluation from disjoint sentence pools, 32 + 16 passages):

  fp32  the original; onnxslim's output; ours lossless (`compress` with no pass options: simplify,
        fold_batchnorm, fuse_attention, eliminate_dead)
  int8  ORT quantize_dynamic of the original (the faster ORT anchor on both models, bench_zoo);
        ours `compress --quantize int8 --calib` (all defaults, the default fidelity floor)

Fidelity: mean cosine of the sentence embedding against the original's on the evaluation passages.
Latency: all five models timed in ONE interleaved run (the order rotating through permutations), so
every ratio is against the same original: median ratio vs the original, and ours int8 / ORT dynamic
directly, each with a bootstrap 95 % interval. Writes benchmarks/results/attention.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_zoo import interleaved_n  # noqa: E402
from ort_anchors import quantize as ort_quantize  # noqa: E402
from run_all import machine_info  # noqa: E402

from models import datasets as D  # noqa: E402
from models.fetch import fetch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: the pooled sentence embedding each model outputs (what a user of a sentence encoder reads)
EMBEDDING = {"minilm": "461", "minilm_l6": "sentence_embedding"}
TOOLS = ("fp32", "onnxslim", "ours_lossless", "ort_dynamic", "ours_int8")


def _cosine(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    a, b = np.concatenate([r.reshape(1, -1) for r in ref]), np.concatenate([g.reshape(1, -1) for g in got])
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def bench(name: str, seq: int, runs: int, threads: int, tmp: Path) -> dict:
    import onnx
    import onnxslim

    from onnxslim_compress import Target
    from onnxslim_compress.graph.index import op_counts
    from onnxslim_compress.graph.io import clamp_ir_version
    from onnxslim_compress.jobs.compress import compress, flags_pipeline
    from onnxslim_compress.runtime.profiler import ab_from_samples
    from onnxslim_compress.runtime.session import make_session

    target = Target("cpu", threads=threads)
    src = Path(fetch(name))
    calib, _ = D.passages(name, "calib", 32, seq)
    evals, _ = D.passages(name, "eval", 16, seq)
    files, notes, build_s = {"fp32": src}, [], {}
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        slim = onnxslim.slim(onnx.load(str(src)))
    clamp_ir_version(slim)
    files["onnxslim"] = tmp / "onnxslim.onnx"
    onnx.save(slim, str(files["onnxslim"]))
    build_s["onnxslim"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lossless = compress(str(src), tmp / "ours_lossless.onnx", calib=calib, target=target)
    build_s["ours_lossless"] = time.perf_counter() - t0
    files["ours_lossless"] = tmp / "ours_lossless.onnx"
    t0 = time.perf_counter()
    ort_quantize("ort_dynamic", src, str(tmp / "ort_dynamic.onnx"), calib, tmp, notes)
    build_s["ort_dynamic"] = time.perf_counter() - t0
    files["ort_dynamic"] = tmp / "ort_dynamic.onnx"
    t0 = time.perf_counter()
    q = compress(str(src), tmp / "ours_int8.onnx", pipeline=flags_pipeline(quantize={"mode": "int8"}), calib=calib, target=target)
    build_s["ours_int8"] = time.perf_counter() - t0
    files["ours_int8"] = tmp / "ours_int8.onnx"
    fused = next((p["stats"].get("fused", 0) for p in lossless.report["passes"] if p["name"] == "fuse_attention"), 0)
    out = EMBEDDING[name]
    sessions = {t: make_session(onnx.load(str(f)), target) for t, f in files.items()}
    embed = {t: [s.run([out], f)[0] for f in evals] for t, s in sessions.items()}
    feed = evals[0]
    times = interleaved_n([lambda s=s: s.run(None, feed) for s in sessions.values()], warmup=10, runs=runs)
    by = dict(zip(sessions, times, strict=True))
    row: dict = {"model": name, "seq": seq, "tokens_mean": round(float(np.mean([f["attention_mask"].sum() for f in evals])), 1),
                 "fused": fused, "runs": runs, "notes": notes, "tools": {}}
    for t in TOOLS:
        ab = ab_from_samples(by["fp32"], by[t], target)
        m = onnx.load(str(files[t]), load_external_data=False)
        row["tools"][t] = {"cosine": round(_cosine(embed["fp32"], embed[t]), 5), "median_ms": round(float(np.median(by[t])), 3),
                           "vs_fp32": round(ab.ratio, 3), "ci95": [round(float(x), 3) for x in ab.ratio_ci95],
                           "nodes": len(m.graph.node), "attention_kernels": op_counts(m).get("MultiHeadAttention", 0),
                           "build_s": round(build_s.get(t, 0.0), 1)}
    d = ab_from_samples(by["ort_dynamic"], by["ours_int8"], target)
    row["ours_int8_over_ort_dynamic"] = {"ratio": round(d.ratio, 3), "ci95": [round(float(x), 3) for x in d.ratio_ci95]}
    d = ab_from_samples(by["onnxslim"], by["ours_lossless"], target)
    row["ours_lossless_over_onnxslim"] = {"ratio": round(d.ratio, 3), "ci95": [round(float(x), 3) for x in d.ratio_ci95]}
    qs = next((p["stats"] for p in q.report["passes"] if p["name"] == "quantize"), {})
    row["ours_int8_units"] = {k: qs.get(k) for k in ("quantized_units", "dynamic_units", "integer_kernels")}
    row["ours_int8_floor"] = q.report.get("no_harm", {}).get("measured")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(EMBEDDING), choices=list(EMBEDDING))
    ap.add_argument("--seq", nargs="+", type=int, default=[32, 128])
    ap.add_argument("--runs", type=int, default=300, help="interleaved rounds (each runs all five models once)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attention.json"))
    a = ap.parse_args(argv)
    meta = {"machine": machine_info(), "threads": a.threads, "runs": a.runs,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python benchmarks/bench_attention.py " + shlex.join(argv if argv is not None else sys.argv[1:])}
    t0 = time.perf_counter()
    rows = []
    for name in a.models:
        for seq in a.seq:
            with tempfile.TemporaryDirectory() as d:
                row = bench(name, seq, a.runs, a.threads, Path(d))
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta.update(total_s=round(time.perf_counter() - t0, 1), loadavg_end=[round(x, 2) for x in os.getloadavg()],
                finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    Path(a.out).write_text(json.dumps({"_meta": meta, "rows": rows}, indent=1, default=str))
    print(f"total {meta['total_s']} s -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
