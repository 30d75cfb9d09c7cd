"""Targets and ONNX Runtime sessions that fail loudly.

onnxruntime-gpu silently falls back to the CPU EP when CUDA or TensorRT cannot load; a benchmark or a
search measured that way would optimize for the wrong hardware. make_session checks what the session
really got and raises ProviderError otherwise.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import helper

from onnxslim_compress.errors import BadInputError, InvalidModelError, ProviderError
from onnxslim_compress.graph import io as model_io
from onnxslim_compress.graph import weights
from onnxslim_compress.graph.shapes import ShapeMap

TargetKind = Literal["cpu", "cuda", "tensorrt"]

_EP = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


@dataclass(frozen=True)
class Target:
    """Where a model will run. threads=0 lets ORT choose; benchmarks should pin it."""

    kind: TargetKind = "cpu"
    threads: int = 0
    device_id: int = 0
    #: extra provider options for the main EP (e.g. trt_fp16_enable)
    ep_options: dict[str, Any] = field(default_factory=dict, hash=False)
    #: ORT graph optimization level: QDQ -> integer kernel fusion needs "extended" or "all"
    opt_level: Literal["disable", "basic", "extended", "all"] = "all"

    def __post_init__(self):
        if self.kind not in _EP:
            raise BadInputError(f"unknown target {self.kind!r} (choose cpu, cuda or tensorrt)")
        if self.threads < 0:
            raise BadInputError("threads must be >= 0")

    @property
    def provider(self) -> str:
        return _EP[self.kind]

    def providers(self) -> list[tuple[str, dict[str, Any]]]:
        """Provider list in priority order; TensorRT falls back to CUDA for unsupported nodes."""
        if self.kind == "cpu":
            return [("CPUExecutionProvider", {})]
        dev = {"device_id": self.device_id}
        if self.kind == "cuda":
            return [("CUDAExecutionProvider", {**dev, **self.ep_options}), ("CPUExecutionProvider", {})]
        return [
            ("TensorrtExecutionProvider", {**dev, **self.ep_options}),
            ("CUDAExecutionProvider", dev),
            ("CPUExecutionProvider", {}),
        ]


_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def session_options(target: Target, *, optimized_model_path: str | None = None, profile_prefix: str | None = None):
    import onnxruntime as ort  # lazy: importing the runtime takes a while, and `--help` or recipe checks need none

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[target.opt_level])
    if target.threads:
        so.intra_op_num_threads = target.threads
        so.inter_op_num_threads = 1
    # fatal only: a failing run raises, and the CLI reports it in one line (ARCHITECTURE.md,
    # "Contracts"); ORT's own error log would print the same failure again, several lines long
    so.log_severity_level = 4
    if optimized_model_path:
        so.optimized_model_filepath = optimized_model_path
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def make_session(
    model: onnx.ModelProto | str | os.PathLike,
    target: Target | None = None,
    *,
    optimized_model_path: str | None = None,
    profile_prefix: str | None = None,
    timing: bool = False,
    config: dict[str, str] | None = None,
):
    """An InferenceSession on `target`; raises ProviderError if its EP did not load.

    A session over offloaded weights (weights.py) that is not used for `timing` skips weight
    prepacking: ORT would otherwise hold a packed copy of every MatMul/Gemm weight beside the
    memory-mapped one. Timed sessions keep ORT's defaults so latency figures stay real."""
    import onnxruntime as ort  # lazy: see session_options

    target = target or Target()
    so = session_options(target, optimized_model_path=optimized_model_path, profile_prefix=profile_prefix)
    offloaded = isinstance(model, onnx.ModelProto) and weights.has_offloaded(model)
    if not timing and offloaded:
        so.add_session_config_entry("session.disable_prepacking", "1")
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    providers = target.providers()
    available = ort.get_available_providers()
    if target.provider not in available:
        raise ProviderError(
            f"target {target.kind}: {target.provider} is not in this onnxruntime build (available: {', '.join(available)})"
        )
    try:
        if not isinstance(model, onnx.ModelProto):
            sess = ort.InferenceSession(str(Path(model)), so, providers=providers)
        else:
            m = model_io.for_runtime(model)  # the caller's model is never changed
            if offloaded:  # through a file in the workspace, so ORT memory-maps the offloaded tensors
                with weights.session_file(m) as p:
                    sess = ort.InferenceSession(str(p), so, providers=providers)
            elif model_io.model_bytes(m) > model_io.EXTERNAL_DATA_THRESHOLD:  # protobuf cannot hold it
                with model_io.temp_model_file(m) as p:
                    sess = ort.InferenceSession(str(p), so, providers=providers)
            else:
                sess = ort.InferenceSession(m.SerializeToString(), so, providers=providers)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if target.kind != "cpu" and any(s in msg for s in ("CUDA", "cuda", "TensorRT", "libcu", "libnv")):
            raise ProviderError(f"target {target.kind}: {target.provider} failed to load: {msg}") from e
        problem = model_io.graph_problem(model) if isinstance(model, onnx.ModelProto) else None
        if problem is not None:
            raise InvalidModelError(f"invalid model ({problem})") from e
        raise
    got = sess.get_providers()
    if target.provider not in got:
        raise ProviderError(
            f"target {target.kind}: onnxruntime fell back to {', '.join(got)}; {target.provider} did not load "
            "(check the CUDA/cuDNN/TensorRT libraries)"
        )
    return sess


