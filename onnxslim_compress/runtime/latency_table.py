"""Per-layer latency over channel counts, measured on the target and cached on disk.

Why: latency is a step function of the channel count on real kernels (tensor cores want multiples
of 8/16, ORT's CPU convolutions want SIMD-width multiples; an unaligned pruned MobileNetV2 ran 3x
slower here). Pruning and the search consult this table to skip channel counts that are slower
than a larger, aligned one. Entries are keyed by the layer's shape and the target, and kept in a
JSON file per target so a second search never re-measures them.

The file is keyed by the target AND the CPU's instruction set (ORT's NCHWc convolutions block
channels by 8 on AVX2 and by 16 on AVX512; VNNI/AMX int8 kernels have their own preferences), so a
table measured on one machine is never read on another. `probe_alignment` derives the channel
multiple a precision wants from the table's stair-steps (ARCHITECTURE.md "Runtime facts").
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

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


#: /proc/cpuinfo flags that change which kernels ORT picks (and so the channel counts it likes)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve")


@functools.cache
def cpu_isa() -> tuple[str, ...]:
    """The ISA flags of this CPU that matter to ORT's kernels (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return tuple(f for f in ISA_FLAGS if f in flags)


def isa_tag(isa: Iterable[str] | None = None) -> str:
    """A file-name-safe tag of the ISA flags ("avx2+avx512f+..."; "generic" when none are known)."""
    flags = tuple(cpu_isa() if isa is None else isa)
    return "+".join(flags) or "generic"


