"""Latency measurement on the target runtime: medians, percentiles and interleaved A/B ratios.

Why this shape: the machines this runs on are shared and noisy, so a single absolute time means
little. Every measurement warms up first (cuDNN algorithm search and TensorRT engine builds make the
first runs slow), reports the median and tail percentiles, and two models are compared as a ratio of
interleaved runs in one process, so drift (other jobs, clock changes) hits both equally.

On CUDA/TensorRT the inputs and outputs are bound on the device once (IO binding); without it every
run would time host<->device copies instead of the model. CUDA graphs are an opt-in provider option.
A requested GPU EP that did not load raises ProviderError (runtime.make_session) — never a silent CPU
measurement.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import helper

from onnxslim_compress import files
from onnxslim_compress.data import open_data
from onnxslim_compress.errors import BadInputError, ProviderError
from onnxslim_compress.runtime.session import Target, make_session

Feeds = dict[str, np.ndarray]

_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
#: provider option that turns on CUDA graph capture, per target kind
_CUDA_GRAPH_OPTION = {"cuda": "enable_cuda_graph", "tensorrt": "trt_cuda_graph_enable"}


# --------------------------------------------------------------------------------------- statistics


@dataclass
class LatencyStats:
    """Latencies of `n` timed runs in milliseconds, with the robust summaries a noisy machine needs."""

    runs: list[float]
    median: float
    p90: float
    p95: float
    mean: float
    min: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms: Iterable[float]) -> LatencyStats:
        runs = [float(x) for x in samples_ms]
        if not runs:
            raise ValueError("no latency samples")
        arr = np.asarray(runs, dtype=np.float64)
        return cls(
            runs=runs,
            median=float(np.median(arr)),
            p90=float(np.percentile(arr, 90)),
            p95=float(np.percentile(arr, 95)),
            mean=float(arr.mean()),
            min=float(arr.min()),
            n=len(runs),
        )

    def as_dict(self, with_runs: bool = False) -> dict:
        d = asdict(self)
        if not with_runs:
            d.pop("runs")
        return d

    def summary(self) -> str:
        return (
            f"median {_ms(self.median)} ms, p90 {_ms(self.p90)} ms, p95 {_ms(self.p95)} ms, "
            f"min {_ms(self.min)} ms, {self.n} runs"
        )


# --------------------------------------------------------------------------------------- feeds


def first_feed(data: Any) -> Feeds:
    """A feed dict from a feed dict or from a data source (an iterable of feed dicts: its first sample)."""
    if data is None:
        raise BadInputError("no input data given")
    if isinstance(data, Mapping):
        return {str(k): np.asarray(v) for k, v in data.items()}
    try:
        it = iter(data)
    except TypeError:
        raise BadInputError(f"input data must be a feed dict or an iterable of feed dicts, got {type(data).__name__}") from None
    for sample in it:
        if not isinstance(sample, Mapping):
            raise BadInputError(f"data source yielded {type(sample).__name__}, expected a dict of input arrays")
        return {str(k): np.asarray(v) for k, v in sample.items()}
    raise BadInputError("data source is empty")


def _feeds_for(session, feeds: Mapping[str, np.ndarray]) -> Feeds:
    """The session's inputs taken from `feeds` (extra names are ignored; a missing one is an error)."""
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise BadInputError(f"input data lacks model input {missing[0]!r} (data has {sorted(feeds)})")
    return {n: np.asarray(feeds[n]) for n in names}


# --------------------------------------------------------------------------------------- runners


def session_provider(session) -> str:
    providers = session.get_providers()
    return providers[0] if providers else "CPUExecutionProvider"


def _session_device_id(session) -> int:
    opts = session.get_provider_options().get(session_provider(session), {})
    try:
        return int(opts.get("device_id", 0))
    except (TypeError, ValueError):
        return 0


def with_cuda_graph(target: Target) -> Target:
    """`target` with CUDA graph capture on (needs static shapes and every node on the CUDA EP).

    Capture replays the whole run as one graph launch, removing per-kernel launch overhead that
    dominates small models at batch 1. Only meaningful with IO binding (fixed device addresses),
    which measure() uses on GPU targets.
    """
    option = _CUDA_GRAPH_OPTION.get(target.kind)
    if option is None:
        raise BadInputError(f"CUDA graphs need a cuda or tensorrt target, not {target.kind}")
    return replace(target, ep_options={**target.ep_options, option: "1"})


@dataclass
class IOBindingPlan:
    """Where inputs and outputs are bound for a timed run: built before the loop, reused every run."""

    device: str
    device_id: int
    inputs: list[str]
    outputs: list[str]


