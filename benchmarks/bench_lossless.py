"""Lossless compression vs onnxslim alone, on every real model and the bundled one.

    python benchmarks/bench_lossless.py [--runs 50] [--threads 2] [--models minilm minilm_l6] [--merge] [--json out.json]

For each model: nodes and BatchNormalization count before/after, worst relative L2 error of the
outputs on real eval inputs, tool wall time, and the latency ratio vs the original on the CPU EP
(interleaved runs in one process; median of B/A with the p10-p90 of per-round ratios and the
bootstrap 95 % interval), plus ours timed directly against onnxslim's output (ours / onnxslim):
separate A/Bs against the original drift by more than the effect on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import datasets, fetch  # noqa: E402
from onnxslim_compress.graph.index import op_counts  # noqa: E402
from onnxslim_compress.graph.io import clamp_ir_version, load_model  # noqa: E402
from onnxslim_compress.jobs.compress import compress  # noqa: E402
from onnxslim_compress.runtime.profiler import compare  # noqa: E402
from onnxslim_compress.runtime.session import Target, make_session  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


DEFAULT_MODELS = ["digits_cnn", "yolov8n", "ppocr_det", "ppocr_rec", "ppocr_cls", "minilm", "minilm_l6"]


def models(names: list[str]) -> list[tuple[str, object, list[dict]]]:
    out = []
    digits = ROOT / "models" / "digits_cnn.onnx"
    if "digits_cnn" in names and digits.exists():
        z = np.load(ROOT / "models" / "digits_test.npz")
        x = z["input"][:8]
        out.append(("digits_cnn", load_model(digits), [{"input": s} for s in x]))
    for name in [n for n in names if n != "digits_cnn"]:
        feeds = list(datasets.iter_feeds(datasets.build(name, "eval")))[:8]
        out.append((name, load_model(fetch.fetch(name)), feeds))
    return out


def worst_rel(a, b, feeds) -> float:
    sa, sb = make_session(a, Target(threads=2)), make_session(b, Target(threads=2))
    worst = 0.0
    for f in feeds:
        for x, y in zip(sa.run(None, f), sb.run(None, f), strict=True):
            if x.dtype.kind == "f":
                worst = max(worst, float(np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-12)))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--merge", action="store_true", help="replace only these models' rows in --json")
    ap.add_argument("--json")
    args = ap.parse_args()
    import onnxslim

    target = Target(threads=args.threads)
    rows = []
    for name, model, feeds in models(args.models):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(model)
        t_slim = time.perf_counter() - t0
        clamp_ir_version(slim)
        t0 = time.perf_counter()
        ours = compress(model).model
        t_ours = time.perf_counter() - t0
        row = {"model": name, "nodes": len(model.graph.node), "bn": op_counts(model).get("BatchNormalization", 0)}
        for tool, m, secs in (("onnxslim", slim, t_slim), ("ours", ours, t_ours)):
            ab = compare(model, m, feeds[0], target, runs=args.runs)
            row[tool] = {
                "nodes": len(m.graph.node),
                "bn": op_counts(m).get("BatchNormalization", 0),
                "rel_err": worst_rel(model, m, feeds),
                "seconds": round(secs, 2),
                "latency_ratio": round(ab.ratio, 3),
                "ratio_p10_p90": [round(ab.ratio_p10, 3), round(ab.ratio_p90, 3)],
                "ratio_ci95": [round(float(x), 3) for x in ab.ratio_ci95],
                "ops": {k: v for k, v in op_counts(m).items() if k in ("MultiHeadAttention", "Softmax")},
            }
        direct = compare(slim, ours, feeds[0], target, runs=args.runs)
        row["ours_over_onnxslim"] = {"ratio": round(direct.ratio, 3), "ci95": [round(float(x), 3) for x in direct.ratio_ci95]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| model | nodes | onnxslim: nodes / latency ratio (p10-p90) / rel err / s | ours: nodes / latency ratio (p10-p90) / rel err / s |")
    print("|---|---|---|---|")
    for r in rows:
        cells = []
        for tool in ("onnxslim", "ours"):
            t = r[tool]
            cells.append(
                f"{t['nodes']} / {t['latency_ratio']:.2f} ({t['ratio_p10_p90'][0]:.2f}-{t['ratio_p10_p90'][1]:.2f}) / "
                f"{t['rel_err']:.1e} / {t['seconds']:.1f}"
            )
        print(f"| {r['model']} | {r['nodes']} (BN {r['bn']}) | {cells[0]} | {cells[1]} |")
    if args.json:
        path = Path(args.json)
        if args.merge and path.exists():
            new = {r["model"]: r for r in rows}
            old = json.loads(path.read_text())
            rows = [new.pop(r["model"], r) for r in old] + list(new.values())
        path.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