def shapes_from_run(model: onnx.ModelProto, inputs: ShapeMap, names: list[str]) -> ShapeMap:
    """Expose `names` as outputs, run once on zeros on the CPU, and read their shapes.

    The ShapeRunner of graph.shapes.infer_shapes, for models onnx's shape inference cannot finish.
    """
    m = copy.deepcopy(model)
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(helper.make_empty_tensor_value_info(n))
    # make_session: offloaded weights are memory-mapped, >2 GB models go through a file
    sess = make_session(m, Target(kind="cpu", opt_level="disable"))
    feeds = {}
    for i in sess.get_inputs():
        dt = _ort_np_dtype(i.type)
        feeds[i.name] = np.zeros(inputs.get(i.name, [1]), dtype=dt)
    outs = sess.run(names, feeds)
    return {n: list(np.asarray(o).shape) for n, o in zip(names, outs, strict=True)}


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _ort_np_dtype(ort_type: str):
    return _ORT_TYPES.get(ort_type, np.float32)


#: run by load_in_child: build a session the way the caller will, then run one sample if given
CHILD_CODE = """
import sys
import numpy as np
import onnxruntime as ort
path, level, threads, feed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
so = ort.SessionOptions()
so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
so.log_severity_level = 3
if threads:
    so.intra_op_num_threads = threads
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
if feed:
    with np.load(feed) as f:
        data = {k: f[k] for k in f.files}
    sess.run(None, {i.name: data[i.name] for i in sess.get_inputs() if i.name in data})
"""


def load_in_child(
    model: onnx.ModelProto, target: Target | None = None, feed: dict[str, Any] | None = None, timeout: float = 300.0,
) -> str | None:
    """Why `model` cannot be used, or None: a session is built (and `feed` run) in a child process.

    ORT segfaults on some graphs it accepts (an LSTM in fp16 at ORT_ENABLE_ALL was seen), which in
    this process would kill the run without a word and, worse, after a model was written. In a child
    a crash is a return code. The child uses the CPU EP at the target's optimization level: the
    graph optimizers are where the crashes were."""
    target = target or Target()
    with model_io.temp_model_file(model) as path, tempfile.TemporaryDirectory(prefix="osc-child-") as d:
        feed_path = ""
        if feed:
            feed_path = str(Path(d) / "feed.npz")
            np.savez(feed_path, **{k: np.asarray(v) for k, v in feed.items()})
        cmd = [sys.executable, "-c", CHILD_CODE, str(path), _LEVELS[target.opt_level], str(target.threads), feed_path]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"onnxruntime did not build a session within {timeout:.0f} s"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = str(-proc.returncode)
        return f"onnxruntime crashed ({sig}) building a session or running it"
    lines = [ln.strip() for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return f"onnxruntime refused it: {lines[-1][:300] if lines else f'exit {proc.returncode}'}"


def cpu_runtime_conflict() -> str | None:
    """A warning when both onnxruntime and onnxruntime-gpu are installed (they share one module)."""
    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{dist} {importlib.metadata.version(dist)}")
    if len(found) == 2:
        return (
            f"both {found[0]} and {found[1]} are installed; they overwrite one module. "
            "Uninstall both and reinstall only onnxruntime-gpu."
        )
    return None
