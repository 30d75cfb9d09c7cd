"""One self-contained HTML page for a compress or search report: no scripts, no external files.

A deployment engineer reviewing a compression wants the per-layer picture (what was pruned,
factorized, quantized or skipped, and why) next to latency and fidelity before/after; a page that
opens anywhere, including from a CI artifact, beats a JSON dump. Plots are inline SVG so the page
needs nothing but a browser.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1b1f24;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right}
th{background:#f6f8fa}td.l,th.l{text-align:left}
.ok{color:#1a7f37}.bad{color:#cf222e}.muted{color:#6e7781}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
"""


def _esc(v: Any) -> str:
    if isinstance(v, float):
        return html.escape(f"{v:.6g}")
    if isinstance(v, (list, dict)):
        return html.escape(json.dumps(v, default=str)[:200])
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]], cols: list[str] | None = None, limit: int = 500) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    if cols is None:
        cols = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
    head = "".join(f'<th class="{"l" if i == 0 else ""}">{_esc(c)}</th>' for i, c in enumerate(cols))
    body = []
    for r in rows[:limit]:
        cells = "".join(f'<td class="{"l" if i == 0 else ""}">{_esc(r.get(c, ""))}</td>' for i, c in enumerate(cols))
        body.append(f"<tr>{cells}</tr>")
    more = f'<p class="muted">{len(rows) - limit} more rows in the JSON report</p>' if len(rows) > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _before_after(report: dict[str, Any]) -> str:
    b, a = report.get("before", {}), report.get("after", {})
    rows = []
    for k in ("macs", "params", "size_bytes", "nodes"):
        if k in b and k in a:
            ratio = f"{a[k] / b[k]:.1%}" if b[k] else ""
            rows.append({"measure": k, "before": f"{b[k]:,}", "after": f"{a[k]:,}", "after/before": ratio})
    lat = report.get("latency")
    if lat:
        rows.append({
            "measure": f"latency ms (median, {lat.get('target', '')})",
            "before": f"{lat['a']['median']:.3f}", "after": f"{lat['b']['median']:.3f}",
            "after/before": f"{lat['ratio']:.3f} (p10-p90 {lat['ratio_p10']:.2f}-{lat['ratio_p90']:.2f})",
        })
    return _table(rows, ["measure", "before", "after", "after/before"])


def _fidelity(report: dict[str, Any]) -> str:
    f = report.get("fidelity")
    if not f:
        return '<p class="muted">no evaluation data given (--eval)</p>'
    rows = [{"output": n, **m} for n, m in f.get("per_output", {}).items()]
    out = _table(rows)
    if f.get("accuracy_a") is not None:
        out += f"<p>accuracy before {f['accuracy_a']:.4f}, after {f['accuracy_b']:.4f}</p>"
    return out


def _passes(report: dict[str, Any]) -> str:
    parts = []
    for p in report.get("passes", []):
        stats = p.get("stats", {})
        scalars = {k: v for k, v in stats.items() if not isinstance(v, (list, dict))}
        state = '<span class="ok">changed</span>' if p.get("modified") else '<span class="muted">no change</span>'
        body = [f"<p>params: <code>{_esc(p.get('params', {}))}</code></p>", _table([scalars]) if scalars else ""]
        ver = stats.get("verify")
        if ver:
            cls = "ok" if ver.get("ok") else "bad"
            body.append(f'<p class="{cls}">verify: {_esc(ver)}</p>')
        for key, val in stats.items():
            if key == "verify" or not isinstance(val, list) or not val or not isinstance(val[0], dict):
                continue
            body.append(f"<details {'open' if key == 'layers' else ''}><summary>{_esc(key)} ({len(val)})</summary>{_table(val)}</details>")
        parts.append(f"<h3>{_esc(p['name'])} — {state} <span class='muted'>{p.get('seconds', 0):.2f} s</span></h3>{''.join(body)}")
    return "".join(parts)


def pareto_svg(points: list[dict[str, Any]], x: str, y: str, width: int = 560, height: int = 340) -> str:
    """Scatter of trials (x: e.g. latency ratio, y: metric), feasible ones filled, front connected."""
    pts = [p for p in points if isinstance(p.get(x), (int, float)) and isinstance(p.get(y), (int, float))]
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
        fill = "#1a7f37" if p.get("feasible", True) else "none"
        dots.append(
            f'<circle cx="{sx(p[x]):.1f}" cy="{sy(p[y]):.1f}" r="4" fill="{fill}" stroke="#1a7f37">'
            f"<title>{_esc(p.get('label', ''))} {x}={p[x]:.4g} {y}={p[y]:.4g}</title></circle>"
        )
    front = sorted((p for p in pts if p.get("pareto")), key=lambda p: p[x])
    line = ""
    if len(front) > 1:
        d = " ".join(f"{sx(p[x]):.1f},{sy(p[y]):.1f}" for p in front)
        line = f'<polyline points="{d}" fill="none" stroke="#0969da" stroke-width="1.5"/>'
    axes = (
        f'<line x1="{m}" y1="{height - m}" x2="{width - m}" y2="{height - m}" stroke="#555"/>'
        f'<line x1="{m}" y1="{m}" x2="{m}" y2="{height - m}" stroke="#555"/>'
        f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">{_esc(x)} ({x0:.3g} – {x1:.3g})</text>'
        f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">{_esc(y)} ({y0:.3g} – {y1:.3g})</text>'
    )
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{axes}{line}{"".join(dots)}</svg>'


def render(report: dict[str, Any], title: str = "onnxslim-compress report") -> str:
    trials = report.get("trials")
    search = ""
    if trials:
        search = "<h2>Search</h2>" + pareto_svg(trials, "latency_ratio", "metric") + _table(trials)
    meta = {k: report.get(k) for k in ("input", "output", "target", "version", "seed", "seconds") if k in report}
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1>{_table([meta]) if meta else ''}"
        f"<h2>Before / after</h2>{_before_after(report)}"
        f"<h2>Fidelity</h2>{_fidelity(report)}"
        f"{search}<h2>Passes</h2>{_passes(report)}"
        f"<p class='muted'>generated by onnxslim-compress {report.get('version', '')}</p></body></html>"
    )


def write(report: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Write atomically (temp + rename), like the models."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(render(report, title or f"onnxslim-compress: {Path(str(report.get('input') or 'model')).name}"))
    os.replace(tmp, p)
    return p
