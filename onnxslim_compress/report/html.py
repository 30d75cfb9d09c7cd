"""One self-contained HTML page for a compress or search report: no scripts, no external files.

A deployment engineer reviewing a compression wants the per-layer picture (what was pruned,
factorized, quantized or kept float, and why) next to latency and fidelity before/after; a page that
opens anywhere, including from a CI artifact, beats a JSON dump. So: figures as cards with bars,
one per-layer table whose cells are small inline-SVG bars (channels kept, rank, precision,
sensitivity) with the sensitive layers marked, latency per op type before/after as a bar chart, the
Pareto plot of a search, parameters as key/value lists (never a JSON string), long lists collapsed,
and nothing wider than the window: tables scroll inside their own box and long names wrap.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

CSS = """
*{box-sizing:border-box}
body{font:14px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
main{max-width:1180px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}h3{font-size:15px;margin:0 0 8px}
.sub{color:#57606a;overflow-wrap:anywhere}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 16px;margin:10px 0;min-width:0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(210px,1fr));gap:10px}
.cards .card{margin:0}
.big{font-size:22px;font-weight:600}.muted{color:#6e7781}.ok{color:#1a7f37}.bad{color:#cf222e}
.chip{display:inline-block;padding:0 7px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap}
.c-int8,.c-fp8,.c-int4{background:#dafbe1;color:#116329}.c-float{background:#fff1e5;color:#953800}
.c-fp16{background:#ddf4ff;color:#0550ae}.c-ok{background:#dafbe1;color:#116329}.c-bad{background:#ffebe9;color:#a40e26}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #eaeef2;padding:4px 8px;text-align:right;vertical-align:middle}
th{background:#f6f8fa;font-weight:600;position:sticky;top:0}
td.l,th.l{text-align:left}td.name{overflow-wrap:anywhere;word-break:break-word;max-width:340px;text-align:left}
tr.sens td{background:#fff8c5}
dl.kv{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:2px 14px;margin:6px 0;font-size:13px}
dl.kv dt{color:#57606a}dl.kv dd{margin:0;overflow-wrap:anywhere}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
.legend span{margin-right:14px;font-size:12px;color:#57606a}
svg{max-width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#57606a}
"""

GREEN, BLUE, ORANGE, GREY, RED = "#2da44e", "#0969da", "#fb8f44", "#d0d7de", "#cf222e"
#: rows of the per-layer table shown before the rest collapses into a <details>
SHOWN_LAYERS = 15


def _esc(v: Any) -> str:
    return html.escape(_fmt(v))


def _fmt(v: Any) -> str:
    """A value as a person reads it: numbers rounded and grouped, lists joined, mappings as k=v."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        if len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            return f"{_fmt(v[0])} → {_fmt(v[1])}"
        return ", ".join(_fmt(x) for x in v) if v else "none"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items()) if v else "none"
    return str(v)


def _kv(d: dict[str, Any]) -> str:
    """A mapping as a two-column definition list (wraps; never a JSON string)."""
    if not d:
        return '<p class="muted">none</p>'
    items = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{_esc(v)}</dd>" for k, v in d.items())
    return f'<dl class="kv">{items}</dl>'


def _table(rows: list[dict[str, Any]], cols: list[str] | None = None, limit: int = 500, raw: set[str] | None = None) -> str:
    """A table inside its own horizontal scroller; `raw` columns hold HTML already."""
    if not rows:
        return '<p class="muted">none</p>'
    raw = raw or set()
    if cols is None:
        cols = []
        for r in rows:
            cols.extend(k for k in r if k not in cols and not k.startswith("_"))
    first = rows[0]
    head = "".join(f'<th class="{"l" if i == 0 or c in raw or isinstance(first.get(c), str) else ""}">{html.escape(str(c))}</th>'
                   for i, c in enumerate(cols))
    body = []
    for r in rows[:limit]:
        cells = []
        for i, c in enumerate(cols):
            v = r.get(c, "")
            text = str(v) if c in raw else _esc(v)
            cells.append(f'<td class="{"name" if i == 0 else ("l" if isinstance(v, str) else "")}">{text}</td>')
        cls = ' class="sens"' if r.get("_sensitive") else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    more = f'<p class="muted">{len(rows) - limit} more rows in the JSON report</p>' if len(rows) > limit else ""
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>{more}'


def bar_svg(fraction: float | None, color: str = BLUE, width: int = 110, label: str = "") -> str:
    """A small horizontal bar (0..1 of its width) with a title, for table cells."""
    if fraction is None or not math.isfinite(fraction):
        return '<span class="muted">–</span>'
    f = min(max(fraction, 0.0), 1.0)
    title = f"<title>{html.escape(label)}</title>" if label else ""
    return (f'<svg class="bar" width="{width}" height="12" viewBox="0 0 {width} 12" role="img">{title}'
            f'<rect width="{width}" height="12" rx="3" fill="#eaeef2"/>'
            f'<rect width="{f * width:.1f}" height="12" rx="3" fill="{color}"/></svg>')


def _chip(text: str, kind: str) -> str:
    return f'<span class="chip c-{html.escape(kind)}">{html.escape(text)}</span>'


# ------------------------------------------------------------------------------------------ figures


def _cards(report: dict[str, Any]) -> str:
    """Size, parameters, MACs, nodes and latency as cards: the after/before ratio as a bar."""
    b, a = report.get("before", {}), report.get("after", {})
    cards = []
    names = {"size_bytes": "size (bytes)", "params": "parameters", "macs": "MACs", "nodes": "nodes"}
    for k in ("size_bytes", "params", "macs", "nodes"):
        if k in b and k in a and b[k]:
            r = a[k] / b[k]
            color = GREEN if r <= 1 else ORANGE
            cards.append(f'<div class="card"><div class="muted">{names[k]}</div><div class="big">{r:.1%}</div>'
                         f'{bar_svg(r, color, 180, f"{a[k]:,} of {b[k]:,}")}'
                         f'<div class="muted">{a[k]:,} <span title="original">of {b[k]:,}</span></div></div>')
    lat = report.get("latency")
    if lat:
        r = lat["ratio"]
        cards.append(f'<div class="card"><div class="muted">latency, compressed / original</div><div class="big">{r:.3f}</div>'
                     f'{bar_svg(r, GREEN if r <= 1 else ORANGE, 180)}'
                     f'<div class="muted">original {lat["a"]["median"]:.3f} ms, compressed {lat["b"]["median"]:.3f} ms '
                     f'(medians; p10-p90 {lat["ratio_p10"]:.2f}-{lat["ratio_p90"]:.2f}, {lat.get("runs", "")} runs, '
                     f'{html.escape(str(lat.get("target", "")))})</div></div>')
    return f'<div class="cards">{"".join(cards)}</div>' if cards else '<p class="muted">no figures</p>'


def _before_after(report: dict[str, Any]) -> str:
    b, a = report.get("before", {}), report.get("after", {})
    rows = []
    for k in ("macs", "params", "size_bytes", "nodes"):
        if k in b and k in a:
            ratio = f"{a[k] / b[k]:.1%}" if b[k] else ""
            rows.append({"measure": k, "original": f"{b[k]:,}", "compressed": f"{a[k]:,}", "compressed/original": ratio})
    lat = report.get("latency")
    if lat:
        rows.append({
            "measure": f"latency ms (median, {lat.get('target', '')})",
            "original": f"{lat['a']['median']:.3f}", "compressed": f"{lat['b']['median']:.3f}",
            "compressed/original": f"{lat['ratio']:.3f} (p10-p90 {lat['ratio_p10']:.2f}-{lat['ratio_p90']:.2f})",
        })
    return _table(rows, ["measure", "original", "compressed", "compressed/original"])


def op_latency_svg(ops: dict[str, list[dict[str, Any]]], width: int = 640) -> str:
    """Grouped horizontal bars: kernel time per op type (ms per run), original vs compressed."""
    a = {r["op_type"]: r["ms"] for r in ops.get("original", [])}
    b = {r["op_type"]: r["ms"] for r in ops.get("compressed", [])}
    names = sorted(set(a) | set(b), key=lambda k: -max(a.get(k, 0.0), b.get(k, 0.0)))[:14]
    if not names:
        return '<p class="muted">no op-type profile</p>'
    top = max(max(a.get(k, 0.0), b.get(k, 0.0)) for k in names) or 1.0
    label_w, row_h, x0 = 170, 26, 176
    span = width - x0 - 70
    parts = []
    for i, k in enumerate(names):
        y = 8 + i * row_h
        parts.append(f'<text x="{label_w}" y="{y + 14}" text-anchor="end">{html.escape(k)}</text>')
        for j, (src, color) in enumerate(((a, GREY), (b, BLUE))):
            if k in src:
                w = max(src[k] / top * span, 1.0)
                parts.append(f'<rect x="{x0}" y="{y + j * 10}" width="{w:.1f}" height="9" fill="{color}">'
                             f'<title>{html.escape(k)} {("original", "compressed")[j]} {src[k]:.4f} ms</title></rect>'
                             f'<text x="{x0 + w + 4:.1f}" y="{y + j * 10 + 8}">{src[k]:.3f}</text>')
    h = 16 + len(names) * row_h
    legend = (f'<p class="legend"><span><svg width="10" height="10"><rect width="10" height="10" fill="{GREY}"/></svg> original</span>'
              f'<span><svg width="10" height="10"><rect width="10" height="10" fill="{BLUE}"/></svg> compressed</span>'
              '<span>ms per run (median), from onnxruntime\'s profiler</span></p>')
    return (f'{legend}<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" '
            f'viewBox="0 0 {width} {h}" role="img">{"".join(parts)}</svg>')


def _fidelity(report: dict[str, Any]) -> str:
    f = report.get("fidelity")
    if not f:
        return '<p class="muted">no evaluation data given (--eval)</p>'
    rows = []
    for n, m in f.get("per_output", {}).items():
        row: dict[str, Any] = {"output": n}
        row.update(m)
        cos = m.get("cosine")
        if isinstance(cos, (int, float)):
            row[" "] = bar_svg(float(cos), GREEN if cos >= 0.99 else ORANGE, 90, f"cosine {cos:.5f}")
        rows.append(row)
    cols = ["output", *[k for k in ("cosine", " ", "max_abs", "mean_abs", "rel_l2", "snr_db", "top1") if any(k in r for r in rows)]]
    out = f'<p class="sub">compressed against original on {html.escape(str(f.get("data") or "the data"))}, {f.get("samples", "?")} samples</p>'
    out += _table(rows, cols, raw={" "})
    if f.get("accuracy_a") is not None:
        out += (f"<p>accuracy: original <b>{f['accuracy_a']:.4f}</b>, compressed <b>{f['accuracy_b']:.4f}</b> "
                f"(drop {f['accuracy_a'] - f['accuracy_b']:+.4f})</p>")
    for k, v in (f.get("custom") or {}).items():
        out += f"<p>{html.escape(str(k))}: {_esc(v)}</p>"
    return out


# ------------------------------------------------------------------------------------------ layers


def layer_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per layer, merged over the passes: channels kept (prune), rank (low rank),
    precision and why (quantize), sensitivity (mixed precision); `_sensitive` marks the layers
    kept float for fidelity and those whose error is at least a quarter of the worst layer's."""
    rows: dict[str, dict[str, Any]] = {}

    def row(node: str, op: str = "") -> dict[str, Any]:
        r = rows.setdefault(node, {"layer": node, "op": op})
        if op and not r["op"]:
            r["op"] = op
        return r

    for p in report.get("passes", []):
        st, name = p.get("stats", {}), p.get("name", "")
        layers = [x for x in st.get("layers", []) or [] if isinstance(x, dict) and isinstance(x.get("node"), str)]
        if name == "prune_channels":
            for x in layers:
                out = x.get("out")
                if isinstance(out, (list, tuple)) and len(out) == 2 and out[0]:
                    row(x["node"], x.get("op", ""))["_kept"] = (out[1], out[0])
        elif name == "low_rank":
            for x in layers:
                shape = x.get("shape") or [0, 0]
                full = min(shape) if shape and min(shape) else None
                row(x["node"], x.get("op", ""))["_rank"] = (x.get("rank"), full)
        elif "precision" in (layers[0] if layers else {}):
            for x in layers:
                r = row(x["node"], x.get("op", ""))
                r["_precision"], r["_why"] = x.get("precision", ""), x.get("reason", "")
        for x in st.get("layer_table", []) or []:
            if isinstance(x, dict) and isinstance(x.get("node"), str):
                r = row(x["node"], x.get("op", ""))
                r["_sens"] = x.get("sensitivity")
                if x.get("float"):
                    r["_sensitive"] = True
    worst = max((r["_sens"] for r in rows.values() if isinstance(r.get("_sens"), (int, float))), default=0.0)
    if worst > 0:
        for r in rows.values():
            if isinstance(r.get("_sens"), (int, float)) and r["_sens"] >= worst / 4:
                r["_sensitive"] = True
    return list(rows.values())


def _layer_table(report: dict[str, Any]) -> str:
    rows = layer_rows(report)
    if not rows:
        return '<p class="muted">no per-layer changes</p>'
    top = max((r["_sens"] for r in rows if isinstance(r.get("_sens"), (int, float))), default=0.0) or 1.0
    cols = ["layer", "op"]
    has = {k: any(k in r for r in rows) for k in ("_kept", "_rank", "_precision", "_sens")}
    if has["_kept"]:
        cols.append("channels kept")
    if has["_rank"]:
        cols.append("rank")
    if has["_precision"]:
        cols.append("precision")
    if has["_sens"]:
        cols.append("sensitivity")
    out_rows = []
    for r in rows:
        o: dict[str, Any] = {"layer": r["layer"], "op": r["op"], "_sensitive": r.get("_sensitive")}
        if "_kept" in r:
            k, n = r["_kept"]
            o["channels kept"] = f"{bar_svg(k / n, BLUE, 90, f'{k} of {n} channels')} {k}/{n}"
        if "_rank" in r:
            k, n = r["_rank"]
            o["rank"] = f"{bar_svg(k / n if k and n else None, BLUE, 90, f'rank {k} of {n}')} {k}/{n}" if n else _esc(k)
        if "_precision" in r:
            prec = r["_precision"] or "float"
            kind = "float" if prec == "float" else ("fp16" if prec == "fp16" else "int8")
            o["precision"] = _chip(prec, kind) + (f' <span class="muted">{html.escape(r["_why"])}</span>' if r.get("_why") else "")
        if "_sens" in r:
            s = r["_sens"]
            color = RED if r.get("_sensitive") else ORANGE
            o["sensitivity"] = f"{bar_svg(s / top if isinstance(s, (int, float)) else None, color, 90, f'output error {s}')} {_esc(s)}"
        out_rows.append(o)
    out_rows.sort(key=lambda o: not o["_sensitive"])  # the sensitive ones first: what a reviewer checks
    raw = {"channels kept", "rank", "precision", "sensitivity"}
    n_sens = sum(1 for o in out_rows if o["_sensitive"])
    legend = (f'<p class="legend"><span>{len(out_rows)} layers</span>'
              + (f'<span style="background:#fff8c5;padding:0 6px">{n_sens} sensitive</span>' if n_sens else "")
              + "<span>bars: fraction kept (channels, rank) and output error relative to the most sensitive layer</span></p>")
    shown = _table(out_rows[:SHOWN_LAYERS], cols, raw=raw)
    rest = ""
    if len(out_rows) > SHOWN_LAYERS:
        rest = (f"<details><summary>{len(out_rows) - SHOWN_LAYERS} more layers</summary>"
                f"{_table(out_rows[SHOWN_LAYERS:], cols, raw=raw)}</details>")
    return legend + shown + rest


# ------------------------------------------------------------------------------------------ passes


def _passes(report: dict[str, Any]) -> str:
    parts = []
    for p in report.get("passes", []):
        stats = p.get("stats", {})
        scalars = {k: v for k, v in stats.items() if not isinstance(v, (list, dict))}
        mappings = {k: v for k, v in stats.items() if isinstance(v, dict) and k != "verify" and v}
        state = _chip("changed", "ok") if p.get("modified") else '<span class="muted">no change</span>'
        body = [f'<h3>{_esc(p["name"])} {state} <span class="muted">{p.get("seconds", 0):.2f} s</span></h3>']
        ver = stats.get("verify")
        if ver:
            what = f"{ver.get('metric', '')} {_fmt(ver.get('value'))}" + (f" (threshold {_fmt(ver['threshold'])})" if ver.get("threshold") is not None else "")
            extra = f"; excluded {_fmt(ver['excluded'])}" if ver.get("excluded") else ""
            body.append(f"<p>verify: {_chip('ok' if ver.get('ok') else 'failed', 'ok' if ver.get('ok') else 'bad')} {html.escape(what + extra)}</p>")
        body.append('<div class="cards">')
        body.append(f'<div class="card"><div class="muted">parameters</div>{_kv(p.get("params", {}))}</div>')
        if scalars:
            body.append(f'<div class="card"><div class="muted">figures</div>{_kv(scalars)}</div>')
        for k, v in mappings.items():
            body.append(f'<div class="card"><div class="muted">{html.escape(k)}</div>{_kv(v)}</div>')
        body.append("</div>")
        for key, val in stats.items():
            if key == "verify" or not isinstance(val, list) or not val or not isinstance(val[0], dict):
                continue
            body.append(f"<details><summary>{_esc(key)} ({len(val)})</summary>{_table(val)}</details>")
        parts.append(f'<section class="card">{"".join(body)}</section>')
    return "".join(parts)


# ------------------------------------------------------------------------------------------ search


def pareto_svg(points: list[dict[str, Any]], x: str, y: str, width: int = 560, height: int = 340) -> str:
    """Scatter of trials (x: e.g. latency ratio, y: metric), feasible ones filled, front connected."""
    pts = [p for p in points if isinstance(p.get(x), (int, float)) and isinstance(p.get(y), (int, float))
           and math.isfinite(p[x]) and math.isfinite(p[y])]
    if not pts:
        return '<p class="muted">no trials to plot</p>'
    xs, ys = [p[x] for p in pts], [p[y] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1
    m = 48

    def sx(v: float) -> float:
        return m + (v - x0) / (x1 - x0) * (width - 2 * m)

    def sy(v: float) -> float:
        return height - m - (v - y0) / (y1 - y0) * (height - 2 * m)

    dots = []
    for p in pts:
        fill = GREEN if p.get("feasible", True) else "none"
        dots.append(
            f'<circle cx="{sx(p[x]):.1f}" cy="{sy(p[y]):.1f}" r="4" fill="{fill}" stroke="{GREEN}">'
            f"<title>{_esc(p.get('label', p.get('number', '')))} {x}={p[x]:.4g} {y}={p[y]:.4g}</title></circle>"
        )
    front = sorted((p for p in pts if p.get("pareto")), key=lambda p: p[x])
    line = ""
    if len(front) > 1:
        d = " ".join(f"{sx(p[x]):.1f},{sy(p[y]):.1f}" for p in front)
        line = f'<polyline points="{d}" fill="none" stroke="{BLUE}" stroke-width="1.5"/>'
    axes = (
        f'<line x1="{m}" y1="{height - m}" x2="{width - m}" y2="{height - m}" stroke="#555"/>'
        f'<line x1="{m}" y1="{m}" x2="{m}" y2="{height - m}" stroke="#555"/>'
        f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">{_esc(x)} ({x0:.3g} – {x1:.3g})</text>'
        f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">{_esc(y)} ({y0:.3g} – {y1:.3g})</text>'
    )
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img">{axes}{line}{"".join(dots)}</svg>')


def _search(report: dict[str, Any]) -> str:
    trials = report.get("trials")
    if not trials:
        return ""
    front = set(report.get("pareto") or [])
    pts = []
    for t in trials:
        p = dict(t)
        if front and "number" in p:
            p["pareto"] = p["number"] in front
        pts.append(p)
    x = "latency_ratio" if any(isinstance(p.get("latency_ratio"), (int, float)) for p in pts) else "objective"
    y = "metric" if any(isinstance(p.get("metric"), (int, float)) for p in pts) else "drop"
    cols = [c for c in ("number", "label", x, y, "drop", "feasible", "pareto", "params") if any(c in p for p in pts)]
    best = report.get("best")
    head = f"<p>best trial {_esc(best.get('number'))}: {_kv({k: best.get(k) for k in ('objective', 'drop', 'params') if k in best})}</p>" if isinstance(best, dict) else ""
    return (f'<h2>Search</h2><section class="card">{head}<p class="legend"><span>filled: meets the constraint</span>'
            f'<span>line: Pareto front</span></p>{pareto_svg(pts, x, y)}'
            f"<details><summary>trials ({len(pts)})</summary>{_table(pts, cols)}</details></section>")


# ------------------------------------------------------------------------------------------ page


def render(report: dict[str, Any], title: str = "onnxslim-compress report") -> str:
    meta = {k: report.get(k) for k in ("input", "output", "target", "version", "seed", "seconds") if report.get(k) is not None}
    sub = " · ".join(f"{k} {_fmt(v)}" for k, v in meta.items())
    lat = report.get("latency") or {}
    ops = lat.get("ops") if isinstance(lat, dict) else None
    op_html = f'<h2>Latency per op type</h2><section class="card">{op_latency_svg(ops)}</section>' if ops else ""
    passes = report.get("passes")
    body = [f"<h1>{_esc(title)}</h1><p class='sub'>{html.escape(sub)}</p>"]
    if "before" in report:
        body.append(f"<h2>Before / after <span class='muted'>original → compressed</span></h2>{_cards(report)}<details><summary>as a table</summary>"
                    f'<section class="card">{_before_after(report)}</section></details>')
    body.append(op_html)
    if "fidelity" in report or passes is not None:
        body.append(f'<h2>Fidelity</h2><section class="card">{_fidelity(report)}</section>')
    body.append(_search(report))
    if passes is not None:
        body.append(f'<h2>Layers</h2><section class="card">{_layer_table(report)}</section>')
        body.append(f"<h2>Passes</h2>{_passes(report)}")
    body.append(f"<p class='muted'>generated by onnxslim-compress {_esc(report.get('version', ''))}</p>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_esc(title)}</title>"
            f"<style>{CSS}</style></head><body><main>{''.join(body)}</main></body></html>")


def page(report: dict[str, Any], title: str | None = None) -> str:
    """The page of `report`, titled after its input model unless `title` is given.

    Writing it is the caller's job (files.write_atomic: a fresh temp name, then a rename, so a
    symlink planted at a temp name is never followed): report/ imports nothing of the package."""
    return render(report, title or f"onnxslim-compress: {Path(str(report.get('input') or 'model')).name}")
