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
from dataclasses import asdict, dataclass, field, replace
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

    @property
    def input_shape(self) -> list[int]:
        return [1, self.cin, *self.hw]

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
            inits = _qdq_inits(q, scale)
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


def _qdq_inits(q: np.ndarray, scale: np.ndarray) -> list[onnx.TensorProto]:
    """The int8 probe layers' constants: per-channel weights (wq, ws, wz) and one uint8 activation
    scale/zero point (xs, xz)."""
    return [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(scale, "ws"),
            numpy_helper.from_array(np.zeros(scale.size, np.int8), "wz"),
            numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
            numpy_helper.from_array(np.array(128, np.uint8), "xz")]


@dataclass(frozen=True)
class MatMulSpec:
    """One dense layer as a transformer runs it: x [1, rows, cin] times a constant [cin, cout].

    The alignment probe times it for models whose pruned layers are all MatMul/Gemm (BERT-class
    encoders): ORT runs those on MLAS GEMM kernels, not on the NCHWc convolutions whose channel
    blocks the conv probe layers measure, so a conv's stair says nothing about them. precision
    "int8" is the static QDQ form (uint8 activations, int8 per-column weights)."""

    cin: int
    rows: int = 128
    precision: str = "fp32"

    @property
    def input_shape(self) -> list[int]:
        return [1, self.rows, self.cin]

    def key(self, cout: int) -> str:
        tail = "" if self.precision == "fp32" else f":p={self.precision}"
        return f"matmul:cin={self.cin}:rows={self.rows}:cout={cout}{tail}"

    def model(self, cout: int) -> onnx.ModelProto:
        rng = np.random.default_rng(0)
        w = (rng.standard_normal((self.cin, cout)) / math.sqrt(self.cin)).astype(np.float32)
        if self.precision == "int8":
            scale = (np.abs(w).max(0) / 127).astype(np.float32)
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            inits = _qdq_inits(q, scale)
            nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                     helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                     helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
                     helper.make_node("MatMul", ["xd", "w"], ["y"])]
        else:
            inits = [numpy_helper.from_array(w, "w")]
            nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        g = helper.make_graph(
            nodes, "layer",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.input_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            inits,
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


LayerSpec = ConvSpec | MatMulSpec


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
    """What pruning reads from a latency table (a fake one in tests, the measured one otherwise).

    A table may also offer `noise(spec, cout) -> ms` (the measured noise of an entry) and
    `repeats(spec, cout) -> [ms, ...]` (its independent repeat measurements); the decisions that
    read the table compare savings against that noise, and a table without them counts as exact."""

    def latency(self, spec: LayerSpec, cout: int) -> float: ...


#: a singly measured entry's runs are split into this many consecutive blocks; the blocks' minima are
#: its repeats (independent estimates of the same fastest time), the gap of the two fastest its noise
BLOCKS = 3


def entry_noise(table: object, spec: LayerSpec, cout: int) -> float:
    """The measured noise (ms) of one table entry; 0 for a table that records none (exact)."""
    fn = getattr(table, "noise", None)
    return float(fn(spec, cout)) if fn is not None else 0.0


def entry_repeats(table: object, spec: LayerSpec, cout: int) -> list[float]:
    """The independent repeat measurements (ms) of one entry; the entry alone for a table without them."""
    fn = getattr(table, "repeats", None)
    if fn is not None:
        rep = [float(v) for v in fn(spec, cout)]
        if rep:
            return rep
    return [float(table.latency(spec, cout))]


class LatencyTable:
    """Measured latency (ms, fastest of `runs`) per (layer spec, channel count) on one target, persisted.

    Every entry keeps its repeats (the minima of BLOCKS blocks of its runs, or of the probe's settle
    rounds) so that the decisions reading the table (the probed step, a group's saving) are taken
    against the spread measured on this machine rather than a fixed margin."""

    def __init__(self, target: Target, path: str | os.PathLike | None = None, runs: int = 30, warmup: int = 5):
        self.target = target
        self.path = Path(path) if path else cache_path(target)
        self.runs, self.warmup = runs, warmup
        self.entries: dict[str, float] = {}
        #: independent repeat measurements of each entry (ms): block minima, or one per settle round
        self.reps: dict[str, list[float]] = {}
        #: keys measured in several interleaved rounds (the probe's sweeps), kept at their fastest
        self.settled: set[str] = set()
        self.isa = cpu_isa()
        self.measured = 0
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text())
                self.entries = {k: float(v) for k, v in doc.get("entries", {}).items()}
                self.reps = {k: [float(x) for x in v] for k, v in doc.get("repeats", {}).items() if k in self.entries}
                # an entry of an older file without repeats has no measured noise: measured again
                self.entries = {k: v for k, v in self.entries.items() if k in self.reps}
                self.settled = set(doc.get("settled", [])) & set(self.entries)
            except (ValueError, OSError, AttributeError, TypeError):
                self.entries, self.reps, self.settled = {}, {}, set()

    def _time(self, spec: LayerSpec, cout: int) -> list[float]:
        """One measurement: the minima of BLOCKS blocks of `runs` timed runs (ms)."""
        sess = make_session(spec.model(cout), self.target)
        x = np.random.default_rng(1).standard_normal(spec.input_shape).astype(np.float32)
        # the fastest run, not the median: a layer of a millisecond on a shared machine is hit by
        # other jobs in many runs, and interference only ever adds time
        stats = measure(sess, {"x": x}, warmup=self.warmup, runs=max(self.runs, BLOCKS))
        self.measured += 1
        return [float(min(b)) for b in np.array_split(np.asarray(stats.runs), BLOCKS)]

    def latency(self, spec: LayerSpec, cout: int) -> float:
        key = spec.key(cout)
        if key not in self.entries:
            rep = self._time(spec, cout)
            self.entries[key], self.reps[key] = min(rep), rep
        return self.entries[key]

    def repeats(self, spec: LayerSpec, cout: int) -> list[float]:
        """The entry's repeat measurements (ms), measuring it first if needed."""
        self.latency(spec, cout)
        return self.reps.get(spec.key(cout)) or [self.entries[spec.key(cout)]]

    def noise(self, spec: LayerSpec, cout: int) -> float:
        """The entry's measured noise (ms): the gap between its two fastest repeats, i.e. how far the
        entry (their minimum) would move if its luckiest repeat were dropped. Not the full range: the
        slowest repeats carry other jobs' bursts, which the minimum already discards."""
        rep = sorted(self.repeats(spec, cout))
        return float(rep[1] - rep[0]) if len(rep) > 1 else 0.0

    def sweep(self, spec: LayerSpec, couts: list[int]) -> dict[int, float]:
        return {c: self.latency(spec, c) for c in couts}

    def settle(self, points: list[tuple[LayerSpec, int]], rounds: int = 5) -> None:
        """Measure the points again in `rounds` sweeps of alternating order; each round's fastest is
        one repeat of the entry, the entry is the fastest of them.

        A burst of load from another job inflates the counts timed during it; alternating sweeps
        spread it over different counts, and the minimum drops it. The probe reads step widths off
        neighbouring counts and its noise off the rounds, so it needs this; a settled point is not
        re-measured."""
        todo = [(s, c) for s, c in points if s.key(c) not in self.settled or len(self.reps.get(s.key(c), ())) < rounds]
        got: dict[str, list[float]] = {s.key(c): [] for s, c in todo}
        for r in range(rounds):
            for s, c in (todo if r % 2 == 0 else todo[::-1]):
                got[s.key(c)].append(min(self._time(s, c)))
        for key, rep in got.items():
            self.entries[key], self.reps[key] = min(rep), rep
        self.settled.update(got)

    def best_count(self, spec: LayerSpec, wanted: int, upper: int) -> int:
        """The channel count in [wanted, upper] with the lowest latency (ties: fewest channels).

        Pruning to `wanted` channels is pointless if `wanted + k` runs faster; this picks that count,
        but only when it is faster by more than the two entries' measured noise (so noise does not
        move the choice)."""
        best, best_ms = wanted, self.latency(spec, wanted)
        for c in range(wanted + 1, upper + 1):
            ms = self.latency(spec, c)
            if ms < best_ms - math.hypot(self.noise(spec, c), self.noise(spec, best)):
                best, best_ms = c, ms
        return best

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"target": asdict(self.target) | {"ep_options": {}}, "isa": list(self.isa),
                                   "entries": self.entries,
                                   "repeats": {k: [round(x, 6) for x in v] for k, v in self.reps.items()},
                                   "settled": sorted(self.settled)}, indent=0))
        os.replace(tmp, self.path)
        return self.path