def io_binding_plan(session, feeds: Mapping[str, np.ndarray], device: str | None = None) -> IOBindingPlan:
    """Check that binding on `device` makes sense for this session; ProviderError otherwise."""
    provider = session_provider(session)
    if device is None:
        device = "cuda" if provider in _GPU_PROVIDERS else "cpu"
    if device not in ("cuda", "cpu"):
        raise BadInputError(f"IO binding device must be cuda or cpu, not {device!r}")
    if device == "cuda" and provider not in _GPU_PROVIDERS:
        raise ProviderError(
            f"IO binding on cuda needs a CUDA or TensorRT session, but this one runs on {provider}"
        )
    return IOBindingPlan(
        device=device,
        device_id=_session_device_id(session) if device == "cuda" else 0,
        inputs=list(_feeds_for(session, feeds)),
        outputs=[o.name for o in session.get_outputs()],
    )


def _static_output(node_arg) -> tuple[list[int], type] | None:
    """(shape, numpy dtype) of an output whose declared shape is fully static, else None."""
    shape, typ = node_arg.shape, str(node_arg.type)
    if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    if not (typ.startswith("tensor(") and typ.endswith(")")):
        return None
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(onnx.TensorProto.DataType.Value(typ[7:-1].upper())))
    except (ValueError, KeyError, TypeError):
        return None
    # bfloat16/float8 (numpy kind 'V') and strings: let ORT allocate them
    return (list(shape), dtype.type) if dtype.kind in "biuf" else None


def _binding_runner(session, feeds: Mapping[str, np.ndarray], plan: IOBindingPlan) -> Callable[[], Any]:
    """Inputs copied to the device once; outputs left on the device; each call is one run."""
    import onnxruntime as ort  # lazy: importing the runtime is slow (runtime.session.session_options)

    feeds = _feeds_for(session, feeds)
    try:
        binding = session.io_binding()
        values = {}
        for name in plan.inputs:
            values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feeds[name]), plan.device, plan.device_id)
            binding.bind_ortvalue_input(name, values[name])
        out_types = {o.name: o for o in session.get_outputs()}
        for name in plan.outputs:
            fixed = _static_output(out_types[name])
            if fixed is None:
                binding.bind_output(name, plan.device, plan.device_id)
            else:
                # preallocated once: fixed addresses, which CUDA graph replay requires
                values[name] = ort.OrtValue.ortvalue_from_shape_and_type(fixed[0], fixed[1], plan.device, plan.device_id)
                binding.bind_ortvalue_output(name, values[name])
    except Exception as e:  # onnxruntime raises RuntimeError / Fail for a missing CUDA provider
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ProviderError(f"IO binding on {plan.device}:{plan.device_id} failed: {msg}") from e

    def run() -> Any:
        session.run_with_iobinding(binding)
        return binding

    # the bound OrtValues must live as long as the binding that points at their device buffers
    run.bound_values = values  # type: ignore[attr-defined]
    return run


def make_runner(session, feeds: Mapping[str, np.ndarray], io_binding: bool | None = None) -> Callable[[], Any]:
    """A zero-argument callable doing one inference. IO binding by default on GPU sessions."""
    if io_binding is None:
        io_binding = session_provider(session) in _GPU_PROVIDERS
    if io_binding:
        return _binding_runner(session, feeds, io_binding_plan(session, feeds))
    f = _feeds_for(session, feeds)
    return lambda: session.run(None, f)


def _time_once(run: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) * 1000.0


def measure(
    session, feeds: Mapping[str, np.ndarray], warmup: int = 10, runs: int = 50, *, io_binding: bool | None = None
) -> LatencyStats:
    """Median and percentiles of `runs` timed inferences after `warmup` untimed ones."""
    if runs < 1:
        raise BadInputError("runs must be >= 1")
    run = make_runner(session, feeds, io_binding)
    for _ in range(max(warmup, 0)):
        run()
    return LatencyStats.from_samples(_time_once(run) for _ in range(runs))


# --------------------------------------------------------------------------------------- A/B


@dataclass
class ABResult:
    """Latency of B relative to A from interleaved runs in one process."""

    a: LatencyStats
    b: LatencyStats
    #: median(B) / median(A); below 1 means B is faster
    ratio: float
    #: p10 and p90 of the per-round B/A ratios: the spread a reader should trust
    ratio_p10: float
    ratio_p90: float
    #: 95% bootstrap interval of median(B)/median(A) (fixed seed, deterministic)
    ratio_ci95: tuple[float, float]
    target: str
    threads: int
    providers: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "ratio": self.ratio,
            "ratio_p10": self.ratio_p10,
            "ratio_p90": self.ratio_p90,
            "ratio_ci95": list(self.ratio_ci95),
            "a": self.a.as_dict(),
            "b": self.b.as_dict(),
            "runs": self.a.n,
            "target": self.target,
            "threads": self.threads,
            "providers": self.providers,
        }

    def summary(self) -> str:
        threads = f"{self.threads} threads" if self.threads else "default threads"
        return (
            f"B/A latency ratio {self.ratio:.2f} (p10-p90 {self.ratio_p10:.2f}-{self.ratio_p90:.2f}), "
            f"A median {_ms(self.a.median)} ms, B median {_ms(self.b.median)} ms, {self.a.n} runs, "
            f"{self.target}, {threads}"
        )


