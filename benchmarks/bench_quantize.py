"""Benchmark the quantize pass against ONNX Runtime's quantizer on real models (CPU EP, 2 threads).

    python benchmarks/bench_quantize.py                       # all models, writes benchmarks/results/quantize.json
    python benchmarks/bench_quantize.py --models digits ppocr_rec --runs 20

Per model and tool (ours: `quantize` int8 for target cpu; ORT quantize_static QDQ per-channel U8S8
MinMax on the same calibration data, opset upgraded to 13 first; ORT quantize_dynamic), each tool
runs in its own subprocess so its wall time and peak RSS (VmHWM) are its own. Latency is the
ratio quantized/fp32 from interleaved runs in one process (onnxslim_compress.profiler.compare), and
fidelity is the model's task metric on held-out data (models/datasets.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ort_anchors  # noqa: E402

MODELS = ["digits", "yolov8n", "ppocr_det", "ppocr_rec", "minilm"]
TOOLS = ["ours", "ort_static", "ort_dynamic"]
#: per-model pass options the benchmark uses (the recipe a user would write for that model)
OURS_OPTIONS: dict[str, dict] = {}


def model_path(name: str) -> Path:
    if name == "digits":
        return ROOT / "models" / "digits_cnn.onnx"
    from models.fetch import fetch

    return Path(fetch(name))


def calib_feeds(name: str) -> list[dict[str, np.ndarray]]:
    if name == "digits":
        z = np.load(ROOT / "models" / "digits_calib.npz")
        k = z.files[0]
        return [{k: z[k][i]} for i in range(len(z[k]))]
    from models import datasets

    return list(datasets.iter_feeds(datasets.build(name, "calib")))


def eval_set(name: str) -> tuple[list[dict[str, np.ndarray]], dict]:
    if name == "digits":
        z = np.load(ROOT / "models" / "digits_test.npz")
        k = z.files[0]
        return [{k: z[k][i]} for i in range(len(z[k]))], {"labels": np.load(ROOT / "models" / "digits_test_labels.npy")}
    from models import datasets

    path = datasets.build(name, "eval", 32 if name == "ppocr_rec" else None)
    meta = datasets.labels(name, "eval", 32 if name == "ppocr_rec" else None)
    return list(datasets.iter_feeds(path)), meta


# ------------------------------------------------------------------------------------------ workers


def worker(tool: str, name: str, out: str) -> dict:
    """Run one tool on one model (in a fresh process) and report wall time, peak RSS and stats."""
    t0 = time.perf_counter()
    src = model_path(name)
    stats: dict = {}
    feeds = calib_feeds(name)
    if tool.startswith("ours"):
        from onnxslim_compress import Context, Target, load_model, save_model
        from onnxslim_compress.passes.quantize.quantize import Quantize

        ctx = Context(target=Target("cpu", threads=2), calib=feeds)
        opts = dict(OURS_OPTIONS.get(name, {}))
        if ":" in tool:  # ours:METHOD, the calibration sweep
            opts["calibration"] = tool.split(":", 1)[1]
        res = Quantize(**opts)(load_model(src), ctx)
        save_model(res.model, out)
        stats = {k: v for k, v in res.stats.items() if k in ("integer_kernels", "integer_kernels_by_op", "kept_float",
                                                             "quantized_units", "fidelity", "opset_out", "calibration")}
    else:  # the shared ORT anchors (benchmarks/ort_anchors.py); this benchmark's figures were taken without pre-processing
        with tempfile.TemporaryDirectory() as d:
            ort_anchors.quantize(tool, Path(src), out, feeds, Path(d), [], pre_process=False)
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(_peak_rss_kb() / 1024, 1), "stats": stats}


def _peak_rss_kb() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the
    parent (the driver, which holds the models), so every worker would report at least its size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ------------------------------------------------------------------------------------------ driver


def _outputs(sess, feeds):
    names = [i.name for i in sess.get_inputs()]
    return [sess.run(None, {n: f[n] for n in names}) for f in feeds]


def task_metric(name: str, ref: list, got: list, meta: dict) -> dict[str, float]:
    """Task fidelity of `got` (and, for reference, of the fp32 `ref`)."""
    from models import datasets

    if name == "digits":
        lab = meta["labels"]
        acc = float(np.mean([int(np.argmax(o[0])) == int(y) for o, y in zip(got, lab, strict=True)]))
        return {"accuracy": acc}
    if name == "ppocr_rec":
        texts = meta["texts"]
        dec = [datasets.decode_rec(o[0])[0] for o in got]
        decr = [datasets.decode_rec(o[0])[0] for o in ref]
        return {"exact_match": float(np.mean([a == b for a, b in zip(dec, texts, strict=True)])),
                "agree_fp32": float(np.mean([a == b for a, b in zip(dec, decr, strict=True)]))}
    if name == "minilm":
        return {"embedding_cosine": float(np.mean([datasets.cosine_rows(r[3], g[3])[0] for r, g in zip(ref, got, strict=True)]))}
    cos = [datasets.cosine_rows(r[0], g[0])[0] for r, g in zip(ref, got, strict=True)]
    return {"output_cosine": float(np.mean(cos))}


def sweep_model(name: str, tmp: Path) -> dict:
    """Fidelity of our pass per calibration method (no latency): how the default was chosen."""
    import onnx

    from onnxslim_compress import Target
    from onnxslim_compress.runtime.session import make_session

    target = Target("cpu", threads=2)
    feeds, meta = eval_set(name)
    ref = _outputs(make_session(onnx.load(str(model_path(name))), target), feeds)
    row = {}
    for method in ("auto", "minmax", "percentile", "entropy", "mse"):
        out = tmp / f"{name}_{method}.onnx"
        proc = subprocess.run([sys.executable, __file__, "--worker", f"ours:{method}", name, str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            row[method] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
            continue
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        got = _outputs(make_session(onnx.load(str(out)), target), feeds)
        row[method] = {"fidelity": task_metric(name, ref, got, meta), "wall_s": info["wall_s"]}
        print(f"  {name} {method}: {json.dumps(row[method])}", flush=True)
    return row


def bench_model(name: str, runs: int, tmp: Path) -> dict:
    import onnx

    from onnxslim_compress import Target
    from onnxslim_compress.graph.io import clamp_ir_version
    from onnxslim_compress.runtime.profiler import compare
    from onnxslim_compress.runtime.session import make_session

    target = Target("cpu", threads=2)
    src = model_path(name)
    feeds, meta = eval_set(name)
    fp32 = onnx.load(str(src))
    clamp_ir_version(fp32)
    ref = _outputs(make_session(fp32, target), feeds)
    row: dict = {"fp32": task_metric(name, ref, ref, meta)}
    for tool in TOOLS:
        out = tmp / f"{name}_{tool}.onnx"
        proc = subprocess.run([sys.executable, __file__, "--worker", tool, name, str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            row[tool] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
            print(f"  {name} {tool}: FAILED {row[tool]['error']}", flush=True)
            continue
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        try:
            q = onnx.load(str(out))
            got = _outputs(make_session(q, target), feeds)
            info["fidelity"] = task_metric(name, ref, got, meta)
            ab = compare(fp32, q, feeds[0], target, warmup=5, runs=runs)
            info["latency_ratio"] = round(ab.ratio, 3)
            info["latency_p10_p90"] = [round(ab.ratio_p10, 3), round(ab.ratio_p90, 3)]
            info["fp32_ms"] = round(ab.a.median, 2)
            info["quant_ms"] = round(ab.b.median, 2)
        except Exception as e:  # noqa: BLE001 - a tool's broken model is a result, not a crash
            info["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        row[tool] = info
        print(f"  {name} {tool}: {json.dumps(info)}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quantize.json"))
    ap.add_argument("--sweep", action="store_true", help="fidelity per calibration method instead of the comparison")
    ap.add_argument("--worker", nargs=3, metavar=("TOOL", "MODEL", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(*a.worker)))
        return 0
    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for name in a.models:
            if name == "digits" and not model_path(name).exists():
                print("  digits: models/digits_cnn.onnx not present, skipped", flush=True)
                continue
            print(f"{name}:", flush=True)
            results[name] = sweep_model(name, Path(d)) if a.sweep else bench_model(name, a.runs, Path(d))
    results["_meta"] = {"total_s": round(time.perf_counter() - t0, 1), "threads": 2, "runs": a.runs,
                        "command": "python benchmarks/bench_quantize.py " + " ".join(argv or sys.argv[1:])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1, default=str))
    print(f"total {results['_meta']['total_s']} s -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
