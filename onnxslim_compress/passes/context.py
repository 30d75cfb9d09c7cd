"""What every pass and search trial shares: target, data, shapes, seed and a cache of statistics.

The cache is keyed by a fingerprint of the model plus the parameters that produced an entry, so a
search trial that needs the SVD or activation statistics an earlier trial computed reuses them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxslim_compress.runtime.session import Target, make_session


def fingerprint(model: onnx.ModelProto) -> str:
    """Stable hash of the graph structure and weights (not of metadata or doc strings)."""
    h = hashlib.blake2b(digest_size=16)
    g = model.graph
    for n in g.node:
        h.update(n.op_type.encode())
        h.update("|".join(n.input).encode())
        h.update("|".join(n.output).encode())
        for a in n.attribute:
            h.update(a.SerializeToString())
    for t in g.initializer:
        h.update(t.name.encode())
        h.update(bytes(str(list(t.dims)), "ascii"))
        h.update(t.raw_data if t.HasField("raw_data") else t.SerializeToString())
    return h.hexdigest()


class Cache:
    """A plain dict keyed by (model fingerprint, purpose, params). Counts hits for the benchmarks."""

    def __init__(self):
        self._store: dict[tuple, Any] = {}
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: tuple, compute):
        if key in self._store:
            self.hits += 1
            return self._store[key]
        self.misses += 1
        value = compute()
        self._store[key] = value
        return value

    def __contains__(self, key: tuple) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)


@dataclass
class Context:
    target: Target = field(default_factory=Target)
    #: calibration data: an iterable of feed dicts (see onnxslim_compress.data), or None
    calib: Any = None
    #: bound input shapes (name -> dims): compress fills them from --input-shape, the data or the
    #: model's metadata; dynamic dims still unbound count as 1 for analysis (and are noted)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    seed: int = 0
    cache: Cache = field(default_factory=Cache)
    #: show progress bars on long work
    progress: bool = False
    #: on_progress(stage, done, total) is called inside long passes (calibration samples, recovery
    #: stages, SVD layers); jobs/compress.py shows it on the pass bar, so no bar sits frozen
    on_progress: Callable[[str, int, int | None], None] | None = None
    #: timer(float model, candidate, feed) -> latency ratio candidate / float: a number (exact), a
    #: passes.quantize.speed.Timing or an ABResult (ratio with its 95 % interval); None = the real
    #: interleaved timing on the target (quantize's speed check; tests inject a deterministic one)
    timer: Callable[[onnx.ModelProto, onnx.ModelProto, dict], Any] | None = None
    #: per-layer latency over channel counts on the target (runtime/latency_table.py); None = the
    #: pass that needs it measures (cached per target and CPU ISA) and leaves it here for the next
    #: trial; tests inject a fake table so nothing depends on the machine's timing
    latency_table: Any = None
    #: the precision the pipeline ends at ("fp32", "int8"), set by Pipeline.run from its passes:
    #: channel alignment is probed per precision (int8 kernels prefer other multiples than fp32)
    precision: str | None = None

    def tick(self, stage: str, done: int, total: int | None = None) -> None:
        """Report progress inside a pass (a no-op unless someone listens)."""
        if self.on_progress is not None:
            self.on_progress(stage, done, total)

    def ticker(self, stage: str, total: int | None = None) -> Callable[[int], None] | None:
        """A per-sample callback for runtime.activations.iterate_tensors(progress=...), or None."""
        if self.on_progress is None:
            return None
        cb = self.on_progress
        return lambda done: cb(stage, done, total)

    def session(self, model: onnx.ModelProto, **kwargs):
        return make_session(model, self.target, **kwargs)