def _ms(v: float) -> str:
    """Two decimals for ordinary latencies, three significant digits for sub-millisecond ones."""
    return f"{v:.2f}" if v >= 1.0 else f"{v:.3g}"


def _bootstrap_ratio_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    ratios = np.median(b[idx], axis=1) / np.median(a[idx], axis=1)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def interleaved(run_a: Callable[[], Any], run_b: Callable[[], Any], warmup: int, runs: int) -> tuple[list[float], list[float]]:
    """Time A and B alternately; the order flips every round so neither always runs second."""
    for _ in range(max(warmup, 0)):
        run_a()
        run_b()
    ta: list[float] = []
    tb: list[float] = []
    for r in range(runs):
        if r % 2 == 0:
            ta.append(_time_once(run_a))
            tb.append(_time_once(run_b))
        else:
            tb.append(_time_once(run_b))
            ta.append(_time_once(run_a))
    return ta, tb


def ab_from_samples(ta: list[float], tb: list[float], target: Target, providers: dict | None = None) -> ABResult:
    a = LatencyStats.from_samples(ta)
    b = LatencyStats.from_samples(tb)
    aa = np.asarray(ta, dtype=np.float64)
    bb = np.asarray(tb, dtype=np.float64)
    pair = bb / np.maximum(aa, 1e-9)
    return ABResult(
        a=a,
        b=b,
        ratio=b.median / a.median if a.median > 0 else float("inf"),
        ratio_p10=float(np.percentile(pair, 10)),
        ratio_p90=float(np.percentile(pair, 90)),
        ratio_ci95=_bootstrap_ratio_ci(aa, bb),
        target=target.kind,
        threads=target.threads,
        providers=dict(providers or {}),
    )


def compare(
    model_a: onnx.ModelProto | str | os.PathLike,
    model_b: onnx.ModelProto | str | os.PathLike,
    feeds: Any,
    target: Target | None = None,
    warmup: int = 10,
    runs: int = 50,
    *,
    io_binding: bool | None = None,
) -> ABResult:
    """Latency of B relative to A on `target`, both sessions alive in one process, runs interleaved."""
    if runs < 1:
        raise BadInputError("runs must be >= 1")
    target = target or Target()
    feed = first_feed(feeds)
    sa = make_session(model_a, target, timing=True)
    sb = make_session(model_b, target, timing=True)
    ta, tb = interleaved(make_runner(sa, feed, io_binding), make_runner(sb, feed, io_binding), warmup, runs)
    return ab_from_samples(ta, tb, target, {"a": sa.get_providers(), "b": sb.get_providers()})


# --------------------------------------------------------------------------------------- per op type


class OpTypeTime(NamedTuple):
    op_type: str
    #: kernel time of one run in ms, summed over the nodes of this op type (the median over runs,
    #: so a few runs stalled by the machine do not inflate it past the model's median latency)
    total_ms: float
    #: fraction of all kernel time
    share: float
    #: nodes of this type in the optimized graph ORT ran
    count: int


