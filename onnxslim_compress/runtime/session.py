"""Targets and ONNX Runtime sessions that fail loudly.

onnxruntime-gpu silently falls back to the CPU EP when CUDA or TensorRT cannot load; a benchmark or a
search measured that way would optimize for the wrong hardware. make_session checks what the session
really got and raises ProviderError otherwise.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

from onnxslim_compress.errors import BadInputError, ProviderError

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
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[target.opt_level])
    if target.threads:
        so.intra_op_num_threads = target.threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
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
    import onnxruntime as ort

    from onnxslim_compress.graph.io import clamp_ir_version, serialize_for_session, temp_model_file
    from onnxslim_compress.graph.weights import has_offloaded

    target = target or Target()
    so = session_options(target, optimized_model_path=optimized_model_path, profile_prefix=profile_prefix)
    if not timing and isinstance(model, onnx.ModelProto) and has_offloaded(model):
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
        if isinstance(model, onnx.ModelProto):
            clamp_ir_version(model)
            data = serialize_for_session(model)
            if data is None:
                with temp_model_file(model) as p:
                    sess = ort.InferenceSession(str(p), so, providers=providers)
            else:
                sess = ort.InferenceSession(data, so, providers=providers)
        else:
            sess = ort.InferenceSession(str(Path(model)), so, providers=providers)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if target.kind != "cpu" and any(s in msg for s in ("CUDA", "cuda", "TensorRT", "libcu", "libnv")):
            raise ProviderError(f"target {target.kind}: {target.provider} failed to load: {msg}") from e
        raise
    got = sess.get_providers()
    if target.provider not in got:
        raise ProviderError(
            f"target {target.kind}: onnxruntime fell back to {', '.join(got)}; {target.provider} did not load "
            "(check the CUDA/cuDNN/TensorRT libraries)"
        )
    return sess


def cpu_runtime_conflict() -> str | None:
    """A warning when both onnxruntime and onnxruntime-gpu are installed (they share one module)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{dist} {version(dist)}")
    if len(found) == 2:
        return (
            f"both {found[0]} and {found[1]} are installed; they overwrite one module. "
            "Uninstall both and reinstall only onnxruntime-gpu."
        )
    return None