@dataclass(frozen=True)
class ProbeLayer:
    """One layer the alignment probe sweeps: `spec` with its output channels (vary "cout") or its
    input channels (vary "cin", output fixed at `fixed`) set to each probed count.

    A pruned group's count is the output width of its producers AND the input width of its
    consumers; the two are different dimensions of the kernel's GEMM (int8 VNNI kernels pack the
    input dimension by 4 bytes per lane), so the probe times both."""

    spec: LayerSpec
    vary: str = "cout"
    fixed: int = 64

    def at(self, c: int, precision: str) -> tuple[LayerSpec, int]:
        s = self.spec
        if self.vary == "cin":
            if isinstance(s, MatMulSpec):
                return replace(s, cin=c, precision=precision), self.fixed
            return ConvSpec(c, s.hw, s.kernel, s.stride, 1, precision), self.fixed
        return replace(s, precision=precision), c

    def name(self) -> str:
        s = self.spec
        layer = f"MatMul ({s.rows} rows)" if isinstance(s, MatMulSpec) else f"{s.kernel}x{s.kernel} conv"
        return f"{layer}, {self.vary} swept" + (f" (cin {s.cin})" if self.vary == "cout" else f" (cout {self.fixed})")


#: layers the alignment probe sweeps at a mid-network size (batch 1): a 3x3 and a 1x1 conv over
#: output counts, and a 3x3 conv over input counts
PROBE_LAYERS = (ProbeLayer(ConvSpec(cin=96, hw=(28, 28), kernel=3)), ProbeLayer(ConvSpec(cin=256, hw=(28, 28), kernel=1)),
                ProbeLayer(ConvSpec(cin=96, hw=(28, 28), kernel=3), vary="cin", fixed=64))
