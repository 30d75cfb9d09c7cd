"""Benchmark the profiler-driven search (issue 6) on real models, CPU EP.

    python benchmarks/bench_search.py                                  # digits, yolov8n, ppocr_det
    python benchmarks/bench_search.py --models digits --trials 20 --runs 30 --threads 2

Per model:
- fixed presets (quantize int8; prune 0.3; low rank energy 0.9; prune 0.3 + quantize), each built and
  measured exactly like a search trial; the best one meeting the constraint is "the best fixed preset";
- ONNX Runtime's quantizer alone: quantize_static, QDQ, U8S8, per-channel, MinMax (opset upgraded to 13);
- the search with the default recipe (every installed pass) for --trials trials;
- a final round that re-times the search's best, the best preset and ORT's model against the
  baseline with --final-runs interleaved runs each, so the three speedups come from one sitting;
- wall time per trial with and without reuse (prefix + pass-statistics cache), on a fixed list of
  trials that share prefixes, without latency timing (identical in both modes).
Constraint: labelled accuracy drop <= 1 % for digits; output cosine drop <= --max-drop elsewhere.
Writes --out (JSON) and prints one line per figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["digits", "yolov8n", "ppocr_det"]
PRESETS = {
    "quantize int8": {"quantize": {"mode": "int8"}},
    "prune 0.3": {"prune": {"ratio": 0.3}},
    "lowrank energy 0.9": {"lowrank": {"mode": "energy", "value": 0.9}},
    "prune 0.3 + quantize int8": {"prune": {"ratio": 0.3}, "quantize": {"mode": "int8"}},
}
#: trials for the cache benchmark: they share prefixes the way a search's trials do
CACHE_TRIALS = [
    {"prune": {"ratio": 0.3}},
    {"prune": {"ratio": 0.3}, "quantize": {"mode": "int8", "calibration": "percentile"}},
    {"prune": {"ratio": 0.3}, "quantize": {"mode": "int8", "calibration": "minmax"}},
    {"lowrank": {"mode": "energy", "value": 0.9}},
    {"lowrank": {"mode": "energy", "value": 0.9}, "quantize": {"mode": "int8", "calibration": "percentile"}},
    {"prune": {"ratio": 0.3}, "lowrank": {"mode": "energy", "value": 0.9}},
]


class _Skip(Exception):
    """--trials 0: presets, ORT and the cache figures only."""


def model_path(name: str) -> Path:
    if name == "digits":
        return ROOT / "models" / "digits_cnn.onnx"
    from models.fetch import fetch

    return Path(fetch(name))


def data_paths(name: str) -> tuple[Path, Path, Path | None]:
    """(calib, eval, labels or None): files, so the search stores them in its study."""
    if name == "digits":
        m = ROOT / "models"
        return m / "digits_calib.npz", m / "digits_test.npz", m / "digits_test_labels.npy"
    from models import datasets

    return datasets.build(name, "calib"), datasets.build(name, "eval"), None


def _pipeline_passes(spec: dict):
    from onnxslim_compress.jobs.compress import flags_pipeline

    return flags_pipeline(spec.get("prune"), spec.get("lowrank"), spec.get("quantize")).passes


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


def bench_model(name: str, a: argparse.Namespace, tmp: Path) -> dict:
    import onnx

    from onnxslim_compress.data import open_data
    from onnxslim_compress.passes.context import Context
    from onnxslim_compress.runtime.metrics import load_labels_any
    from onnxslim_compress.runtime.profiler import compare
    from onnxslim_compress.runtime.session import Target
    from onnxslim_compress.search import search
    from onnxslim_compress.search.build import TrialBuilder
    from onnxslim_compress.search.job import _load
    from onnxslim_compress.search.objective import Evaluator

    target = Target("cpu", threads=a.threads)
    src = model_path(name)
    calib_p, eval_p, labels_p = data_paths(name)
    metric, max_drop = ("accuracy", 0.01) if labels_p else ("cosine", a.max_drop)
    work = _load(src)
    calib = open_data(str(calib_p), work, limit=a.num_samples)
    evald = open_data(str(eval_p), work, limit=None if labels_p else a.num_samples)
    ev = Evaluator(work, target=target, eval_data=evald, metric=metric, max_drop=max_drop, objective="latency",  # type: ignore[arg-type]
                   labels=load_labels_any(str(labels_p)) if labels_p else None, warmup=5, runs=a.runs)
    row: dict = {"metric": metric, "max_drop": max_drop, "baseline_metric": ev.baseline_value(), "presets": {}}
    print(f"{name}: baseline {metric} {row['baseline_metric']:.4f}", flush=True)

    # fixed presets and ORT's quantizer, measured like trials
    builder = TrialBuilder(work, Context(target=target, calib=calib, seed=0))
    models: dict[str, onnx.ModelProto] = {}
    for label, spec in PRESETS.items():
        t0 = time.perf_counter()
        try:
            built = builder.build(_pipeline_passes(spec))
            m = ev.measure(built.model)
        except Exception as e:  # noqa: BLE001 - a preset that fails is a result
            row["presets"][label] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            print(f"  preset {label}: FAILED {row['presets'][label]['error']}", flush=True)
            continue
        models[label] = built.model
        row["presets"][label] = {"latency_ratio": round(m.objective, 3), "drop": round(m.drop, 5), "feasible": m.feasible,
                                 "seconds": round(time.perf_counter() - t0, 1)}
        print(f"  preset {label}: {row['presets'][label]}", flush=True)
    try:
        ort_model = _ort_quantize(src, calib, tmp)
        m = ev.measure(ort_model)
        models["ort quantize_static"] = ort_model
        row["ort_quantize_static"] = {"latency_ratio": round(m.objective, 3), "drop": round(m.drop, 5), "feasible": m.feasible}
    except Exception as e:  # noqa: BLE001
        row["ort_quantize_static"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    print(f"  ORT quantize_static: {row['ort_quantize_static']}", flush=True)

    # the search
    t0 = time.perf_counter()
    res = None
    if a.trials == 0:
        row["search"] = {"skipped": True}
    try:
        if a.trials == 0:
            raise _Skip
        res = search(
            src, tmp / f"{name}_search.onnx", calib=str(calib_p), eval_data=str(eval_p), labels=str(labels_p) if labels_p else None,
            metric=metric, max_drop=max_drop, trials=a.trials, target=target, runs=a.runs, warmup=5, seed=a.seed,
            num_samples=a.num_samples if not labels_p else None, sampler=a.sampler, table=True,
        )
    except _Skip:
        pass
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
            "best_trial": res.best.number if res.best else None,
            "best_params": res.best.params if res.best else None,
            "best_latency_ratio": round(res.best.objective, 3) if res.best else None,
            "best_drop": round(res.best.drop, 5) if res.best else None,
            "trials_to_feasible": r["trials_to_feasible"],
            "trials_to_best": r["trials_to_best"],
            "mean_trial_seconds": r["timing"]["mean_trial_seconds"],
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "cache": r["cache"],
        }
        if res.model is not None:
            models["search best"] = res.model
    print(f"  search: {row['search']}", flush=True)

    if a.search_model:  # the output of an earlier `search` run of this model
        models["search best"] = onnx.load(a.search_model)
    # one sitting: speedups of the search's best, the best feasible preset and ORT's quantizer
    feasible_presets = [k for k, v in row["presets"].items() if v.get("feasible")]
    best_preset = min(feasible_presets, key=lambda k: row["presets"][k]["latency_ratio"]) if feasible_presets else None
    final: dict = {}
    for label in ["search best", best_preset, "ort quantize_static"]:
        if label is None or label not in models:
            continue
        ab = compare(work, models[label], ev.feed, target, warmup=10, runs=a.final_runs)
        final[label] = {"latency_ratio": round(ab.ratio, 3), "speedup": round(1 / ab.ratio, 3),
                        "p10_p90": [round(ab.ratio_p10, 3), round(ab.ratio_p90, 3)], "baseline_ms": round(ab.a.median, 3)}
    row["final"] = {"best_preset": best_preset, **final}
    print(f"  final: {row['final']}", flush=True)

    # wall time per trial with and without reuse
    if a.cache_bench:
        qual = Evaluator(work, target=target, eval_data=evald, metric=metric, max_drop=max_drop, objective="macs",  # type: ignore[arg-type]
                         labels=ev.labels)
        qual.baseline_value()
        per: dict = {}
        for reuse in (True, False):
            b = TrialBuilder(work, Context(target=target, calib=calib, seed=0), reuse=reuse)
            secs = []
            for spec in CACHE_TRIALS:
                t1 = time.perf_counter()
                built = b.build(_pipeline_passes(spec))
                qual.quality(built.model)
                secs.append(time.perf_counter() - t1)
            per["with_cache" if reuse else "without_cache"] = {"mean_s": round(float(np.mean(secs)), 2),
                                                               "per_trial_s": [round(s, 2) for s in secs]}
        row["cache_bench"] = per
        print(f"  trial wall time: {per}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--trials", type=int, default=20, help="search trials (0: skip the search)")
    ap.add_argument("--runs", type=int, default=30, help="interleaved runs per trial's latency ratio")
    ap.add_argument("--final-runs", type=int, default=100, help="interleaved runs for the final comparison")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-drop", type=float, default=0.01, help="cosine drop for the unlabelled models")
    ap.add_argument("--num-samples", type=int, default=16, help="calibration/eval samples for the unlabelled models")
    ap.add_argument("--sampler", default="gp", choices=["gp", "tpe", "random"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search-model", help="with --trials 0: a model written by an earlier search, timed in the final round")
    ap.add_argument("--no-cache-bench", dest="cache_bench", action="store_false")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search.json"))
    a = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    results: dict = {"settings": vars(a)}
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