@dataclass(frozen=True)
class ConvSpec:
    """One Conv layer's shape (batch 1). `cout` is the channel count varied by the table.

    precision "int8" times the layer as ORT runs a static QDQ conv (uint8 activations, int8
    per-channel weights, fused into QLinearConv); its alignment preferences differ from fp32's.
    A depthwise layer is spelled group=cin with cout=cin.
    """

    cin: int
    hw: tuple[int, int]
    kernel: int = 3
    stride: int = 1
    group: int = 1
    precision: str = "fp32"

    def key(self, cout: int) -> str:
        tail = "" if self.precision == "fp32" else f":p={self.precision}"
        return (f"conv:cin={self.cin}:hw={self.hw[0]}x{self.hw[1]}:k={self.kernel}:s={self.stride}:g={self.group}"
                f":cout={cout}{tail}")

    def model(self, cout: int) -> onnx.ModelProto:
        rng = np.random.default_rng(0)
        w = rng.standard_normal((cout, self.cin // self.group, self.kernel, self.kernel)).astype(np.float32)
        pad = self.kernel // 2
        attrs = {"kernel_shape": [self.kernel] * 2, "strides": [self.stride] * 2, "pads": [pad] * 4, "group": self.group}
        inits = [numpy_helper.from_array(w, "w")]
        if self.precision == "int8":
            scale = (np.abs(w).reshape(cout, -1).max(1) / 127).astype(np.float32)
            q = np.clip(np.round(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
            inits = [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(scale, "ws"),
                     numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
                     numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
                     numpy_helper.from_array(np.array(128, np.uint8), "xz")]
            nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                     helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                     helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
                     helper.make_node("Conv", ["xd", "w"], ["c"], **attrs),
                     helper.make_node("QuantizeLinear", ["c", "xs", "xz"], ["cq"]),
                     helper.make_node("DequantizeLinear", ["cq", "xs", "xz"], ["y"])]
        else:
            nodes = [helper.make_node("Conv", ["x", "w"], ["y"], **attrs)]
        g = helper.make_graph(
            nodes, "layer",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, self.cin, *self.hw])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            inits,
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def cache_path(target: Target) -> Path:
    """The table's file: per target kind, thread count and CPU ISA.

    ONNXSLIM_COMPRESS_LATENCY_DIR overrides the folder (tests point it at a temporary one)."""
    env = os.environ.get("ONNXSLIM_COMPRESS_LATENCY_DIR")
    if env:
        root = Path(env).expanduser()
    else:
        root = Path(os.environ.get("ONNXSLIM_COMPRESS_CACHE", "~/.cache/onnxslim_compress")).expanduser() / "latency"
    return root / f"{target.kind}-t{target.threads}-{isa_tag()}.json"


class LatencyLookup(Protocol):
    """What pruning reads from a latency table (a fake one in tests, the measured one otherwise)."""

    def latency(self, spec: ConvSpec, cout: int) -> float: ...


class LatencyTable:
    """Measured latency (ms, fastest of `runs`) per (layer spec, channel count) on one target, persisted."""

    def __init__(self, target: Target, path: str | os.PathLike | None = None, runs: int = 30, warmup: int = 5):
        self.target = target
        self.path = Path(path) if path else cache_path(target)
        self.runs, self.warmup = runs, warmup
        self.entries: dict[str, float] = {}
        #: keys measured in several interleaved rounds (the probe's sweeps), kept at their fastest
        self.settled: set[str] = set()
        self.isa = cpu_isa()
        self.measured = 0
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text())
                self.entries = {k: float(v) for k, v in doc.get("entries", {}).items()}
                self.settled = set(doc.get("settled", [])) & set(self.entries)
            except (ValueError, OSError, AttributeError, TypeError):
                self.entries, self.settled = {}, set()

    def latency(self, spec: ConvSpec, cout: int) -> float:
        key = spec.key(cout)
        if key not in self.entries:
            sess = make_session(spec.model(cout), self.target)
            x = np.random.default_rng(1).standard_normal((1, spec.cin, *spec.hw)).astype(np.float32)
            # the fastest run, not the median: a layer of a millisecond on a shared machine is hit by
            # other jobs in many runs, and interference only ever adds time
            self.entries[key] = measure(sess, {"x": x}, warmup=self.warmup, runs=self.runs).min
            self.measured += 1
        return self.entries[key]

    def sweep(self, spec: ConvSpec, couts: list[int]) -> dict[int, float]:
        return {c: self.latency(spec, c) for c in couts}

    def settle(self, spec: ConvSpec, couts: list[int], rounds: int = 5) -> None:
        """Measure the counts again in `rounds` sweeps of alternating order, keeping each one's fastest.

        A burst of load from another job inflates the counts timed during it; alternating sweeps
        spread it over different counts, and the minimum drops it. The probe reads step widths off
        neighbouring counts, so it needs this; a settled count is not re-measured."""
        todo = [c for c in couts if spec.key(c) not in self.settled]
        for r in range(rounds):
            for c in (todo if r % 2 == 0 else todo[::-1]):
                key = spec.key(c)
                old = self.entries.pop(key, None)
                new = self.latency(spec, c)
                self.entries[key] = new if old is None else min(old, new)
        self.settled.update(spec.key(c) for c in todo)

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
        tmp.write_text(json.dumps({"target": asdict(self.target) | {"ep_options": {}}, "isa": list(self.isa),
                                   "entries": self.entries, "settled": sorted(self.settled)}, indent=0))
        os.replace(tmp, self.path)
        return self.path


#: layers the alignment probe sweeps: a 3x3 and a 1x1 conv at a mid-network size (batch 1)
PROBE_SPECS = (ConvSpec(cin=96, hw=(28, 28), kernel=3), ConvSpec(cin=256, hw=(28, 28), kernel=1))
#: channel counts swept (each step candidate fits twice into the range)
PROBE_COUNTS = range(33, 97)
#: alignment steps considered
STEPS = (1, 2, 4, 8, 16, 32)
#: mean relative latency that rounding up to a step may cost and still count as "free"
STEP_TOLERANCE = 0.02
#: share of the relative costs dropped at each end before averaging (timing outliers)
TRIM = 0.1


@dataclass
class Alignment:
    """The probe's answer: the step, and what rounding up to each candidate step costs (mean rel.)."""

    precision: str
    step: int
    cost: dict[int, float]

    def as_dict(self) -> dict:
        return {"precision": self.precision, "step": self.step, "cost": {str(k): round(v, 4) for k, v in self.cost.items()}}


def probe_alignment(table: LatencyLookup, precision: str = "fp32", specs: Iterable[ConvSpec] = PROBE_SPECS,
                    counts: Iterable[int] = PROBE_COUNTS, tolerance: float = STEP_TOLERANCE) -> Alignment:
    """The channel multiple this target wants at `precision`, read off the table's stair-steps.

    On a stair-step latency curve of width s, rounding a count up to the next multiple of s costs
    nothing (the step is flat) and can even gain (unaligned counts take slower paths), while
    rounding to 2s costs a step. So the step is the largest candidate whose round-up cost, averaged
    over the swept counts (10 % trimmed at each end), stays within `tolerance` of the cheapest
    candidate's, on some probed layer. On a smooth (linear) curve that is 1 or 2: keeping extra
    channels then only costs time.
    """
    counts = list(counts)
    hi = max(counts)
    specs = [ConvSpec(s.cin, s.hw, s.kernel, s.stride, s.group, precision) for s in specs]
    settle = getattr(table, "settle", None)
    if settle is not None:
        for spec in specs:
            settle(spec, counts)
    per_spec: list[dict[int, float]] = []
    for spec in specs:
        cost: dict[int, float] = {}
        for s in STEPS:
            rel = []
            for c in counts:
                up = math.ceil(c / s) * s
                if up > hi:
                    continue
                base = table.latency(spec, c)
                rel.append((table.latency(spec, up) - base) / max(base, 1e-9))
            arr = np.sort(np.asarray(rel))
            cut = int(TRIM * len(arr))
            cost[s] = float(arr[cut: len(arr) - cut].mean()) if len(arr) > 2 * cut else 0.0
        per_spec.append(cost)
    # per layer kind, then the widest: load from other jobs blurs a stair (every count gets a random
    # extra), it does not draw an aligned one, so the layer whose steps stand out is the evidence
    # "free" is relative to the best step: where unaligned counts are slow (int8 VNNI kernels want
    # multiples of 4), rounding up to any multiple of 4 gains, and 32 gains less than 4 does
    steps = [max(s for s in STEPS if c[s] <= min(c.values()) + tolerance) for c in per_spec]
    step = max(steps)
    cost = {s: float(np.mean([c[s] for c in per_spec])) for s in STEPS}
    return Alignment(precision, step, cost)