#: the same sweeps on dense layers (a transformer's FFN and projections, 128 token rows), for models
#: whose prunable layers are all MatMul/Gemm: output counts into a 384-wide input, input counts
#: into 384 outputs
MATMUL_PROBE_LAYERS = (ProbeLayer(MatMulSpec(cin=384)), ProbeLayer(MatMulSpec(cin=384), vary="cin", fixed=384))
#: channel counts swept: 33..128, so every candidate step and the witness step above the largest
#: one (64) round every count up inside the range and all costs are averaged over the same counts
PROBE_COUNTS = range(33, 129)
#: alignment steps the probe can answer
STEPS = (1, 2, 4, 8, 16, 32)
#: the step above the largest answer: only read, to see whether rounding up to 32 is the stair's edge
WITNESS = 64
#: share of the relative costs dropped at each end before averaging (timing outliers)
TRIM = 0.1
#: rounds of the probe's sweeps (its repeats) and bootstrap resamples of them (fixed seed: the
#: decision on given measurements is deterministic)
ROUNDS = 5
BOOTSTRAP = 400
#: the answer when no stair stands out of the measured noise (a flat or too noisy curve): a multiple
#: of VNNI's 4 and of AVX2's NCHWc block of 8, the value pruning used before it probed; pruning then
#: still leaves whole the groups whose measured saving is inside the noise
SAFE_STEP = 8


@dataclass
class Alignment:
    """The probe's answer: the step, what rounding up to each step costs (mean rel., over the probed
    layers), where it came from ("stair" or "default") and why, and per layer the measured figures
    the decision read: each step's cost, its 95 % interval relative to the layer's best step, the
    layer's entry resolution, and the steps free there."""

    precision: str
    step: int
    cost: dict[int, float]
    source: str = "stair"
    reason: str = ""
    rounds: int = 1
    layers: list[dict] = field(default_factory=list)
    #: the measured figure that decided: the step above the answer (or WITNESS), on which layer, its
    #: cost over the best step with its 95 % interval, and that layer's entry resolution
    evidence: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"precision": self.precision, "step": self.step, "decision": self.source, "reason": self.reason,
                "rounds": self.rounds, "cost": {str(k): round(v, 4) for k, v in self.cost.items()},
                "evidence": self.evidence, "layers": self.layers}


