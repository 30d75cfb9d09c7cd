"""Benchmark the prune_channels pass on real models (CPU EP): MACs, latency, fidelity, recovery.

    python benchmarks/bench_prune.py                       # all models, writes benchmarks/results/prune.json
    python benchmarks/bench_prune.py --models digits --ratios 0.3 --runs 20

Per model (YOLOv8n, PP-OCRv4 det, the bundled digits CNN when present) and ratio (0.2/0.3/0.5):
- MACs removed: achieved fraction of prunable MACs (what --prune asks for) and of all Conv/Gemm/MatMul
  MACs, counted by onnxslim_compress.macs on the written graphs (independent of the pass's counter);
- latency ratio pruned/original on the CPU EP, interleaved runs in one process
  (onnxslim_compress.profiler.compare, median ratio and p10-p90);
- fidelity on held-out data (the eval split; digits: its test set): relative L2 error and cosine of all
  outputs against the original, without and with recovery (least-squares refit on the calib split),
  and top-1 accuracy for digits;
- a round_to sweep at ratio 0.3 (latency only), because unaligned channel counts can be slower.
"""

from __future__ import annotations

import os

# one BLAS thread: the 2-core machine is shared and OpenBLAS spinning starves ORT and the Gram updates
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxslim_compress.graph.costs import count_costs  # noqa: E402
from onnxslim_compress.graph.io import load_model  # noqa: E402
from onnxslim_compress.passes.context import Context  # noqa: E402
from onnxslim_compress.passes.prune.prune_channels import PruneChannels  # noqa: E402
from onnxslim_compress.runtime.metrics import pooled_fidelity as fidelity  # noqa: E402
from onnxslim_compress.runtime.profiler import compare  # noqa: E402
from onnxslim_compress.runtime.session import Target, make_session  # noqa: E402

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def weight_macs(m: onnx.ModelProto, shapes: dict) -> int:
    return sum(n.macs for n in count_costs(m, shapes).nodes if n.op_type in WEIGHT_OPS)


def load_task(name: str, n_calib: int, n_eval: int):
    """(model, calib feeds, eval feeds, eval labels or None)."""
    if name == "digits":
        path = ROOT / "models" / "digits_cnn.onnx"
        if not path.exists():
            return None
        m = load_model(path)
        inp = m.graph.input[0].name

        def feeds(npz: Path, n: int) -> list[dict]:
            with np.load(npz) as z:
                arr = z[inp] if inp in z.files else z[z.files[0]]
            return [{inp: arr[i]} for i in range(min(n, len(arr)))]

        labels = np.load(ROOT / "models" / "digits_test_labels.npy")
        ev = feeds(ROOT / "models" / "digits_test.npz", 10**9)
        return m, feeds(ROOT / "models" / "digits_calib.npz", n_calib), ev, labels[: len(ev)]
    from models.datasets import build, load
    from models.fetch import fetch

    m = load_model(fetch(name))

    def split(s: str, n: int) -> list[dict]:
        d = load(build(name, s))
        k = len(next(iter(d.values())))
        return [{x: v[i] for x, v in d.items()} for i in range(min(n, k))]

    return m, split("calib", n_calib), split("eval", n_eval), None


def accuracy(m: onnx.ModelProto, data: list[dict], labels: np.ndarray) -> float:
    s = make_session(m, Target(kind="cpu", threads=1))
    pred = [int(np.argmax(s.run(None, f)[0])) for f in data]
    return float(np.mean(np.asarray(pred) == labels))


