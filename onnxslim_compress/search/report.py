"""What a search reports: one record per trial, the best feasible trial, the Pareto front, a plot and
a live table.

The table goes to stderr (stdout stays clean for `--json`); the plot needs matplotlib (the `plot`
extra) and is skipped with a note when it is missing, never an error.
"""

from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from onnxslim_compress.files import write_atomic


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


@dataclass
class TrialRecord:
    """One trial as the report shows it."""

    number: int
    state: str
    params: dict[str, Any]
    objective: float | None
    drop: float | None
    metric: float | None
    feasible: bool
    latency_ratio: float | None = None
    latency_ms: float | None = None
    #: 95 % bootstrap interval of the trial's latency ratio
    latency_ci95: list[float] | None = None
    #: stopped early: its counting metric had already broken the constraint (no latency measured)
    screened: bool = False
    macs_ratio: float | None = None
    size_ratio: float | None = None
    seconds: float | None = None
    duplicate_of: int | None = None
    worker: str | None = None
    error: str | None = None
    build: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_trial(cls, t: FrozenTrial, effective: dict[str, Any] | None = None) -> TrialRecord:
        m = t.user_attrs.get("measurement") or {}
        dur = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        dup = t.user_attrs.get("duplicate_of")
        return cls(
            number=t.number,
            state=t.state.name,
            params=effective if effective is not None else dict(t.params),
            objective=_num(m.get("objective")),
            drop=_num(m.get("drop")),
            metric=_num(m.get("metric")),
            feasible=bool(t.user_attrs.get("feasible", False)) and t.state == TrialState.COMPLETE,
            latency_ratio=_num(m.get("latency_ratio")),
            latency_ms=_num(m.get("latency_ms")),
            latency_ci95=[float(x) for x in m["latency_ci95"]] if m.get("latency_ci95") else None,
            screened=bool((m.get("extra") or {}).get("screened", False)),
            macs_ratio=_num(m.get("macs_ratio")),
            size_ratio=_num(m.get("size_ratio")),
            seconds=round(dur, 3) if dur is not None else None,
            duplicate_of=dup if dup is not None and dup != t.number else None,
            worker=t.user_attrs.get("worker"),
            error=t.user_attrs.get("error"),
            build=t.user_attrs.get("build") or {},
        )

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return d


def measured(records: list[TrialRecord]) -> list[TrialRecord]:
    return [r for r in records if r.state == "COMPLETE" and r.objective is not None and r.drop is not None
            and math.isfinite(r.objective) and math.isfinite(r.drop)]


def best_feasible(records: list[TrialRecord]) -> TrialRecord | None:
    """Lowest cost among trials meeting the constraint; ties go to the smaller drop, then the earlier trial."""
    ok = [r for r in measured(records) if r.feasible]
    if not ok:
        return None
    return min(ok, key=lambda r: (r.objective, r.drop, r.number))


