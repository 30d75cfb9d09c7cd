"""Size and MACs of every tool's output, per model: the columns the other sections do not record.

    python benchmarks/bench_footprint.py                      # all models, writes benchmarks/results/footprint.json
    python benchmarks/bench_footprint.py --models digits yolov8n

Per model: the original, this project's lossless `compress` and `--quantize int8` (the quantize
pass with its defaults, as in bench_quantize.py), onnxslim with its defaults, and ORT's
quantize_static (QDQ, per-channel, U8S8) / quantize_dynamic. Each tool runs in its own subprocess,
so its wall time and peak RSS (VmHWM) are its own; the quantizers run through bench_quantize.py's
own worker, so the models measured here are built exactly like the ones whose latency and fidelity
the Quantization section reports. Then: file size on disk, and MACs / parameters counted by
onnxslim_compress.macs at the data set's input shapes (quantization keeps the MAC count: the
counter follows DequantizeLinear to the weights).

No latency here: latency and fidelity come from the sections that time them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["digits", "yolov8n", "ppocr_det", "ppocr_rec", "ppocr_cls", "minilm"]
#: tool -> script whose --worker builds it; quantizers are skipped for models bench_quantize does not cover
TOOLS = {"ours_lossless": "self", "onnxslim": "self", "ours": "bench_quantize.py", "ort_static": "bench_quantize.py",
         "ort_dynamic": "bench_quantize.py"}
QUANTIZED_MODELS = {"digits", "yolov8n", "ppocr_det", "ppocr_rec", "minilm"}


def model_path(name: str) -> Path:
    if name == "digits":
        return ROOT / "models" / "digits_cnn.onnx"
    from models.fetch import fetch

    return Path(fetch(name))


def input_shapes(name: str) -> dict[str, list[int]]:
    """The shapes every benchmark feeds (one sample of the data set, batch 1)."""
    if name == "digits":
        return {"input": [1, 1, 32, 32]}
    from models import datasets

    feed = next(datasets.iter_feeds(datasets.build(name, "eval")))
    return {k: list(v.shape) for k, v in feed.items()}


def _peak_rss_mb() -> float:
    """VmHWM of this process (not ru_maxrss, which Linux carries over exec from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker(tool: str, name: str, out: str) -> dict:
    """Build `tool`'s output of model `name` into `out` in this (fresh) process."""
    import contextlib
    import io

    t0 = time.perf_counter()
    from onnxslim_compress.graph.io import load_model, save_model

    model = load_model(model_path(name))
    if tool == "ours_lossless":
        from onnxslim_compress.jobs.compress import compress

        save_model(compress(model).model, out)
    elif tool == "onnxslim":
        import onnxslim

        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(model)
        save_model(slim, out)
    else:
        raise SystemExit(f"unknown tool {tool}")
    return {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def measure(path: Path, shapes: dict[str, list[int]]) -> dict:
    from onnxslim_compress.graph.costs import count_costs
    from onnxslim_compress.graph.io import load_model

    total = count_costs(load_model(path), shapes).total
    return {"size_bytes": path.stat().st_size, "macs": total.macs, "params": total.params, "nodes": total.nodes}


def bench_model(name: str, tmp: Path) -> dict:
    shapes = input_shapes(name)
    src = model_path(name)
    row: dict = {"input_shapes": shapes, "original": measure(src, shapes)}
    for tool, script in TOOLS.items():
        if script != "self" and name not in QUANTIZED_MODELS:
            continue
        out = tmp / f"{name}_{tool}.onnx"
        runner = __file__ if script == "self" else str(ROOT / "benchmarks" / script)
        proc = subprocess.run([sys.executable, runner, "--worker", tool, name, str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            row[tool] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
        else:
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            row[tool] = {"wall_s": info["wall_s"], "peak_rss_mb": info["peak_rss_mb"], **measure(out, shapes)}
        print(f"  {name} {tool}: {json.dumps(row[tool])}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "footprint.json"))
    ap.add_argument("--worker", nargs=3, metavar=("TOOL", "MODEL", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(*a.worker)))
        return 0
    t0 = time.perf_counter()
    results: dict = {}
    with tempfile.TemporaryDirectory() as d:
        for name in a.models:
            if name == "digits" and not model_path(name).exists():
                continue
            print(f"{name}:", flush=True)
            results[name] = bench_model(name, Path(d))
    results["_meta"] = {"total_s": round(time.perf_counter() - t0, 1),
                        "command": "python benchmarks/bench_footprint.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(f"total {results['_meta']['total_s']} s -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