def _step_costs(values: np.ndarray, counts: list[int], steps: tuple[int, ...], boot: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean relative cost of rounding every count up to each step (trimmed), on the fastest of the
    rounds (the point) and on `boot` resamples of the rounds (with replacement, one draw of round
    indices for every count, so a load burst that hit one round stays together)."""
    n, r = values.shape
    pos = {c: i for i, c in enumerate(counts)}
    hi = max(counts)
    rng = np.random.default_rng(0)
    idx = np.vstack([np.arange(r)[None, :], rng.integers(0, r, size=(boot, r))]) if r > 1 else np.zeros((1, 1), int)
    fastest = values[:, idx].min(axis=2)  # (counts, 1 + boot)
    out = []
    for s in steps:
        pairs = [(pos[c], pos[math.ceil(c / s) * s]) for c in counts if math.ceil(c / s) * s <= hi]
        src, dst = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
        rel = np.sort((fastest[dst] - fastest[src]) / np.maximum(fastest[src], 1e-12), axis=0)
        cut = int(TRIM * len(pairs))
        out.append(rel[cut: len(pairs) - cut].mean(axis=0) if len(pairs) > 2 * cut else np.zeros(fastest.shape[1]))
    c = np.asarray(out).T  # (1 + boot, steps)
    return c[0], c[1:] if len(c) > 1 else c


def _resolution(values: np.ndarray) -> float:
    """How finely one entry of this layer is known: the median over its counts of the gap between
    its two fastest repeats, relative (how far the entry moves when its best round is dropped).
    0 for an exact table (one repeat)."""
    if values.shape[1] < 2:
        return 0.0
    two = np.sort(values, axis=1)[:, :2]
    return float(np.median((two[:, 1] - two[:, 0]) / np.maximum(two[:, 0], 1e-12)))


def probe_alignment(table: LatencyLookup, precision: str = "fp32", layers: Iterable[ProbeLayer] = PROBE_LAYERS,
                    counts: Iterable[int] = PROBE_COUNTS, default: int = SAFE_STEP, rounds: int = ROUNDS,
                    boot: int = BOOTSTRAP) -> Alignment:
    """The channel multiple this target wants at `precision`, read off the table's stair-steps and
    decided against the probe's own measured repeat spread.

    On a stair-step latency curve of width s, rounding a count up to the next multiple of s costs
    nothing (the step is flat) and can even gain (unaligned counts take slower paths), while
    rounding to 2s costs a step. Per probed layer, every step's cost is the mean relative latency of
    rounding each swept count up to it (10 % trimmed), taken over the layer's cheapest step, with a
    95 % interval from a bootstrap over the probe's rounds. Two measured figures decide:

    - the layer's entry resolution r, the median gap between an entry's two fastest repeats: a step
      whose cost over the best is within r is *free* there (its cost is below what one entry's
      timing, and so every later decision on this table, resolves);
    - the interval: the step above the answer must cost more than r over the best on some layer
      with an interval that excludes 0 (the stair's edge is shown, not a noise draw).

    The answer is the largest step free on every probed layer whose next step is shown costlier.
    When rounding even to WITNESS (64) is free everywhere the curve is flat; when the next step is
    not shown costlier the noise hides the edge; both give `default`, saying why with the figures.
    A table without repeats counts as exact (one round, zero-width intervals, resolution 0).
    """
    counts = sorted(counts)
    if max(counts) % WITNESS:
        raise ValueError(f"probe counts must end at a multiple of {WITNESS}")
    layers = list(layers)
    points = {ly: [ly.at(c, precision) for c in counts] for ly in layers}
    settle = getattr(table, "settle", None)
    if settle is not None:
        settle([pt for pts in points.values() for pt in pts], rounds)
    steps = (*STEPS, WITNESS)
    rows: list[dict] = []
    point_costs: list[np.ndarray] = []
    over: list[np.ndarray] = []  # per layer: (cost over best, lower, upper) per step
    res: list[float] = []
    n_rounds = 1
    for ly in layers:
        reps = [entry_repeats(table, spec, cout) for spec, cout in points[ly]]
        r = min(len(x) for x in reps)
        n_rounds = max(n_rounds, r)
        values = np.asarray([x[:r] for x in reps], dtype=np.float64)
        point, samples = _step_costs(values, counts, steps, boot)
        best = int(np.argmin(point[: len(STEPS)]))
        d = samples - samples[:, [best]]
        dp = point - point[best]
        # the point beside the interval: with one round (an exact table) it is the interval
        lo = np.minimum(np.percentile(d, 2.5, axis=0), dp)
        hi = np.maximum(np.percentile(d, 97.5, axis=0), dp)
        delta = _resolution(values)
        point_costs.append(point)
        over.append(np.stack([dp, lo, hi]))
        res.append(delta)
        rows.append({"layer": ly.name(), "best": steps[best], "resolution": round(delta, 4),
                     "free": [s_ for s_, x in zip(steps, dp, strict=True) if x <= delta + 1e-12],
                     "cost": {str(s_): round(float(v), 4) for s_, v in zip(steps, point, strict=True)},
                     "over_best": {str(s_): [round(float(x), 4), round(float(y), 4), round(float(z), 4)]
                                   for s_, x, y, z in zip(steps, dp, lo, hi, strict=True)}})
    cost = {s_: float(np.mean([p[i] for p in point_costs])) for i, s_ in enumerate(STEPS)}
    n = len(layers)

    def evidence(i: int, s_: int) -> dict:
        dp, lo, hi = (float(v) for v in over[i][:, steps.index(s_)])
        return {"step": s_, "layer": rows[i]["layer"], "cost_over_best": round(dp, 4),
                "interval": [round(lo, 4), round(hi, 4)], "resolution": round(res[i], 4)}

    def said(ev: dict) -> str:
        return (f"rounding up to {ev['step']} costs {ev['cost_over_best']:+.1%} over the best step (95 % interval "
                f"{ev['interval'][0]:+.1%}..{ev['interval'][1]:+.1%} over {n_rounds} round(s), entry resolution "
                f"{ev['resolution']:.1%}) on the {ev['layer']}")

    free_all = set(steps).intersection(*(set(r_["free"]) for r_ in rows))
    if WITNESS in free_all:
        k = max(range(n), key=lambda i: over[i][0, -1] - res[i])
        ev = evidence(k, WITNESS)
        reason = (f"flat or too noisy to tell: rounding up to {WITNESS} is free on every probed layer (closest: "
                  f"{said(ev)}); safe default {default}")
        return Alignment(precision, default, cost, "default", reason, n_rounds, rows, ev)
    # the largest step free everywhere (smaller ones need not be: unaligned counts may be slow)
    step = max(free_all, default=None)
    if step is None:
        each = "; ".join(f"{row['layer']}: {row['free']}" for row in rows)
        reason = f"the probed layers disagree: no step is free on all of them ({each}); safe default {default}"
        return Alignment(precision, default, cost, "default", reason, n_rounds, rows, {})
    e = steps.index(step) + 1  # the edge: the step above the answer, costlier than the resolution somewhere
    shown = [i for i in range(n) if over[i][0, e] > res[i] + 1e-12 and over[i][1, e] > 0]
    if shown:
        ev = evidence(max(shown, key=lambda i: over[i][1, e]), steps[e])
        reason = f"{step} is free on every probed layer; {said(ev)}, above the resolution: the stair's edge"
        return Alignment(precision, step, cost, "stair", reason, n_rounds, rows, ev)
    ev = evidence(max(range(n), key=lambda i: over[i][0, e] - res[i]), steps[e])
    reason = (f"too noisy to tell: {step} is free on every probed layer, but {said(ev)}, an interval that does "
              f"not exclude 0; safe default {default}")
    return Alignment(precision, default, cost, "default", reason, n_rounds, rows, ev)
