"""Streamed calibration: running ranges and histograms per tensor, then a clipping range per method.

Why streamed: ONNX Runtime's calibrator keeps every activation of every sample in memory, which is
what runs it out of memory on BERT-size models. Here each sample updates a fixed-size histogram per
tensor and is dropped, so memory depends on the number of tensors, never on the number of samples.

The histogram is symmetric around zero and doubles its width (merging bin pairs, which is exact)
when a sample exceeds it, so one pass is enough and no first min/max pass is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from onnxslim_compress.data import check_generated_size
from onnxslim_compress.graph.shapes import elem_type_to_numpy, graph_inputs
from onnxslim_compress.runtime.activations import iterate_tensors
from onnxslim_compress.runtime.session import Target

Method = Literal["minmax", "percentile", "entropy", "mse"]
Feed = dict[str, np.ndarray]


class Histogram:
    """Running min/max and a histogram on [-width, width] (nbins even) that grows by doubling."""

    def __init__(self, nbins: int = 4096):
        if nbins % 4:
            raise ValueError("nbins must be a multiple of 4")
        self.nbins = nbins
        self.width = 0.0
        self.counts = np.zeros(nbins, dtype=np.int64)
        self.min = np.inf
        self.max = -np.inf
        self.samples = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).ravel()
        x = x[np.isfinite(x)] if not np.isfinite(x).all() else x
        self.samples += 1
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        amax = max(-lo, hi)
        if amax <= 0.0:
            amax = 0.0
        if self.width == 0.0:
            if amax == 0.0:
                self.counts[self.nbins // 2] += x.size  # all zeros: park them in the bin right of 0
                return
            self.width = amax
        while amax > self.width:  # merge bin pairs into the middle half: exact, no resampling
            merged = self.counts.reshape(-1, 2).sum(1)
            self.counts = np.zeros(self.nbins, dtype=np.int64)
            self.counts[self.nbins // 4 : 3 * self.nbins // 4] = merged
            self.width *= 2.0
        idx = ((x / self.width + 1.0) * (self.nbins / 2)).astype(np.int64)
        np.clip(idx, 0, self.nbins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.nbins)

    @property
    def centers(self) -> np.ndarray:
        step = 2 * self.width / self.nbins
        return -self.width + (np.arange(self.nbins) + 0.5) * step

    def folded(self) -> np.ndarray:
        """Histogram of |x| on [0, width] with nbins/2 bins."""
        h = self.nbins // 2
        return self.counts[h:] + self.counts[:h][::-1]


def _quantile(counts: np.ndarray, edges_lo: float, step: float, q: float, upper: bool) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    cdf = np.cumsum(counts) / total
    k = int(np.searchsorted(cdf, q, side="left"))
    k = min(k, len(counts) - 1)
    return edges_lo + (k + (1 if upper else 0)) * step


def _kl_threshold(absh: np.ndarray, levels: int, max_candidates: int = 128) -> int:
    """Number of |x| bins to keep that minimizes KL(P || Q) (TensorRT's entropy calibration).

    P is the kept histogram with the clipped tail added to its last bin; Q merges the kept bins into
    `levels` quantization bins and spreads each back evenly over its non-empty source bins.
    """
    nz = np.nonzero(absh)[0]
    if len(nz) == 0:
        return len(absh)
    last = int(nz[-1]) + 1
    if last <= levels:
        return last
    stride = max(1, (last - levels) // max_candidates)
    ref_all = absh.astype(np.float64)
    best, best_i = np.inf, last
    for i in [*range(levels, last, stride), last]:
        ref = ref_all[:i]
        p = ref.copy()
        p[-1] += ref_all[i:].sum()
        edges = np.linspace(0, i, levels + 1).astype(np.int64)  # strictly increasing since i >= levels
        sums = np.add.reduceat(ref, edges[:-1])
        nzc = np.add.reduceat((ref > 0).astype(np.float64), edges[:-1])
        q = np.repeat(np.where(nzc > 0, sums / np.maximum(nzc, 1), 0.0), np.diff(edges)) * (ref > 0)
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        mask = p > 0
        pm, qm = p[mask] / ps, q[mask] / qs
        kl = float(np.sum(pm * np.log(pm / np.where(qm > 0, qm, 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return best_i


def _mse_factor(centers: np.ndarray, counts: np.ndarray, lo: float, hi: float, qmin: int, qmax: int) -> float:
    """Shrink factor f in (0, 1] for the range (f*lo, f*hi) that minimizes the expected squared error."""
    mask = counts > 0
    c, w = centers[mask], counts[mask].astype(np.float64)
    fs = np.linspace(0.05, 1.0, 96)
    best_f, best_e = 1.0, np.inf
    for f in fs:
        a, b = f * lo, f * hi
        scale = (b - a) / (qmax - qmin) if b > a else 1.0
        zp = np.clip(np.round(qmin - a / scale), qmin, qmax)
        q = np.clip(np.round(c / scale) + zp, qmin, qmax)
        e = float(np.sum(w * (c - (q - zp) * scale) ** 2))
        if e < best_e:
            best_e, best_f = e, f
    return float(best_f)


def compute_range(
    h: Histogram, method: Method, *, symmetric: bool, percentile: float = 99.99, bits: int = 8
) -> tuple[float, float]:
    """Clipping range (lo, hi) for one tensor. Symmetric ranges come back as (-t, t)."""
    if h.min > h.max:  # never saw data
        return 0.0, 0.0
    if method == "minmax" or h.width == 0.0:
        if symmetric:
            t = max(abs(h.min), abs(h.max))
            return -t, t
        return float(h.min), float(h.max)
    step = 2 * h.width / h.nbins
    if method == "percentile":
        if symmetric:
            t = _quantile(h.folded(), 0.0, step, percentile / 100, upper=True)
            t = min(t, max(abs(h.min), abs(h.max)))
            return -t, t
        lo = _quantile(h.counts, -h.width, step, 1 - percentile / 100, upper=False)
        hi = _quantile(h.counts, -h.width, step, percentile / 100, upper=True)
        return max(lo, h.min), min(hi, h.max)
    if method == "entropy":
        absh = h.folded()
        nonneg = h.min >= 0
        levels = 2 ** bits if (nonneg and not symmetric) else 2 ** (bits - 1)
        t = _kl_threshold(absh, levels) * step
        if symmetric:
            t = min(t, max(abs(h.min), abs(h.max)))
            return -t, t
        return max(h.min, -t), min(h.max, t)
    if method == "mse":
        if symmetric:
            t = max(abs(h.min), abs(h.max))
            f = _mse_factor(h.centers, h.counts, -t, t, -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
            return -f * t, f * t
        lo, hi = min(h.min, 0.0), max(h.max, 0.0)
        f = _mse_factor(h.centers, h.counts, lo, hi, 0, 2**bits - 1)
        return f * lo, f * hi
    raise ValueError(f"unknown calibration method {method!r}")


@dataclass
class QParams:
    """Scale and zero point for one tensor (per-tensor activations)."""

    scale: float
    zero_point: int


def asymmetric_qparams(lo: float, hi: float, qmin: int = 0, qmax: int = 255) -> QParams:
    """uint8 asymmetric: the range always contains 0 so that zero (padding, ReLU) is exact."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-12:
        return QParams(1.0, int(qmin if lo >= 0 else (qmin + qmax + 1) // 2))
    scale = (hi - lo) / (qmax - qmin)
    zp = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return QParams(float(scale), zp)


def symmetric_qparams(lo: float, hi: float, qmax: int = 127) -> QParams:
    t = max(abs(lo), abs(hi))
    return QParams(float(t / qmax) if t > 1e-12 else 1.0, 0)


def collect_histograms(
    model: onnx.ModelProto,
    names: list[str],
    data: Iterable[Feed],
    *,
    limit: int | None = None,
    nbins: int = 4096,
    target: Target | None = None,
    channel_axes: dict[str, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Histogram], dict[str, np.ndarray]]:
    """One streamed pass over `data`: a Histogram per tensor name; each sample is dropped after use.

    For tensors in `channel_axes` the per-channel mean is accumulated too (bias correction needs the
    mean input of each weighted op, and computing it here saves a second pass).
    """
    hists = {n: Histogram(nbins) for n in names}
    axes = dict(channel_axes or {})
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    fetch = sorted(set(names) | set(axes))
    for values in iterate_tensors(model, fetch, data, target=target, limit=limit, progress=progress):
        for n, v in values.items():
            if n in hists:
                hists[n].update(v)
            if n in axes and v.ndim and v.size:  # empty: an If branch that did not run (bodies.expose)
                x = np.moveaxis(v.astype(np.float64), axes[n], -1).reshape(-1, v.shape[axes[n]])
                sums[n] = sums.get(n, 0) + x.sum(0)
                rows[n] = rows.get(n, 0) + x.shape[0]
    return hists, {n: sums[n] / rows[n] for n in sums}


def synthetic_feeds(model: onnx.ModelProto, shapes: dict[str, list[int]], n: int, seed: int = 0) -> list[Feed]:
    """Weak fallback when no calibration data is given: standard-normal (or small-int) inputs."""
    rng = np.random.default_rng(seed)
    out: list[Feed] = []
    for _ in range(n):
        feed: Feed = {}
        for vi in graph_inputs(model):
            dt = elem_type_to_numpy(vi.type.tensor_type.elem_type)
            shape = shapes.get(vi.name, [1])
            check_generated_size(vi.name, shape, np.float64 if np.issubdtype(dt, np.floating) else dt)
            if np.issubdtype(dt, np.floating):
                feed[vi.name] = rng.standard_normal(shape).astype(dt)
            elif dt == np.bool_:
                feed[vi.name] = np.ones(shape, dtype=dt)
            else:
                feed[vi.name] = rng.integers(0, 2, size=shape).astype(dt)
        out.append(feed)
    return out


def take(data: Iterable[Feed], n: int) -> Iterator[Feed]:
    """The first n samples of a re-iterable data set, without materializing the rest."""
    for k, feed in enumerate(data):
        if k >= n:
            return
        yield feed