def pick_on_intervals(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finalist to pick: the lowest latency ratio among those whose 95 % interval lies wholly
    below 1.0 (the original's ratio to itself), so the pick is faster than the original for sure on
    the figures measured; None when no finalist's interval clears 1.0 (then the original is kept).
    Ties go to the smaller upper bound, then the earlier trial."""
    ok = [r for r in rows if r.get("ci95") and finite(r.get("ratio")) and float(r["ci95"][1]) < 1.0]
    if not ok:
        return None
    return min(ok, key=lambda r: (float(r["ratio"]), float(r["ci95"][1]), r["number"]))


def claim(ratio: float, ci95: list[float] | None, runs: int | None, source: str) -> dict[str, Any]:
    """The speedup the report claims, with its interval (speedup = 1 / latency ratio)."""
    out: dict[str, Any] = {"latency_ratio": ratio, "ci95": list(ci95) if ci95 else None,
                           "speedup": 1.0 / ratio if ratio else None, "runs": runs, "source": source}
    if ci95:
        out["speedup_ci95"] = [1.0 / float(ci95[1]), 1.0 / float(ci95[0])]
    return out


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(float(x))


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Trials no other trial beats on both cost and drop (duplicates of a point listed once)."""
    pts = [r for r in measured(records) if r.duplicate_of is None and not r.screened]
    front = []
    for r in pts:
        dominated = any(
            (o.objective <= r.objective and o.drop <= r.drop) and (o.objective < r.objective or o.drop < r.drop)  # type: ignore[operator]
            for o in pts
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: (r.objective, r.drop))


def trials_to_feasible(records: list[TrialRecord]) -> int | None:
    """How many trials (in trial-number order) it took to find the first candidate meeting the constraint."""
    for k, r in enumerate(sorted(records, key=lambda r: r.number)):
        if r.feasible:
            return k + 1
    return None


def trials_to_best(records: list[TrialRecord], best: TrialRecord | None) -> int | None:
    if best is None:
        return None
    target = best.number if best.duplicate_of is None else best.duplicate_of
    return 1 + sum(1 for r in records if r.number < target)


# --------------------------------------------------------------------------------------- plot


def pareto_plot(records: list[TrialRecord], path: str | Path, *, objective: str, max_drop: float, best: TrialRecord | None) -> str | None:
    """Write the cost-vs-drop scatter with the Pareto front; returns a note instead when matplotlib is missing."""
    try:
        import matplotlib  # lazy: optional (the plot extra), and slow to import

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'onnxslim-compress[plot]'): Pareto plot skipped"
    pts = measured(records)
    if not pts:
        return "no measured trials: Pareto plot skipped"
    front = pareto_front(records)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ok = [r for r in pts if r.feasible]
    bad = [r for r in pts if not r.feasible]
    ax.scatter([r.drop for r in ok], [r.objective for r in ok], c="tab:blue", s=18, label="meets constraint")
    ax.scatter([r.drop for r in bad], [r.objective for r in bad], c="tab:gray", s=18, marker="x", label="violates constraint")
    ax.plot([r.drop for r in front], [r.objective for r in front], "-", c="tab:orange", lw=1.2, label="Pareto front")
    if best is not None:
        ax.scatter([best.drop], [best.objective], s=90, facecolors="none", edgecolors="tab:red", label=f"chosen (trial {best.number})")
    ax.axvline(max_drop, ls="--", c="tab:red", lw=0.8)
    ax.set_xlabel("metric drop vs baseline")
    ax.set_ylabel(f"{objective} ratio vs baseline (lower is better)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(out, buf.getvalue())  # a fresh temp name: a symlink planted at one is not followed
    return None


# --------------------------------------------------------------------------------------- live table


class LiveTable:
    """One row per finished trial above a tqdm progress bar, both on stderr."""

    HEADER = f"{'trial':>5}  {'state':<8} {'cost':>7} {'drop':>8} {'ok':>3} {'sec':>6}  params"

    def __init__(self, total: int, initial: int, *, bar: bool, rows: bool, stream: TextIO | None = None, objective: str = "latency"):
        self.stream = stream or sys.stderr
        self.rows = rows
        self.bar = None
        self.best: float | None = None
        if rows:
            self._write(f"{objective} ratio = candidate / baseline; drop = baseline metric - candidate metric")
            self._write(self.HEADER)
        if bar:
            self.bar = tqdm(total=total, initial=min(initial, total), desc="search", unit="trial", file=self.stream, leave=False)

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def row(self, r: TrialRecord) -> None:
        if r.feasible and r.objective is not None and (self.best is None or r.objective < self.best):
            self.best = r.objective
        if self.rows:
            # a screened trial's cost is a stand-in (no latency measured) and its drop a lower bound
            cost = "-" if r.screened else (f"{r.objective:.3f}" if r.objective is not None else "-")
            drop = (">=" if r.screened else "") + (f"{r.drop:+.4f}" if r.drop is not None else "-")
            sec = f"{r.seconds:.1f}" if r.seconds is not None else "-"
            params = ", ".join(f"{k}={_short(v)}" for k, v in r.params.items())
            note = f" (= trial {r.duplicate_of})" if r.duplicate_of is not None else (" (screened: stopped early)" if r.screened else "")
            err = f"  error: {r.error}" if r.error else ""
            self._write(f"{r.number:>5}  {r.state[:8]:<8} {cost:>7} {drop:>8} {'yes' if r.feasible else 'no':>3} {sec:>6}  {params}{note}{err}")
        if self.bar is not None:
            self.bar.update(1)
            if self.best is not None:
                self.bar.set_postfix_str(f"best {self.best:.3f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