def markdown(results: list[dict]) -> str:
    """The tables of the BENCHMARKS.md section."""
    lines = [
        "| model | ratio | achieved (prunable MACs) | Conv/Gemm/MatMul MACs removed | latency ratio (p10-p90) | "
        "rel. L2 plain | rel. L2 recovered | cosine plain | cosine recovered | top-1 plain / recovered (orig) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "round_to" in r:
            continue
        acc = "-"
        if "acc_orig" in r:
            acc = f"{r['acc_plain']:.3f} / {r['acc_recovered']:.3f} ({r['acc_orig']:.3f})"
        lines.append(
            f"| {r['model']} | {r['ratio']} | {r['achieved']:.3f} | {r['macs_removed_total']:.3f} | "
            f"{r['latency_ratio']:.2f} ({r['latency_p10_p90'][0]:.2f}-{r['latency_p10_p90'][1]:.2f}) | "
            f"{r['fidelity_plain']['rel_l2']:.3f} | {r['fidelity_recovered']['rel_l2']:.3f} | "
            f"{r['fidelity_plain']['cosine']:.4f} | {r['fidelity_recovered']['cosine']:.4f} | {acc} |"
        )
    lines += ["", "| model | round_to | achieved | latency ratio (p10-p90) |", "|---|---|---|---|"]
    for r in results:
        if "round_to" in r:
            lines.append(
                f"| {r['model']} | {r['round_to']} | {r['achieved']:.3f} | {r['latency_ratio']:.2f} "
                f"({r['latency_p10_p90'][0]:.2f}-{r['latency_p10_p90'][1]:.2f}) |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["yolov8n", "ppocr_det", "digits"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.3, 0.5])
    ap.add_argument("--round-to", nargs="+", type=int, default=[1, 4, 8, 16], help="sweep at ratio 0.3")
    ap.add_argument("--default-round-to", type=int, default=None, help="round_to of the ratio runs (pass default)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prune.json"))
    args = ap.parse_args()
    target = Target(kind="cpu", threads=args.threads)
    results = []
    for name in args.models:
        task = load_task(name, args.calib, args.eval)
        if task is None:
            print(f"{name}: not available, skipped", flush=True)
            continue
        m, calib, ev, labels = task
        shapes = {k: list(v.shape) for k, v in calib[0].items()}
        base_macs = weight_macs(m, shapes)
        base_acc = accuracy(m, ev, labels) if labels is not None else None
        extra = {} if args.default_round_to is None else {"round_to": args.default_round_to}
        for ratio in args.ratios:
            t0 = time.perf_counter()
            plain = PruneChannels(ratio=ratio, recover=False, **extra)(m, Context(input_shapes=shapes))
            t1 = time.perf_counter()
            rec = PruneChannels(ratio=ratio, recover=True, calib_samples=args.calib, **extra)(
                m, Context(input_shapes=shapes, calib=calib)
            )
            t2 = time.perf_counter()
            ab = compare(m, plain.model, ev[0], target, warmup=5, runs=args.runs)
            f_plain, f_rec = fidelity(m, [plain.model, rec.model], ev, len(ev))
            row = {
                "model": name,
                "ratio": ratio,
                "achieved": plain.stats["ratio_achieved"],
                "macs_removed_total": 1 - weight_macs(plain.model, shapes) / base_macs,
                "latency_ratio": ab.ratio,
                "latency_p10_p90": [ab.ratio_p10, ab.ratio_p90],
                "orig_ms": ab.a.median,
                "pruned_ms": ab.b.median,
                "fidelity_plain": f_plain,
                "fidelity_recovered": f_rec,
                "recovery_kept": rec.stats.get("recovery", {}).get("kept"),
                "prune_s": t1 - t0,
                "prune_recover_s": t2 - t1,
            }
            if labels is not None:
                row["acc_orig"] = base_acc
                row["acc_plain"] = accuracy(plain.model, ev, labels)
                row["acc_recovered"] = accuracy(rec.model, ev, labels)
            results.append(row)
            print(json.dumps(row), flush=True)
        for r in args.round_to:
            res = PruneChannels(ratio=0.3, round_to=r, recover=False)(m, Context(input_shapes=shapes))
            ab = compare(m, res.model, ev[0], target, warmup=5, runs=args.runs)
            row = {"model": name, "ratio": 0.3, "round_to": r, "achieved": res.stats["ratio_achieved"],
                   "latency_ratio": ab.ratio, "latency_p10_p90": [ab.ratio_p10, ab.ratio_p90]}
            results.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(markdown(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