def parse_profile(events: list[dict], skip_runs: int = 0) -> list[OpTypeTime]:
    """Per-op-type kernel time from ORT profiler events, excluding the first `skip_runs` runs.

    Node events are matched to runs by timestamp (a node event falls inside its model_run span),
    which also holds when the parallel executor logs nodes from several threads. op_name is the op
    ORT ran after its own fusions (e.g. FusedConv, QLinearConv), which is what the latency is.
    """
    spans = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if not spans:
        return []
    starts = [s for s, _ in spans]
    measured = spans[skip_runs:]
    n_runs = len(measured)
    if n_runs == 0:
        return []
    time_us: dict[str, float] = {}
    per_run: dict[str, list[float]] = {}
    nodes: dict[str, set[str]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        op = (e.get("args") or {}).get("op_name")
        if not op:
            continue
        k = bisect.bisect_right(starts, e["ts"]) - 1
        if k < skip_runs or k >= len(spans) or e["ts"] > spans[k][1]:
            continue
        time_us[op] = time_us.get(op, 0.0) + float(e.get("dur", 0))
        per_run.setdefault(op, [0.0] * n_runs)[k - skip_runs] += float(e.get("dur", 0))
        nodes.setdefault(op, set()).add(e["name"])
    total = sum(time_us.values())
    out = [
        OpTypeTime(op, float(np.median(per_run[op])) / 1000.0, (t / total) if total > 0 else 0.0, len(nodes[op]))
        for op, t in time_us.items()
    ]
    return sorted(out, key=lambda r: (-r.total_ms, r.op_type))


def op_type_profile(
    model: onnx.ModelProto | str | os.PathLike,
    feeds: Any,
    target: Target | None = None,
    runs: int = 20,
    warmup: int = 5,
) -> list[OpTypeTime]:
    """Where the time goes, per op type, from ORT's built-in profiler (the JSON file is deleted).

    On CUDA the profiler's kernel times are host-side unless ORT was built with CUPTI; treat the
    shares as indicative there and use measure()/compare() for decisions.
    """
    target = target or Target()
    feed = first_feed(feeds)
    tmp = tempfile.mkdtemp(prefix=f"osc-{files.owner_tag()}-prof-")
    try:
        sess = make_session(model, target, profile_prefix=str(Path(tmp) / "ort"), timing=True)
        f = _feeds_for(sess, feed)
        for _ in range(max(warmup, 0) + max(runs, 1)):
            sess.run(None, f)
        path = sess.end_profiling()
        try:
            with open(path, encoding="utf-8") as fh:
                events = json.load(fh)
        except (OSError, ValueError) as e:  # a truncated profile: TMPDIR is full
            files.raise_if_full(tmp, 16 << 20, e)
            raise
        os.remove(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return parse_profile(events, skip_runs=max(warmup, 0))


# --------------------------------------------------------------------------------------- CLI helper


@dataclass
class ProfileReport:
    """What `onnxslim-compress profile` prints: latency of one model, or of two as an A/B ratio."""

    target: str
    threads: int
    providers: list[str]
    latency: LatencyStats
    op_types: list[OpTypeTime] = field(default_factory=list)
    ab: ABResult | None = None
    feeds_from: str = "data"

    def as_dict(self) -> dict:
        d = {
            "target": self.target,
            "threads": self.threads,
            "providers": self.providers,
            "feeds_from": self.feeds_from,
            "latency_ms": self.latency.as_dict(),
            "op_types": [r._asdict() for r in self.op_types],
        }
        if self.ab is not None:
            d["compare"] = self.ab.as_dict()
        return d

    def format(self, top: int = 15) -> str:
        threads = f"{self.threads} threads" if self.threads else "default threads"
        lines = [f"{self.target} ({', '.join(self.providers)}), {threads}: {self.latency.summary()}"]
        if self.feeds_from != "data":
            lines.append("inputs generated from the model signature (pass --data for real inputs)")
        if self.ab is not None:
            lines.append(self.ab.summary())
        if self.op_types:
            lines.append("")
            lines.append(f"{'op type':<28} {'ms/run':>9} {'share':>7} {'nodes':>6}")
            for r in self.op_types[:top]:
                lines.append(f"{r.op_type:<28} {r.total_ms:>9.3f} {r.share:>7.1%} {r.count:>6}")
        return "\n".join(lines)


def profile_model(
    model_or_path: onnx.ModelProto | str | os.PathLike,
    target: Target | None = None,
    data_or_feeds: Any = None,
    *,
    model_b: onnx.ModelProto | str | os.PathLike | None = None,
    warmup: int = 10,
    runs: int = 50,
    by_op_type: bool = True,
    profile_runs: int = 20,
    input_shapes: dict[str, list[int]] | None = None,
) -> ProfileReport:
    """Latency (and per-op-type breakdown) of a model; with model_b, also the interleaved B/A ratio.

    Without data, inputs come from the model signature (data.open_data's generated fallback).
    """
    target = target or Target()
    feeds_from = "data"
    if data_or_feeds is None:
        feed = first_feed(open_data(None, model_or_path, input_shapes=input_shapes, limit=1))
        feeds_from = "signature"
    else:
        feed = first_feed(data_or_feeds)
    sess = make_session(model_or_path, target, timing=True)
    latency = measure(sess, feed, warmup=warmup, runs=runs)
    providers = sess.get_providers()
    del sess
    ops = op_type_profile(model_or_path, feed, target, runs=profile_runs) if by_op_type else []
    ab = compare(model_or_path, model_b, feed, target, warmup=warmup, runs=runs) if model_b is not None else None
    return ProfileReport(
        target=target.kind,
        threads=target.threads,
        providers=providers,
        latency=latency,
        op_types=ops,
        ab=ab,
        feeds_from=feeds_from,
    )
