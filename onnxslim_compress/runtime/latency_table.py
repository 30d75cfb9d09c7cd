"""Per-layer latency over channel counts, measured on the target and cached on disk.

Why: latency is a step function of the channel count on real kernels (tensor cores want multiples
of 8/16, ORT's CPU convolutions want SIMD-width multiples; an unaligned pruned MobileNetV2 ran 3x
slower here). Pruning and the search consult this table to skip channel counts that are slower
than a larger, aligned one. Entries are keyed by the layer's shape and the target, and kept in a
JSON file per target so a second search never re-measures them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.runtime.profiler import measure
from onnxslim_compress.runtime.session import Target, make_session

#: default channel alignment per target and precision; see docs/ARCHITECTURE.md "Runtime facts"
ALIGNMENT = {("cpu", "fp32"): 1, ("cpu", "int8"): 1, ("cuda", "fp32"): 8, ("cuda", "fp16"): 8,
             ("tensorrt", "fp16"): 8, ("tensorrt", "fp32"): 8, ("tensorrt", "int8"): 32, ("cuda", "int8"): 16}


def default_round_to(target: Target, precision: str = "fp32") -> int:
    """Channel/rank multiple a target wants: 8 for fp16 tensor cores, 16/32 for int8, 1 on CPU."""
    return ALIGNMENT.get((target.kind, precision), 8 if target.kind != "cpu" else 1)


@dataclass(frozen=True)
class ConvSpec:
    """One Conv layer's shape (batch 1). `cout` is the channel count varied by the table."""

    cin: int
    hw: tuple[int, int]
    kernel: int = 3
    stride: int = 1
    group: int = 1

    def key(self, cout: int) -> str:
        return f"conv:cin={self.cin}:hw={self.hw[0]}x{self.hw[1]}:k={self.kernel}:s={self.stride}:g={self.group}:cout={cout}"

    def model(self, cout: int) -> onnx.ModelProto:
        rng = np.random.default_rng(0)
        w = rng.standard_normal((cout, self.cin // self.group, self.kernel, self.kernel)).astype(np.float32)
        pad = self.kernel // 2
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[self.kernel] * 2,
                                strides=[self.stride] * 2, pads=[pad] * 4, group=self.group)
        g = helper.make_graph(
            [node], "layer",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, self.cin, *self.hw])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(w, "w")],
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def cache_path(target: Target) -> Path:
    root = Path(os.environ.get("ONNXSLIM_COMPRESS_CACHE", "~/.cache/onnxslim_compress")).expanduser()
    return root / "latency" / f"{target.kind}-t{target.threads}.json"


class LatencyTable:
    """Measured median latency (ms) per (layer spec, channel count) on one target, persisted."""

    def __init__(self, target: Target, path: str | os.PathLike | None = None, runs: int = 30, warmup: int = 5):
        self.target = target
        self.path = Path(path) if path else cache_path(target)
        self.runs, self.warmup = runs, warmup
        self.entries: dict[str, float] = {}
        self.measured = 0
        if self.path.is_file():
            try:
                self.entries = {k: float(v) for k, v in json.loads(self.path.read_text()).get("entries", {}).items()}
            except (ValueError, OSError):
                self.entries = {}

    def latency(self, spec: ConvSpec, cout: int) -> float:
        key = spec.key(cout)
        if key not in self.entries:
            sess = make_session(spec.model(cout), self.target)
            x = np.random.default_rng(1).standard_normal((1, spec.cin, *spec.hw)).astype(np.float32)
            self.entries[key] = measure(sess, {"x": x}, warmup=self.warmup, runs=self.runs).median
            self.measured += 1
        return self.entries[key]

    def sweep(self, spec: ConvSpec, couts: list[int]) -> dict[int, float]:
        return {c: self.latency(spec, c) for c in couts}

    def best_count(self, spec: ConvSpec, wanted: int, upper: int) -> int:
        """The channel count in [wanted, upper] with the lowest latency (ties: fewest channels).

        Pruning to `wanted` channels is pointless if `wanted + k` runs faster; this picks that count.
        """
        best, best_ms = wanted, self.latency(spec, wanted)
        for c in range(wanted + 1, upper + 1):
            ms = self.latency(spec, c)
            if ms < best_ms * 0.97:  # 3 % margin: noise must not move the choice
                best, best_ms = c, ms
        return best

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"target": asdict(self.target) | {"ep_options": {}}, "entries": self.entries}, indent=0))
        os.replace(tmp, self.path)
        return self.path
