"""Streaming statistics of intermediate tensors, collected with ONNX Runtime.

Recovery (least-squares refit, whitened SVD, bias correction) and calibration all need statistics of
intermediate activations. Holding every activation of every layer in memory is what makes ONNX
Runtime's own calibrator run out of memory on BERT, so this module exposes the wanted tensors as
graph outputs and hands each batch to accumulators that keep only running sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import helper

from onnxslim_compress.runtime.session import Target, make_session

Feed = dict[str, np.ndarray]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the tensors in `names` (graph outputs stay first)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(helper.make_empty_tensor_value_info(n))
            existing.add(n)
    return m


def iterate_tensors(
    model: onnx.ModelProto,
    names: list[str],
    data: Iterable[Feed],
    *,
    target: Target | None = None,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield {name: value} for each calibration sample, running the model once per sample.

    Only feeds whose names are model inputs are passed, so a data set with extra arrays still works.
    `progress(samples done)` is called after each sample (Context.ticker: a live bar, not a frozen one).
    """
    m = with_outputs(model, names)
    sess = make_session(m, target or Target(kind="cpu", opt_level="basic"))
    del m  # the session holds its own weights: this copy would live as long as the generator
    input_names = [i.name for i in sess.get_inputs()]
    for k, feed in enumerate(data):
        if limit is not None and k >= limit:
            break
        if not names:  # sess.run([]) would return every graph output, not none
            yield {}
            continue
        outs = sess.run(names, {n: feed[n] for n in input_names if n in feed})
        if progress is not None:
            progress(k + 1)
        yield dict(zip(names, outs, strict=True))


def accumulate(
    model: onnx.ModelProto,
    names: list[str],
    data: Iterable[Feed],
    update: Callable[[dict[str, np.ndarray]], None],
    **kwargs,
) -> int:
    """Run `update` on every sample's tensors; returns the number of samples seen."""
    n = 0
    for values in iterate_tensors(model, names, data, **kwargs):
        update(values)
        n += 1
    return n


class Moments:
    """Running sum, sum of squares and Gram matrix X^T X over rows of a 2-D view of a tensor.

    `axis` is the feature axis; every other axis becomes a row. Float64 accumulation keeps the
    Gram matrix usable for Cholesky on thousands of samples.
    """

    def __init__(self, axis: int = -1, gram: bool = True):
        self.axis = axis
        self.gram = gram
        self.count = 0
        self.sum: np.ndarray | None = None
        self.sq: np.ndarray | None = None
        self.xtx: np.ndarray | None = None
        self.absmax: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.moveaxis(np.asarray(x, dtype=np.float64), self.axis, -1)
        rows = x.reshape(-1, x.shape[-1])
        if self.sum is None:
            f = rows.shape[1]
            self.sum = np.zeros(f)
            self.sq = np.zeros(f)
            self.absmax = np.zeros(f)
            if self.gram:
                self.xtx = np.zeros((f, f))
        self.count += rows.shape[0]
        self.sum += rows.sum(0)
        self.sq += (rows * rows).sum(0)
        self.absmax = np.maximum(self.absmax, np.abs(rows).max(0))
        if self.gram:
            self.xtx += rows.T @ rows

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def rms(self) -> np.ndarray:
        return np.sqrt(self.sq / max(self.count, 1))
