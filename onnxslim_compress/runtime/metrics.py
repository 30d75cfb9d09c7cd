"""Fidelity of a compressed model B against its original A, output by output, in one streaming pass.

The accuracy constraint of the search and the `compare` command both ask "how far did B move from A
on real inputs?". Labels are often missing, so the main signals are label-free: max/mean abs error,
relative L2, cosine, centred (Pearson) correlation, SNR, top-1 agreement and, for sequence
outputs (a CTC recognizer), agreement of the greedy-decoded sequences (`sequence`). Cosine alone hides
destruction on an output with a large mean (a heatmap offset by a constant keeps cosine 0.98 while
its Pearson correlation is 0.02), so the fidelity floor of `compress` reads pearson and rel_l2. They are aggregated GLOBALLY over the data set (sums
of squares and products, not a mean of per-sample ratios): one sample with a tiny norm must not
dominate the average, and the global figures equal the one-shot computation on the concatenated
outputs, which is what the numbers claim to be.

Metric directions (used by `FidelityReport.worst`): max_abs, mean_abs, rel_l2 and nonfinite are
worse when higher; cosine, pearson, snr_db, top1, sequence and exact are worse when lower.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from onnxslim_compress.data import DataSource, load_labels, open_data
from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph.io import load_model
from onnxslim_compress.runtime.session import Target, make_session

Outputs = Mapping[str, np.ndarray]
MetricFn = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], float]

#: metric name -> True when a higher value is worse
HIGHER_IS_WORSE: dict[str, bool] = {
    "max_abs": True,
    "mean_abs": True,
    "rel_l2": True,
    "nonfinite": True,
    "cosine": False,
    "pearson": False,
    "snr_db": False,
    "top1": False,
    "exact": False,
    "sequence": False,
}
#: the class index CTC decoding drops (PaddleOCR's and ddddocr's blank is class 0)
CTC_BLANK = 0
#: the columns of FidelityReport.table(), in order
TABLE_METRICS = ("max_abs", "mean_abs", "rel_l2", "cosine", "snr_db", "top1")


class _OutputStats:
    """Running sums for one output; every ratio is formed only in result()."""

    def __init__(self) -> None:
        self.count = 0
        self.sum_aa = 0.0
        self.sum_bb = 0.0
        self.sum_ab = 0.0
        self.sum_dd = 0.0
        self.sum_a = 0.0
        self.sum_b = 0.0
        self.sum_abs = 0.0
        self.max_abs = 0.0
        self.nonfinite = 0
        self.float_output: bool | None = None
        self.top1_rows = 0
        self.top1_match = 0
        self.exact_match = 0
        self.seq_count = 0
        self.seq_match = 0

    def update(self, name: str, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise BadInputError(f"output {name!r}: shape {list(b.shape)} in B but {list(a.shape)} in A")
        is_float = a.dtype.kind in "fc"
        if self.float_output is None:
            self.float_output = is_float
        a64 = a.astype(np.float64).reshape(-1)
        b64 = b.astype(np.float64).reshape(-1)
        d = b64 - a64
        self.count += a64.size
        self.sum_aa += float(a64 @ a64)
        self.sum_bb += float(b64 @ b64)
        self.sum_ab += float(a64 @ b64)
        self.sum_dd += float(d @ d)
        self.sum_a += float(a64.sum())
        self.sum_b += float(b64.sum())
        if d.size:
            ad = np.abs(d)
            self.sum_abs += float(ad.sum())
            # np.max propagates NaN on purpose: a NaN in B must show, not vanish into a max.
            self.max_abs = float(np.max([self.max_abs, float(np.max(ad))]))
            self.nonfinite += int(np.count_nonzero(~np.isfinite(b64) & np.isfinite(a64)))
        if not is_float:
            self.exact_match += int(np.count_nonzero(a.reshape(-1) == b.reshape(-1)))
        elif a.ndim >= 2 and a.shape[-1] > 1:
            rows_a = a.reshape(-1, a.shape[-1])
            rows_b = b.reshape(-1, b.shape[-1])
            self.top1_rows += rows_a.shape[0]
            self.top1_match += int(np.count_nonzero(rows_a.argmax(-1) == rows_b.argmax(-1)))
        ids_a, ids_b = sequence_ids(a), sequence_ids(b)
        if ids_a is not None and ids_b is not None:
            self.seq_count += ids_a.shape[0]
            self.seq_match += sum(ctc_collapse(x) == ctc_collapse(y) for x, y in zip(ids_a, ids_b, strict=True))

    def result(self) -> dict[str, float]:
        aa, bb, ab, dd = self.sum_aa, self.sum_bb, self.sum_ab, self.sum_dd
        rel = math.sqrt(dd) / math.sqrt(aa) if aa > 0 else (0.0 if dd == 0 else math.inf)
        if aa > 0 and bb > 0:
            cos = max(-1.0, min(1.0, ab / (math.sqrt(aa) * math.sqrt(bb))))
        else:
            cos = 1.0 if aa == 0 and bb == 0 else 0.0
        if dd == 0:
            snr = math.inf
        elif aa == 0:
            snr = -math.inf
        else:
            snr = 10.0 * math.log10(aa / dd)
        pearson = _pearson(self.count, self.sum_a, self.sum_b, aa, bb, ab)
        if any(math.isnan(v) for v in (aa, bb, ab, dd)):
            rel = cos = snr = pearson = math.nan
        out = {
            "max_abs": self.max_abs,
            "mean_abs": self.sum_abs / self.count if self.count else 0.0,
            "rel_l2": rel,
            "cosine": cos,
            "pearson": pearson,
            "snr_db": snr,
            "nonfinite": float(self.nonfinite),
        }
        if self.top1_rows:
            out["top1"] = self.top1_match / self.top1_rows
        if self.seq_count:
            out["sequence"] = self.seq_match / self.seq_count
        if self.float_output is False:
            out["exact"] = self.exact_match / self.count if self.count else 1.0
        return out


def sequence_ids(x: np.ndarray) -> np.ndarray | None:
    """Class ids as rows of sequences [n, T], or None when `x` is no sequence output.

    Float scores of rank >= 3 ([N, T, C], PaddleOCR's recognizer) are argmaxed over the class axis
    (the last) and read along the axis before it; float [N, C] scores give sequences of length 1 (a
    classifier's top-1); integer ids of rank >= 1 ([N, T], ddddocr's output, which argmaxes inside
    the graph) are read along their last axis."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        if x.ndim < 2 or x.shape[-1] < 2:
            return None
        ids = x.argmax(-1)
        return ids.reshape(-1, 1) if x.ndim == 2 else ids.reshape(-1, ids.shape[-1])
    if x.dtype.kind in "iu" and x.ndim >= 1 and x.size:
        return x.reshape(-1, x.shape[-1])
    return None


def ctc_collapse(ids: Sequence[int] | np.ndarray, blank: int = CTC_BLANK) -> tuple[int, ...]:
    """Greedy CTC decoding of per-frame ids: merge repeats, then drop the blank (in that order, so
    "a a _ a" reads "a a" while "a a a" reads "a")."""
    out: list[int] = []
    prev: int | None = None
    for v in np.asarray(ids).reshape(-1).tolist():
        if v != prev and v != blank:
            out.append(int(v))
        prev = v
    return tuple(out)


def sequence_agreement(a: np.ndarray, b: np.ndarray, blank: int = CTC_BLANK) -> float:
    """Fraction of sequences (rows, see sequence_ids) whose CTC-decoded ids are equal in A and B:
    what a recognizer's user sees, where per-frame top-1 is not (a frame may flip between a blank and
    a repeat without changing the text, and one flipped frame can change it)."""
    ia, ib = sequence_ids(a), sequence_ids(b)
    if ia is None or ib is None:
        raise BadInputError(f"sequence: output of shape {list(np.shape(a))} is not a sequence of class scores or ids")
    return float(np.mean([ctc_collapse(x, blank) == ctc_collapse(y, blank) for x, y in zip(ia, ib, strict=True)]))


def _pearson(n: int, sa: float, sb: float, aa: float, bb: float, ab: float) -> float:
    """Centred correlation from running sums. Constant outputs have no variance: equal constants
    count as 1, a constant against a varying output (or another constant) as 0."""
    if n == 0:
        return 1.0
    va, vb = aa - sa * sa / n, bb - sb * sb / n
    cov = ab - sa * sb / n
    # sums of squares lose their low digits to a large mean: treat a variance at rounding level as none
    tiny_a, tiny_b = 1e-12 * max(aa, 1e-300), 1e-12 * max(bb, 1e-300)
    if va <= tiny_a or vb <= tiny_b:
        same = va <= tiny_a and vb <= tiny_b and abs(sa - sb) <= 1e-9 * max(abs(sa), abs(sb), 1e-30)
        return 1.0 if same else 0.0
    return max(-1.0, min(1.0, cov / math.sqrt(va * vb)))


class FidelityAccumulator:
    """Fed one sample's outputs of A and B at a time; `result()` gives the global per-output metrics.

    `names` fixes which outputs are compared (default: every output of the first A sample). An
    output of A missing from B is an error: silently skipping it would report a perfect score.
    """

    def __init__(self, names: Sequence[str] | None = None):
        self.names: list[str] | None = list(names) if names is not None else None
        self.samples = 0
        self._stats: dict[str, _OutputStats] = {}

    def update(self, outputs_a: Outputs, outputs_b: Outputs) -> None:
        if self.names is None:
            self.names = list(outputs_a)
        for name in self.names:
            if name not in outputs_a:
                raise BadInputError(f"output {name!r} is missing from A's outputs (has: {sorted(outputs_a)})")
            if name not in outputs_b:
                raise BadInputError(f"output {name!r} of A is missing from B's outputs (B has: {sorted(outputs_b)})")
            self._stats.setdefault(name, _OutputStats()).update(name, outputs_a[name], outputs_b[name])
        self.samples += 1

    def result(self) -> dict[str, dict[str, float]]:
        return {n: self._stats[n].result() for n in (self.names or []) if n in self._stats}

    def counts(self, metric: str) -> dict[str, tuple[int, int]]:
        """(matched, counted) rows so far per output for the counting metrics `top1` and `sequence`:
        what an early stop needs to bound the final figure before the data is through."""
        if metric not in ("top1", "sequence"):
            raise BadInputError(f"counts: {metric!r} is not a counting metric (top1, sequence)")
        out = {}
        for n, st in self._stats.items():
            matched, counted = (st.top1_match, st.top1_rows) if metric == "top1" else (st.seq_match, st.seq_count)
            if counted:
                out[n] = (int(matched), int(counted))
        return out


def fidelity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """All metrics of one pair of arrays (the one-shot form of FidelityAccumulator)."""
    acc = FidelityAccumulator(["out"])
    acc.update({"out": a}, {"out": b})
    return acc.result()["out"]


def mean_fidelity(ref: list[list[np.ndarray]], got: list[list[np.ndarray]], metric: str) -> float:
    """Mean over samples of the cosine (metric "pearson": centred cosine) of all float outputs
    concatenated, (metric "top1") of the top-1 agreement of output 0, or (metric "sequence") of the
    share of output 0's CTC-decoded sequences that are equal (sequence_agreement: a recognizer's
    text, which one flipped frame can change while per-frame top-1 barely moves): `ref` and `got`
    hold each sample's outputs in session order."""
    vals = []
    for r, q in zip(ref, got, strict=True):
        if metric == "sequence":
            vals.append(sequence_agreement(np.asarray(r[0]), np.asarray(q[0])))
            continue
        if metric == "top1":
            a, b = np.asarray(r[0]), np.asarray(q[0])
            vals.append(float(np.mean(a.reshape(-1, a.shape[-1]).argmax(-1) == b.reshape(-1, b.shape[-1]).argmax(-1))))
            continue
        fa = np.concatenate([np.asarray(x, np.float64).ravel() for x in r if np.issubdtype(np.asarray(x).dtype, np.floating)])
        fb = np.concatenate([np.asarray(x, np.float64).ravel() for x in q if np.issubdtype(np.asarray(x).dtype, np.floating)])
        if metric == "pearson":
            fa, fb = fa - fa.mean(), fb - fb.mean()
        na, nb = np.linalg.norm(fa), np.linalg.norm(fb)
        vals.append(1.0 if na == nb == 0 else float(fa @ fb / max(na * nb, 1e-30)))
    return float(np.mean(vals)) if vals else 1.0


#: ops that only move values, walked through from a graph output to the op that computed it
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
#: ops whose input is the score to compare instead of their saturating output
_SATURATING = {"Softmax", "LogSoftmax"}


def error_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors a compression pass should measure its own error on: the graph outputs, except
    that an output computed by a Softmax (through Identity/Reshape-like nodes) is replaced by the
    Softmax's input, the logits.

    Why: a classifier's probabilities saturate. On a confident sample any change of the logits reads
    as ~0 on the probabilities, so the output error is carried by the few samples near the decision
    boundary, and the handful of calibration samples a pass can afford estimates it far too low:
    PP-OCR cls pruned 0.3, rel_l2 of the probabilities 0.005 on 4 held-out calibration samples,
    0.116 on 1000 eval samples (logits: 0.23 and 0.33; BENCHMARKS.md, issue 17). The logits' error
    is spread over every sample, so a few samples rank and cap groups by it usefully.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for o in model.graph.output:
        node = producer.get(o.name)
        while node is not None and node.op_type in _PASS_THROUGH and node.input:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in _SATURATING and node.input:
            out.append(node.input[0])
        else:
            out.append(o.name)
    return list(dict.fromkeys(out))


def pooled_fidelity(reference: onnx.ModelProto, models: list[onnx.ModelProto], data: Iterable, limit: int,
                    tensors: Sequence[str] | None = None) -> list[dict]:
    """Relative L2 error and cosine of every model against the reference over the first `limit`
    samples of `data`: each output pooled over the samples (FidelityAccumulator), then the worst
    output (highest rel_l2, lowest cosine), float outputs only when there are any.

    Per output, worst-of, as the run floor (`compress --min-fidelity`) reads them: concatenated into
    one vector, MiniLM's echo of its int64 input_ids (norm ~11 000) drowned the embedding's (~48),
    and a real rel_l2 of 0.17 read as 0.0004, so the prune pass thought a lossy selection lossless.

    `tensors` compares those tensors instead of the graph outputs (error_tensors: the logits under
    a Softmax); every model must compute them under the same names.

    One session at a time (the reference's outputs are kept): on offloaded weights each session maps
    a full copy of the model, and three side by side would triple the peak."""
    tgt = Target(kind="cpu", opt_level="basic")
    wanted = list(tensors) if tensors else None

    def outputs(model: onnx.ModelProto) -> Iterable[dict[str, np.ndarray]]:
        if wanted is not None and wanted != [o.name for o in model.graph.output]:
            model = _with_outputs(model, wanted)
        s = make_session(model, tgt)
        names = [i.name for i in s.get_inputs()]
        outs = [o.name for o in s.get_outputs()]
        for k, feed in enumerate(data):
            if k >= limit:
                break
            f = {n: feed[n] for n in names if n in feed}
            yield dict(zip(outs, s.run(None, f), strict=True))

    ref = list(outputs(reference))
    names = list(ref[0]) if ref else []
    floats = [n for n in names if np.asarray(ref[0][n]).dtype.kind in "fc"]
    names = floats or names
    rows = []
    for m in models:
        acc = FidelityAccumulator(names)
        for a, b in zip(ref, outputs(m), strict=False):
            acc.update({n: a[n] for n in names}, {n: b[n] for n in names})
        res = list(acc.result().values())
        rel = [r["rel_l2"] for r in res]
        cos = [r["cosine"] for r in res]
        # a NaN output is the worst one (max/min would skip it depending on the order)
        rows.append({"rel_l2": math.nan if any(map(math.isnan, rel)) else max(rel, default=0.0),
                     "cosine": math.nan if any(map(math.isnan, cos)) else min(cos, default=1.0)})
    return rows


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs are exactly `names` (intermediate tensors allowed)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for n in names:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    return m


# --------------------------------------------------------------------------------------------------
# Labelled accuracy
# --------------------------------------------------------------------------------------------------


def predictions(x: np.ndarray, n_labels: int | None = None) -> np.ndarray:
    """Class predictions, flattened: argmax over the last axis of scores, or `x` itself if already classes.

    Scores are recognised by size (one row of scores per label) when n_labels is given, else by a
    float dtype with rank >= 1.
    """
    x = np.asarray(x)
    if n_labels is not None:
        if x.ndim >= 1 and x.size != n_labels and x.shape[-1] > 0 and x.size == n_labels * x.shape[-1]:
            return x.argmax(-1).reshape(-1)
        return x.reshape(-1)
    if x.dtype.kind == "f" and x.ndim >= 1:
        return x.argmax(-1).reshape(-1)
    return x.reshape(-1)


def accuracy(logits_or_preds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose predicted class equals the label.

    Accepts scores [N, C] (argmax taken), class ids [N], or one-hot labels shaped like the scores.
    """
    x = np.asarray(logits_or_preds)
    y = np.asarray(labels)
    if y.shape == x.shape and y.ndim >= 2 and y.dtype.kind == "f":
        y = y.argmax(-1)
    y = y.reshape(-1)
    if y.size == 0:
        raise BadInputError("accuracy: no labels")
    preds = predictions(x, y.size)
    if preds.size != y.size:
        raise BadInputError(
            f"accuracy: {y.size} labels do not match predictions of shape {list(x.shape)} "
            "(expected one row of class scores or one class id per label)"
        )
    return float(np.mean(preds == y))


# --------------------------------------------------------------------------------------------------
# Pluggable metrics
# --------------------------------------------------------------------------------------------------


def load_metric(spec: str) -> MetricFn:
    """`package.module:function` (or `path/to/file.py:function`) -> callable(outputs_a, outputs_b) -> float.

    The callable gets two dicts {output name: array} for one sample; compare_models averages its
    values over the samples.
    """
    mod_name, sep, attr = str(spec).partition(":")
    if not sep or not mod_name or not attr:
        raise BadInputError(f"metric {spec!r}: expected 'package.module:function'")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise BadInputError(f"metric {spec!r}: no such file {path}")
            ispec = importlib.util.spec_from_file_location(f"_metric_{path.stem}", path)
            if ispec is None or ispec.loader is None:
                raise BadInputError(f"metric {spec!r}: cannot load {path}")
            module = importlib.util.module_from_spec(ispec)
            ispec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except BadInputError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure importing user code is the user's input problem
        raise BadInputError(f"metric {spec!r}: cannot import {mod_name} ({type(e).__name__}: {e})") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BadInputError(f"metric {spec!r}: {mod_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BadInputError(f"metric {spec!r}: {attr} is not callable")
    return obj


def _metric_name(m: str | MetricFn) -> str:
    return m if isinstance(m, str) else getattr(m, "__qualname__", None) or repr(m)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _json_float(v: float | None) -> float | str | None:
    """JSON has no inf/nan: they become the strings 'inf', '-inf', 'nan' (SNR is inf when B == A)."""
    if v is None or math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _from_json_float(v: float | str | None) -> float | None:
    return float(v) if isinstance(v, str) else v


@dataclass
class FidelityReport:
    """Per-output metrics of B against A, plus labelled accuracy and custom metrics when asked for."""

    per_output: dict[str, dict[str, float]]
    samples: int
    accuracy_a: float | None = None
    accuracy_b: float | None = None
    custom: dict[str, float] = field(default_factory=dict)
    data: str = ""

    def _values(self, metric: str) -> dict[str, float]:
        if metric not in HIGHER_IS_WORSE:
            raise BadInputError(f"unknown metric {metric!r} (known: {', '.join(HIGHER_IS_WORSE)})")
        vals = {n: m[metric] for n, m in self.per_output.items() if metric in m}
        if not vals:
            raise BadInputError(
                f"metric {metric!r} applies to no output of this model "
                "(top1 needs a float output of rank >= 2, exact a non-float output)"
            )
        return vals

    def worst_output(self, metric: str) -> str:
        """The output with the worst value of `metric` (NaN counts as worst)."""
        vals = self._values(metric)
        for n, v in vals.items():
            if math.isnan(v):
                return n
        pick = max if HIGHER_IS_WORSE[metric] else min
        return pick(vals, key=vals.__getitem__)

    def worst(self, metric: str) -> float:
        """The worst value of `metric` over the outputs it applies to."""
        return self._values(metric)[self.worst_output(metric)]

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_a is None or self.accuracy_b is None:
            return None
        return self.accuracy_a - self.accuracy_b

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite floats as strings)."""
        return {
            "samples": self.samples,
            "data": self.data,
            "per_output": {n: {k: _json_float(v) for k, v in m.items()} for n, m in self.per_output.items()},
            "accuracy_a": self.accuracy_a,
            "accuracy_b": self.accuracy_b,
            "accuracy_drop": self.accuracy_drop,
            "custom": {k: _json_float(v) for k, v in self.custom.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FidelityReport:
        """Inverse of as_dict (a report read back from JSON or model metadata)."""
        return cls(
            per_output={
                n: {k: _from_json_float(v) for k, v in m.items()} for n, m in d.get("per_output", {}).items()
            },
            samples=int(d.get("samples", 0)),
            accuracy_a=d.get("accuracy_a"),
            accuracy_b=d.get("accuracy_b"),
            custom={k: _from_json_float(v) for k, v in d.get("custom", {}).items()},
            data=d.get("data", ""),
        )

    def table(self, names: tuple[str, str] = ("A", "B")) -> str:
        """A plain-text table, one row per output, columns aligned; `names` label A and B."""

        def fmt(v: float | None) -> str:
            if v is None:
                return "-"
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            return f"{v:.4g}"

        header = ["output", *TABLE_METRICS]
        rows = [[n, *(fmt(m.get(k)) for k in TABLE_METRICS)] for n, m in self.per_output.items()]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(r: list[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

        out = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
        out.append(f"samples: {self.samples}" + (f" ({self.data})" if self.data else ""))
        if self.accuracy_a is not None:
            out.append(
                f"accuracy: {names[0]} {self.accuracy_a:.4f}  {names[1]} {self.accuracy_b:.4f}  drop {self.accuracy_drop:+.4f}"
            )
        for k, v in self.custom.items():
            out.append(f"{k}: {fmt(v)}")
        return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Running both models
# --------------------------------------------------------------------------------------------------

_ORT_NP = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _session(model: onnx.ModelProto | str | os.PathLike, target: Target):
    """Session for a proto or a path; paths go through load_model (clean errors, IR version clamp)."""
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    return model, make_session(model, target)


def feed_for(sess, feed: Mapping[str, np.ndarray], which: str) -> dict[str, np.ndarray]:
    """The session's inputs from the feed; B may take another float width than A (fp16), so cast within a kind."""
    out = {}
    for i in sess.get_inputs():
        if i.name not in feed:
            raise BadInputError(f"model {which} needs input {i.name!r}, which the data does not provide")
        x = feed[i.name]
        want = _ORT_NP.get(i.type)
        if want is not None and x.dtype != want and np.dtype(want).kind == x.dtype.kind:
            x = x.astype(want)
        out[i.name] = x
    return out


def check_same_inputs(sess_a, sess_b) -> None:
    """B must take the inputs A takes (the data is A's): same names, same kind of values (B may use
    another float width, e.g. fp16), same rank and the same static dims. A mismatch is the user's
    pair of models, so BadInputError here, before ORT fails on the first sample."""
    a = {i.name: i for i in sess_a.get_inputs()}
    for ib in sess_b.get_inputs():
        ia = a.get(ib.name)
        if ia is None:
            raise BadInputError(f"model B has input {ib.name!r}, which model A lacks (A has {sorted(a)}); inputs must match")
        ka, kb = (np.dtype(_ORT_NP[i.type]).kind if i.type in _ORT_NP else i.type for i in (ia, ib))
        if ka != kb:
            raise BadInputError(f"input {ib.name!r} is {ia.type} in model A but {ib.type} in model B; inputs must match")
        sa, sb = list(ia.shape or []), list(ib.shape or [])
        fixed = len(sa) == len(sb) and all(
            not (isinstance(x, int) and isinstance(y, int)) or x == y for x, y in zip(sa, sb, strict=True)
        )
        if not fixed:
            raise BadInputError(f"input {ib.name!r} has shape {sa} in model A but {sb} in model B; inputs must match")


def compare_models(
    model_a: onnx.ModelProto | str | os.PathLike,
    model_b: onnx.ModelProto | str | os.PathLike,
    data: Any = None,
    target: Target | None = None,
    limit: int | None = None,
    progress: bool = False,
    *,
    labels: np.ndarray | str | os.PathLike | None = None,
    metrics: Sequence[str | MetricFn] = (),
    metric: str | MetricFn | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
) -> FidelityReport:
    """Run A and B on the same samples and measure B against A, output by output.

    `data` is a DataSource, any iterable of feed dicts, or a spec for open_data (None generates
    inputs: a weak check). Outputs are matched by name; every output of A must exist in B. With
    `labels`, the first output of each model is scored (argmax over its last axis) against them.
    `metrics` (or a single `metric`) are pluggable per-sample metrics, given as specs for
    load_metric or as callables; each is averaged over the samples into report.custom.
    """
    target = target or Target()
    proto_a, sess_a = _session(model_a, target)
    _, sess_b = _session(model_b, target)
    check_same_inputs(sess_a, sess_b)
    if isinstance(data, DataSource) or data is None or isinstance(data, (str, os.PathLike)):
        data = open_data(data, proto_a, input_shapes=input_shapes, limit=limit, seed=seed)
    elif not isinstance(data, Iterable):
        raise BadInputError(f"data: expected a path, a DataSource or feed dicts, got {type(data).__name__}")
    names_a = [o.name for o in sess_a.get_outputs()]
    names_b = {o.name for o in sess_b.get_outputs()}
    missing = [n for n in names_a if n not in names_b]
    if missing:
        raise BadInputError(
            f"model B lacks output(s) {missing} of model A (B has {sorted(names_b)}); outputs are matched by name"
        )
    wanted = [*metrics, *([metric] if metric is not None else [])]
    fns = [(_metric_name(m), load_metric(m) if isinstance(m, str) else m) for m in wanted]
    custom_sums = {name: 0.0 for name, _ in fns}
    label_arr = load_labels_any(labels)
    preds_a: list[np.ndarray] = []
    preds_b: list[np.ndarray] = []
    acc = FidelityAccumulator(names_a)
    total = len(data) if hasattr(data, "__len__") else None
    if limit is not None and total is not None:
        total = min(total, limit)
    it: Iterable = data
    if progress:
        it = tqdm(data, total=total, desc="compare", unit="sample")
    for k, feed in enumerate(it):
        if limit is not None and k >= limit:
            break
        out_a = dict(zip(names_a, sess_a.run(names_a, feed_for(sess_a, feed, "A")), strict=True))
        out_b = dict(zip(names_a, sess_b.run(names_a, feed_for(sess_b, feed, "B")), strict=True))
        acc.update(out_a, out_b)
        for name, fn in fns:
            try:
                v = fn(out_a, out_b)
            except Exception as e:  # noqa: BLE001 - user code: report which metric failed
                raise BadInputError(f"metric {name} raised {type(e).__name__}: {e}") from e
            try:
                custom_sums[name] += float(v)
            except (TypeError, ValueError):
                raise BadInputError(f"metric {name} returned {type(v).__name__}, expected a float") from None
        if label_arr is not None:
            first = names_a[0]
            preds_a.append(predictions(out_a[first]))
            preds_b.append(predictions(out_b[first]))
    if acc.samples == 0:
        raise BadInputError("data: no samples to compare on")
    report = FidelityReport(
        per_output=acc.result(),
        samples=acc.samples,
        custom={name: s / acc.samples for name, s in custom_sums.items()},
        data=data.describe() if hasattr(data, "describe") else "",
    )
    if label_arr is not None:
        pa, pb = np.concatenate(preds_a), np.concatenate(preds_b)
        one_hot = label_arr.ndim >= 2 and label_arr.dtype.kind == "f" and label_arr.shape[-1] > 1
        flat = label_arr.argmax(-1).reshape(-1) if one_hot else label_arr.reshape(-1)
        if flat.size < pa.size:
            raise BadInputError(f"labels: {flat.size} labels for {pa.size} predictions of output {names_a[0]!r}")
        report.accuracy_a = accuracy(pa, flat[: pa.size])
        report.accuracy_b = accuracy(pb, flat[: pb.size])
    return report


def load_labels_any(labels: np.ndarray | str | os.PathLike | None) -> np.ndarray | None:
    """Labels given as an array or a file path (see data.load_labels)."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        return load_labels(labels)
    return np.asarray(labels)


# --------------------------------------------------------------------------------------------------
# Gates (CI) and the one meaning of --metric
# --------------------------------------------------------------------------------------------------

#: report-level figures an assertion or --max-drop may name besides the per-output metrics
REPORT_FIGURES = ("accuracy_a", "accuracy_b", "accuracy_drop")
_ASSERT_RX = re.compile(r"^\s*([^\s\[<>=]+?)(?:\[(.+)\])?\s*(>=|<=|>|<)\s*([-+0-9.eEinfa]+)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
}


@dataclass(frozen=True)
class Assertion:
    """`cosine>=0.99` (every output it applies to) or `cosine[logits]>=0.99` (one output); also
    `accuracy_b>=0.9`, `accuracy_drop<=0.01` and the name of a --metric function. A CI gate in the
    style of `polygraphy run --atol`: compare exits 3 when one fails."""

    metric: str
    op: str
    value: float
    output: str | None = None

    @classmethod
    def parse(cls, text: str) -> Assertion:
        m = _ASSERT_RX.match(text)
        if not m:
            raise BadInputError(f"--assert {text!r}: expected METRIC>=V, METRIC<=V, METRIC>V or METRIC<V, "
                                "e.g. cosine>=0.99 or max_abs[logits]<=1e-3")
        name, output, op, value = m.groups()
        try:
            v = float(value)
        except ValueError:
            raise BadInputError(f"--assert {text!r}: {value!r} is not a number") from None
        return cls(name, op, v, output)

    def __str__(self) -> str:
        where = f"[{self.output}]" if self.output else ""
        return f"{self.metric}{where}{self.op}{self.value:g}"

    def measured(self, report: FidelityReport) -> list[tuple[str, float]]:
        """(where, value) pairs the assertion checks: one per output, or one report-level figure."""
        if self.metric in REPORT_FIGURES:
            v = getattr(report, self.metric)
            if v is None:
                raise BadInputError(f"--assert {self}: {self.metric} needs --labels")
            return [("", float(v))]
        if self.metric in report.custom:
            return [("", float(report.custom[self.metric]))]
        if self.metric not in HIGHER_IS_WORSE:
            known = [*HIGHER_IS_WORSE, *REPORT_FIGURES, *report.custom]
            raise BadInputError(f"--assert {self}: unknown metric {self.metric!r} (known: {', '.join(known)})")
        if self.output is not None:
            if self.output not in report.per_output:
                raise BadInputError(f"--assert {self}: no output {self.output!r} (outputs: {', '.join(report.per_output)})")
            vals = report.per_output[self.output]
            if self.metric not in vals:
                raise BadInputError(f"--assert {self}: {self.metric} does not apply to output {self.output!r}")
            return [(self.output, float(vals[self.metric]))]
        return [(n, float(v)) for n, v in report._values(self.metric).items()]

    def failure(self, report: FidelityReport) -> str | None:
        """None when it holds; else 'cosine>=0.99 failed: cosine 0.9812 (output logits)'."""
        for where, v in self.measured(report):
            if math.isnan(v) or not _OPS[self.op](v, self.value):
                on = f" (output {where})" if where else ""
                return f"{self} failed: {self.metric} {v:.6g}{on}"
        return None


def assertion_failures(report: FidelityReport, assertions: Sequence[Assertion]) -> list[str]:
    """The failure line of every assertion that does not hold, in the order given."""
    return [f for a in assertions if (f := a.failure(report)) is not None]


#: the built-in names `--metric` accepts (compare: the headline figure; search: the constraint)
BUILTIN_METRICS = ("accuracy", "top1", "sequence", "cosine", "rel_l2", "snr_db", "max_abs", "mean_abs")


@dataclass(frozen=True)
class MetricSpec:
    """What `--metric` means on every command: a built-in name, or MODULE:FUNC (or file.py:FUNC),
    a function f(outputs_a, outputs_b) -> float (higher is better) averaged over samples."""

    name: str
    fn: MetricFn | None = None

    @classmethod
    def parse(cls, spec: str) -> MetricSpec:
        if ":" in spec:
            return cls(spec, load_metric(spec))
        if spec not in BUILTIN_METRICS:
            raise BadInputError(f"--metric {spec!r}: expected one of {', '.join(BUILTIN_METRICS)} or MODULE:FUNC")
        return cls(spec)

    @property
    def custom(self) -> bool:
        return self.fn is not None

    def value(self, report: FidelityReport) -> float | None:
        """The figure in a compare report (accuracy: of B; a per-output metric: its worst output)."""
        if self.fn is not None:
            return report.custom.get(self.name)
        if self.name == "accuracy":
            return report.accuracy_b
        return report.worst(self.name)


class OutputsMetricEvaluate:
    """An `evaluate(session) -> float` (the search's custom metric) from a compare-style function:
    the mean of fn(reference outputs, candidate outputs) over the samples, the reference being the
    input model's outputs (computed once)."""

    def __init__(self, fn: MetricFn, reference: onnx.ModelProto, data: Iterable[Mapping[str, np.ndarray]],
                 target: Target | None = None):
        self.fn, self.reference, self.data, self.target = fn, reference, data, target or Target()
        self._ref: list[dict[str, np.ndarray]] | None = None
        self._feeds: list[Mapping[str, np.ndarray]] = []

    def _reference(self) -> list[dict[str, np.ndarray]]:
        if self._ref is None:
            sess = make_session(self.reference, self.target)
            names = [o.name for o in sess.get_outputs()]
            self._feeds = list(self.data)
            self._ref = [dict(zip(names, sess.run(names, feed_for(sess, f, "A")), strict=True)) for f in self._feeds]
            if not self._ref:
                raise BadInputError("evaluation data is empty")
        return self._ref

    def __call__(self, session: Any) -> float:
        ref = self._reference()
        names = list(ref[0])
        total = 0.0
        for feed, ra in zip(self._feeds, ref, strict=True):
            out = dict(zip(names, session.run(names, feed_for(session, feed, "B")), strict=True))
            total += float(self.fn(ra, out))
        return total / len(ref)


#: the help of `--metric` on every command that takes it
METRIC_HELP = f"a built-in metric ({', '.join(BUILTIN_METRICS)}) or MODULE:FUNC / file.py:FUNC, f(outputs_a, outputs_b) -> float"
