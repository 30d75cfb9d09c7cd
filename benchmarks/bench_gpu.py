"""GPU figures in one device call: candidates on the CUDA EP (IO binding), fidelity, search cuda vs cpu.

    python benchmarks/bench_gpu.py --out "$OUT"                      # on a machine with one NVIDIA GPU
    python benchmarks/bench_gpu.py --models-dir /tmp/gpukit/cache    # models + data staged by benchmarks/gpu/stage.sh
    python benchmarks/bench_gpu.py --dry-run --out /tmp/dry          # the same code path on the CPU EP, digits CNN

What one run does, in this order, under one global deadline (--deadline, default 450 s = 7.5 min):
1. records the machine: GPU name, driver and CUDA versions (nvidia-smi), onnxruntime's package and the
   CUDA it was built for, torch's CUDA/cuDNN (its wheels supply the CUDA libraries), CPU model;
2. checks that the CUDA EP really loaded: a small Conv/Relu/Add/Cast model through
   runtime.session.make_session (ProviderError when ORT fell back to the CPU) and one IO-bound run
   whose output must match the CPU EP's; without it nothing else is measured (exit 2);
3. probes TensorRT: is the EP in the build, do libnvinfer/libnvonnxparser load, does a session start;
4. per model (each with its share of the time left; the JSON is rewritten after every model, so a
   run stopped at its limit still returns figures): fp32, then the candidates of CANDIDATES, each
   built by the same pipeline as `compress` (flags_pipeline, Context target = the GPU target), timed
   against fp32 in interleaved runs with inputs and outputs bound on the device (profiler), and its
   fidelity against fp32 on held-out samples computed on the GPU (runtime.metrics); TensorRT fp16 and
   int8 too when step 3 found it working;
5. `onnxslim-compress search --target cuda` and `--target cpu` (the CLI, in subprocesses with hard
   timeouts) with a small budget on one model, then both picks timed on both targets in one sitting;
6. writes OUT/gpu.json and OUT/gpu.md (the BENCHMARKS.md section, rendered by benchmarks/render.py).

Why the budgets are enforced inside: device time is about 15 minutes a session and one call may run
10; a candidate that overruns its share is stopped by an interval timer (BudgetExceeded) and recorded
as such, the next one starts. --dry-run replaces the GPU target by the CPU EP, the real models by the
bundled digits CNN and every budget by a tiny one; tests/bench/test_bench_gpu.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import functools
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import render  # noqa: E402

from models import datasets  # noqa: E402
from models.fetch import ENV_CACHE, MODELS, cache_dir, sha256_file  # noqa: E402
from onnxslim_compress.data import open_data  # noqa: E402
from onnxslim_compress.errors import BadInputError, ProviderError  # noqa: E402
from onnxslim_compress.graph.io import EXTERNAL_DATA_THRESHOLD, for_runtime, load_model, model_bytes  # noqa: E402
from onnxslim_compress.graph.weights import has_offloaded  # noqa: E402
from onnxslim_compress.jobs.compress import compress, flags_pipeline  # noqa: E402
from onnxslim_compress.runtime.metrics import FidelityReport, compare_models, load_labels_any  # noqa: E402
from onnxslim_compress.runtime.profiler import (  # noqa: E402
    ab_from_samples,
    first_feed,
    interleaved,
    make_runner,
    measure,
)
from onnxslim_compress.runtime.session import Target, make_session, session_options  # noqa: E402

#: GPU tensor cores want channel counts divisible by 8 (fp16/TF32); the search's cuda recipe offers 8 and 16
ROUND_TO_CUDA = 8
#: the candidates, in the order they are measured (the most telling first: a short budget keeps them)
CANDIDATES: dict[str, dict[str, dict]] = {
    "fp16": {"quantize": {"mode": "fp16"}},
    # the quantize pass turns int8 into fp16 for target cuda (the CUDA EP has no int8 QDQ kernels);
    # the TensorRT placement gives the QDQ model a GPU would get, which the CUDA EP then runs as is
    "int8 QDQ": {"quantize": {"mode": "int8", "target": "tensorrt"}},
    "pruned 0.3": {"prune": {"ratio": 0.3, "round_to": ROUND_TO_CUDA}},
    "low rank 0.9": {"lowrank": {"mode": "energy", "value": 0.9}},
    # built from the "pruned 0.3" model (the lossless passes again, then fp16): the same pipeline
    # result, without pruning a second time
    "pruned 0.3 + fp16": {"base": "pruned 0.3", "quantize": {"mode": "fp16"}},
}
#: the CLI flags each candidate stands for (BENCHMARKS.md shows them)
CANDIDATE_FLAGS = {
    "fp16": "--quantize fp16",
    "int8 QDQ": "--quantize int8 (TensorRT placement)",
    "pruned 0.3": f"--prune 0.3 --round-to {ROUND_TO_CUDA} --calib",
    "low rank 0.9": "--lowrank energy=0.9 --calib",
    "pruned 0.3 + fp16": f"--prune 0.3 --round-to {ROUND_TO_CUDA} --quantize fp16 --calib",
}
#: real models, cheap and telling first; a model whose files were not staged is recorded and skipped
REAL_MODELS = ["yolov8n", "ppocr_det", "ppocr_rec", "ppocr_cls", "minilm"]
SEARCH_MODEL = "yolov8n"
#: share of the time each model gets, relative to the others (bigger inputs take longer to build and time)
MODEL_WEIGHT = {"ppocr_det": 1.3, "ppocr_cls": 0.6, "digits": 0.3}
#: cosine drop allowed in the search for the unlabelled models (the labelled digits CNN: 1 % accuracy)
SEARCH_MAX_DROP = 0.01


class BudgetExceeded(Exception):
    """A step ran past its share of the deadline (raised by the interval timer of time_limit)."""


@dataclass
class Budget:
    """Every limit of one run; --dry-run swaps in tiny ones."""

    deadline_s: float = 450.0
    #: kept for the search (both targets) and the cross timing at the end
    search_s: float = 150.0
    #: the search gets at least this long even when the models overran (device.sh's hard timeout
    #: leaves 50 s past the deadline)
    search_min_s: float = 30.0
    #: one candidate (build + timing + fidelity) never takes more than this
    candidate_s: float = 60.0
    #: a candidate is not started with less than this left in its model's share
    min_candidate_s: float = 4.0
    warmup: int = 20
    min_runs: int = 30
    max_runs: int = 300
    #: interleaved timing of one candidate aims at this many seconds
    timing_s: float = 3.0
    calib_n: int = 8
    eval_n: int = 8
    search_trials: int = 8
    search_runs: int = 30
    search_warmup: int = 5
    cpu_threads: int = 4

    @classmethod
    def dry(cls) -> Budget:
        return cls(deadline_s=45.0, search_s=25.0, search_min_s=25.0, candidate_s=12.0, min_candidate_s=1.0, warmup=2,
                   min_runs=10, max_runs=10, timing_s=0.2, calib_n=8, eval_n=16, search_trials=1, search_runs=5,
                   search_warmup=1, cpu_threads=2)


@dataclass
class ModelData:
    """One model's files: the .onnx, calibration and evaluation .npz, labels when it has them."""

    name: str
    path: Path
    calib: Path
    eval: Path
    labels: Path | None = None
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ helpers


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _err(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg[:300]}"


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise BudgetExceeded in the main thread after `seconds` (checked between Python bytecodes).

    A call into onnxruntime finishes before the exception lands, which is what we want: a run is
    never cut in half, yet a slow build or a long timing loop stops within one inference. Limits
    nest: an inner one never outlives the outer one, and the outer timer is re-armed with what is
    left of it when the inner one ends."""
    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    started = time.monotonic()
    mine = max(seconds, 0.01) if not outer_left else min(max(seconds, 0.01), outer_left)

    def on_alarm(signum, frame):  # noqa: ARG001
        raise BudgetExceeded(f"over its {mine:.0f} s share")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, mine)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - started), 0.001))


def json_safe(o: Any) -> Any:
    """Non-finite floats as strings and numpy scalars as Python ones, so gpu.json is strict JSON."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else str(f)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    return o


def write_outputs(result: dict, out: Path) -> Path:
    """gpu.json (atomically: a kill mid-write keeps the previous version) and the rendered gpu.md."""
    out.mkdir(parents=True, exist_ok=True)
    p = out / "gpu.json"
    tmp = out / ".gpu.json.tmp"
    tmp.write_text(json.dumps(json_safe(result), indent=1))
    os.replace(tmp, p)
    md = render.t_gpu(render.Results(data={"gpu": json.loads(p.read_text())}))
    (out / "gpu.md").write_text((md or "") + "\n")
    return p


# ------------------------------------------------------------------------------------------ machine


def _run_text(cmd: list[str], timeout: float = 20.0) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def nvidia_smi() -> dict:
    """GPU name, driver, the CUDA version the driver supports, memory, compute capability."""
    q = _run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                   "--format=csv,noheader,nounits"])
    if q is None:
        return {"available": False, "reason": "nvidia-smi not found or failed"}
    gpus = []
    for line in q.strip().splitlines():
        parts = [s.strip() for s in line.split(",")]
        if len(parts) >= 4:
            gpus.append({"name": parts[0], "driver": parts[1], "memory_mib": parts[2], "compute_cap": parts[3]})
    head = _run_text(["nvidia-smi"]) or ""
    m = re.search(r"CUDA Version:\s*([0-9.]+)", head)
    return {"available": True, "gpus": gpus, "driver_cuda": m.group(1) if m else None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def preload_cuda() -> dict:
    """Load the CUDA 13 / cuDNN 9 libraries before onnxruntime needs them (torch's wheels carry them)."""
    info: dict = {}
    try:
        import torch  # optional heavy dependency: only present (and needed) on the GPU machine

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["torch_cudnn"] = torch.backends.cudnn.version()
        if torch.cuda.is_available():
            info["torch_device"] = torch.cuda.get_device_name(0)
            info["torch_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except Exception as e:  # noqa: BLE001 - recorded; the EP check decides
        info["torch_error"] = _err(e)
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
            info["ort_preload_dlls"] = True
        except Exception as e:  # noqa: BLE001
            info["ort_preload_dlls"] = _err(e)
    return info


def nvidia_lib_dirs() -> list[str]:
    """The lib folders of the nvidia-* wheels on sys.path (CUDA 13 wheels: nvidia/cu13/lib, nvidia/cudnn/lib).

    This process finds them through torch (imported first) or ort.preload_dlls(); a subprocess (the
    search CLI) imports neither before onnxruntime loads its CUDA provider, so it gets them through
    LD_LIBRARY_PATH, which the loader reads at process start."""
    dirs: list[str] = []
    for base in sys.path:
        for d in sorted([*Path(base or ".").glob("nvidia/*/lib"), *Path(base or ".").glob("nvidia/*/lib64")]):
            if d.is_dir() and any(d.glob("*.so*")) and str(d) not in dirs:
                dirs.append(str(d))
    return dirs


def environment() -> dict:
    """What the figures depend on; recorded before anything is timed."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # the dry run's CUDA refusal is recorded; its C++ warnings are noise
    env: dict = {"python": platform.python_version(), "platform": platform.platform(), "cpu_model": cpu_model(),
                 "cpus": os.cpu_count(), "onnx": onnx.__version__, "numpy": np.__version__,
                 "onnxruntime": ort.__version__, "ort_device": ort.get_device(),
                 "ort_providers": ort.get_available_providers(), "nvidia_smi": nvidia_smi()}
    try:
        from onnxruntime.capi import build_and_package_info as bpi

        env["ort_package"] = getattr(bpi, "package_name", None)
        env["ort_cuda_version"] = getattr(bpi, "cuda_version", None)
        env["ort_cudnn_version"] = getattr(bpi, "cudnn_version", None)
    except ImportError:
        pass
    return env


# ------------------------------------------------------------------------------------------ EP checks


def probe_model() -> onnx.ModelProto:
    """Conv (cuDNN), Relu and Add (ORT's own CUDA kernels), a Cast to fp16 and back: one of each kind of kernel."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], rng.standard_normal((8, 3, 3, 3)).astype(np.float32).ravel())
    b = helper.make_tensor("b", TensorProto.FLOAT, [1, 8, 1, 1], rng.standard_normal(8).astype(np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Add", ["r", "b"], ["a"]),
        helper.make_node("Cast", ["a"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT),
    ]
    g = helper.make_graph(nodes, "ep_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], [w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _first_output(res: Any) -> np.ndarray:
    """make_runner's result: an IO binding (GPU) or the list session.run returns (CPU)."""
    if hasattr(res, "copy_outputs_to_cpu"):
        return np.asarray(res.copy_outputs_to_cpu()[0])
    return np.asarray(res[0])


def ep_check(target: Target) -> dict:
    """The target's EP runs the probe (ProviderError otherwise) and agrees with the CPU EP on it."""
    m = probe_model()
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ref = make_session(m, Target("cpu")).run(None, {"x": x})[0]
    sess = make_session(m, target, timing=True)
    providers = sess.get_providers()
    if providers[0] != target.provider:
        raise ProviderError(f"target {target.kind}: the session's first provider is {providers[0]}")
    out = _first_output(make_runner(sess, {"x": x})())
    err = float(np.max(np.abs(out - ref)))
    scale = float(np.max(np.abs(ref)))
    # fp16 round trip: 2^-11 relative; TF32 convolutions: about 1e-3 relative
    if not err <= 5e-3 * max(scale, 1.0):
        raise ProviderError(f"target {target.kind}: the probe's output differs from the CPU EP's by {err:.3g}")
    return {"ok": True, "target": target.kind, "providers": providers, "max_abs_vs_cpu": err, "io_binding": target.kind != "cpu"}


def provider_probe(kind: str) -> dict:
    """Whether `kind`'s EP loads here, as make_session sees it (the dry run records the CUDA refusal)."""
    try:
        ep_check(Target(kind))
    except ProviderError as e:
        return {"loaded": False, "error": str(e)}
    except Exception as e:  # noqa: BLE001
        return {"loaded": False, "error": _err(e)}
    return {"loaded": True}


TRT_LIBS = ("libnvinfer.so.10", "libnvonnxparser.so.10")


def tensorrt_probe() -> dict:
    """TensorRT EP: compiled into this onnxruntime? its libraries loadable? a session starting on it?"""
    import onnxruntime as ort

    info: dict = {"in_build": "TensorrtExecutionProvider" in ort.get_available_providers(), "libraries": {}}
    for lib in TRT_LIBS:
        try:
            ctypes.CDLL(lib)
            info["libraries"][lib] = True
        except OSError:
            info["libraries"][lib] = False
    if not info["in_build"]:
        info.update(loaded=False, reason="this onnxruntime build has no TensorRT EP")
    elif not all(info["libraries"].values()):
        missing = [k for k, v in info["libraries"].items() if not v]
        info.update(loaded=False, reason=f"{', '.join(missing)} not found: TensorRT's libraries are not installed "
                    "(the tensorrt wheels are over 1 GB, more than a device call can carry)")
    else:
        info.update(provider_probe("tensorrt"))
    return info


def trt_target(tmp: Path, *, int8: bool) -> Target:
    opts = {"trt_fp16_enable": "1", "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(tmp / "trt"),
            "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(tmp / "trt")}
    if int8:
        opts["trt_int8_enable"] = "1"
    return Target("tensorrt", ep_options=opts)


def cpu_nodes(model: onnx.ModelProto, target: Target) -> dict:
    """Does every node run on the GPU EP? A session with CPU fallback disabled refuses otherwise.

    Built without make_session: its provider list names the CPU EP explicitly (as fallback), which
    ORT rejects together with session.disable_cpu_ep_fallback. Shape nodes ORT itself prefers on
    the CPU count as CPU nodes here too; the recorded reason says which rule refused."""
    if target.kind == "cpu":
        return {"checked": False}
    import onnxruntime as ort

    so = session_options(target)
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    m = for_runtime(model)
    if has_offloaded(m) or model_bytes(m) > EXTERNAL_DATA_THRESHOLD:
        return {"checked": False, "reason": "model too large to check in memory"}
    try:
        ort.InferenceSession(m.SerializeToString(), so,
                             providers=[p for p in target.providers() if p[0] != "CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - the refusal is the answer
        return {"checked": True, "all_on_gpu": False, "reason": _err(e)[:200]}
    return {"checked": True, "all_on_gpu": True}


# ------------------------------------------------------------------------------------------ models


@functools.cache
def staged(name: str) -> str | None:
    """None when every file of `name` is in the model cache with its pinned hash, else why not.

    Checked here instead of calling fetch(): on a machine without a registry, fetch would spend its
    pip timeout before failing."""
    root = cache_dir()
    for art in MODELS[name].artifacts:
        p = root / art.dest
        if not p.is_file():
            return f"{p} is missing (stage it with benchmarks/gpu/stage.sh or run models/fetch.py)"
        if sha256_file(p) != art.sha256:
            return f"{p} does not have its pinned sha256"
    return None


def model_data(name: str, b: Budget) -> ModelData:
    """Paths of a model and its data; the real models' data sets come from models/datasets.py (cached)."""
    if name == "digits":
        m = ROOT / "models"
        return ModelData(name, m / "digits_cnn.onnx", m / "digits_calib.npz", m / "digits_test.npz",
                         m / "digits_test_labels.npy")
    why = staged(name)
    if why:
        raise BadInputError(why)
    md = ModelData(name, cache_dir() / MODELS[name].onnx.dest, datasets.build(name, "calib", b.calib_n),
                   datasets.build(name, "eval", b.eval_n))
    return md


def fidelity_summary(rep: FidelityReport) -> dict:
    """Worst value over the outputs of each label-free metric, and accuracy when there are labels."""
    out: dict = {"samples": rep.samples}
    for metric in ("cosine", "rel_l2", "max_abs", "top1"):
        with contextlib.suppress(BadInputError):
            out[metric] = rep.worst(metric)
    if rep.accuracy_a is not None:
        out["accuracy_fp32"] = rep.accuracy_a
        out["accuracy"] = rep.accuracy_b
    return out


def _runs_for(median_ms: float, b: Budget) -> int:
    """Interleaved rounds that fit the timing share (two models per round), within [min_runs, max_runs]."""
    n = int(b.timing_s * 1000.0 / max(2 * median_ms, 1e-3))
    return max(b.min_runs, min(b.max_runs, n))


@dataclass
class Baseline:
    """fp32 of one model on the target: its session and bound runner live while candidates are timed."""

    model: onnx.ModelProto
    session: Any
    run: Callable[[], Any]
    feed: dict[str, np.ndarray]
    calib: list
    evald: list
    labels: np.ndarray | None
    runs: int


def timed_vs_fp32(base: Baseline, model: onnx.ModelProto, target: Target, b: Budget) -> dict:
    """Latency of `model` against fp32 from interleaved IO-bound runs; fp32's runner is the baseline's.

    The baseline stays on the benchmark's target; `target` is the candidate's (TensorRT rows run
    against CUDA fp32)."""
    sess = make_session(model, target, timing=True)
    got = sess.get_providers()
    if got[0] != target.provider:
        raise ProviderError(f"candidate session runs on {got[0]}, not {target.provider}")
    run = make_runner(sess, base.feed)
    ta, tb = interleaved(base.run, run, b.warmup, base.runs)
    ab = ab_from_samples(ta, tb, target, {"a": base.session.get_providers(), "b": got})
    return {"ratio": ab.ratio, "ratio_p10": ab.ratio_p10, "ratio_p90": ab.ratio_p90, "ratio_ci95": list(ab.ratio_ci95),
            "median_ms": ab.b.median, "p90_ms": ab.b.p90, "fp32_median_ms": ab.a.median, "fp32_p90_ms": ab.a.p90,
            "runs": ab.a.n, "providers": got}


def bench_candidate(base: Baseline, spec: dict, target: Target, b: Budget, built: dict[str, onnx.ModelProto],
                    label: str) -> dict:
    """Build one candidate with the compress pipeline, time it against fp32, measure its fidelity."""
    row: dict = {"flags": CANDIDATE_FLAGS.get(label, "")}
    t0 = time.perf_counter()
    start = built.get(spec.get("base", ""), base.model)
    if "base" in spec and spec["base"] not in built:
        raise BadInputError(f"its base candidate {spec['base']!r} was not built")
    # the benchmark measures every candidate's fidelity itself and reports it as built: compress's
    # fidelity floor would back a candidate off (or exit 3) and hide what the flags give
    res = compress(start, pipeline=flags_pipeline(spec.get("prune"), spec.get("lowrank"), spec.get("quantize")),
                   calib=base.calib, target=target, seed=0, min_fidelity="none")
    row["build_s"] = round(time.perf_counter() - t0, 2)
    model = res.model
    built[label] = model
    notes = [s["stats"]["note"] for s in res.report["passes"] if isinstance(s.get("stats"), dict) and s["stats"].get("note")]
    row.update(modified=[s["name"] for s in res.report["passes"] if s["modified"]], notes=notes,
               nodes=len(model.graph.node), size_mb=round(model_bytes(model) / 1e6, 3),
               macs=res.report.get("after", {}).get("macs"), macs_fp32=res.report.get("before", {}).get("macs") if start is base.model else None)
    row["latency"] = timed_vs_fp32(base, model, target, b)
    rep = compare_models(base.model, model, base.evald, target=target, labels=base.labels)
    row["fidelity"] = fidelity_summary(rep)
    row["placement"] = cpu_nodes(model, target)
    return row


def bench_model(md: ModelData, target: Target, b: Budget, until: float, trt: dict, tmp: Path) -> dict:
    """fp32 and every candidate of one model, each within the model's share of the deadline."""
    row: dict = {"files": {"model": md.path.name, "calib": md.calib.name, "eval": md.eval.name}, "candidates": {}}
    fp32 = load_model(md.path)
    calib = list(open_data(str(md.calib), fp32, limit=b.calib_n))
    evald = list(open_data(str(md.eval), fp32, limit=b.eval_n))
    labels = load_labels_any(str(md.labels)) if md.labels else None
    feed = first_feed(evald)
    sess = make_session(fp32, target, timing=True)
    lat = measure(sess, feed, warmup=b.warmup, runs=max(b.min_runs // 2, 5))
    runs = _runs_for(lat.median, b)
    row.update(inputs={k: list(v.shape) for k, v in feed.items()}, runs=runs, nodes=len(fp32.graph.node),
               size_mb=round(model_bytes(fp32) / 1e6, 3), samples={"calib": len(calib), "eval": len(evald)},
               fp32={"median_ms": lat.median, "p90_ms": lat.p90, "runs": lat.n, "providers": sess.get_providers(),
                     "placement": cpu_nodes(fp32, target)})
    base = Baseline(fp32, sess, make_runner(sess, feed), feed, calib, evald, labels, runs)
    built: dict[str, onnx.ModelProto] = {}
    jobs: list[tuple[str, Callable[[], dict]]] = [
        (label, lambda label=label, spec=spec: bench_candidate(base, spec, target, b, built, label))
        for label, spec in CANDIDATES.items()
    ]
    if trt.get("loaded") and target.kind != "cpu":
        jobs.append(("TensorRT fp16", lambda: {"flags": "fp32 model, trt_fp16_enable",
                                               "latency": timed_vs_fp32(base, fp32, trt_target(tmp, int8=False), b)}))
        jobs.append(("TensorRT int8 QDQ", lambda: {"flags": "int8 QDQ model, trt_int8_enable + trt_fp16_enable",
                                                   "latency": timed_vs_fp32(base, built["int8 QDQ"],
                                                                            trt_target(tmp, int8=True), b)}))
    for label, job in jobs:
        left = until - time.monotonic()
        if left < b.min_candidate_s:
            row["candidates"][label] = {"skipped": f"budget: {max(left, 0):.0f} s left of the model's share",
                                        "flags": CANDIDATE_FLAGS.get(label, "")}
            continue
        t0 = time.perf_counter()
        try:
            with time_limit(min(left, b.candidate_s)):
                row["candidates"][label] = job()
        except BudgetExceeded as e:
            row["candidates"][label] = {"skipped": f"budget: stopped {e}"}
        except Exception as e:  # noqa: BLE001 - a candidate that fails is a result
            # a pass wraps what it raised (PassFailure): the timer's exception is still a budget stop
            m = re.search(r"pass '(\w+)' failed \(BudgetExceeded: ([^)]*)\)", str(e))
            row["candidates"][label] = {"skipped": f"budget: stopped in {m.group(1)}, {m.group(2)}"} if m else {"error": _err(e)}
        row["candidates"][label].setdefault("flags", CANDIDATE_FLAGS.get(label, ""))
        row["candidates"][label]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"  {md.name} {label}: {_brief(row['candidates'][label])}", flush=True)
    return row


def _brief(c: dict) -> str:
    if "latency" in c:
        lat, fid = c["latency"], c.get("fidelity", {})
        return (f"ratio {lat['ratio']:.3f} ({lat['ratio_p10']:.2f}-{lat['ratio_p90']:.2f}), median {lat['median_ms']:.3f} ms"
                + (f", cosine {fid['cosine']:.5f}" if "cosine" in fid else ""))
    return c.get("skipped") or c.get("error") or "?"


# ------------------------------------------------------------------------------------------ search


def search_cmd(md: ModelData, kind: str, out: Path, b: Budget, timeout: float) -> list[str]:
    """The CLI command the search step runs (the JSON records it verbatim)."""
    cmd = [sys.executable, "-m", "onnxslim_compress", "search", str(md.path), "-o", str(out), "--target", kind,
           "--calib", str(md.calib), "--eval", str(md.eval), "--trials", str(b.search_trials),
           "--timeout", f"{timeout:.0f}", "--runs", str(b.search_runs), "--warmup", str(b.search_warmup),
           "--seed", "0", "--num-samples", str(b.eval_n), "--json", "--no-progress"]
    if md.labels:
        cmd += ["--labels", str(md.labels), "--metric", "accuracy", "--max-drop", "0.01"]
    else:
        cmd += ["--metric", "cosine", "--max-drop", str(SEARCH_MAX_DROP)]
    if kind == "cpu":
        cmd += ["--threads", str(b.cpu_threads)]
    return cmd


def run_search(md: ModelData, kind: str, b: Budget, budget_s: float, work: Path) -> dict:
    """One `search --target KIND` in a subprocess that is killed at `budget_s`; its pick and figures."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"search_{kind}.onnx"
    # the study stops starting trials well before the kill, leaving time to rebuild and write the best
    cmd = search_cmd(md, kind, out, b, timeout=max(2.0, budget_s * 0.55))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if kind != "cpu":
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*nvidia_lib_dirs(), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])])
    row: dict = {"command": shlex.join(["onnxslim-compress", *cmd[3:]]), "budget_s": round(budget_s, 1)}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=budget_s, cwd=ROOT, env=env, check=False)
    except subprocess.TimeoutExpired:
        row.update(error=f"killed at its {budget_s:.0f} s budget", wall_s=round(time.perf_counter() - t0, 1))
        return row
    row.update(rc=p.returncode, wall_s=round(time.perf_counter() - t0, 1))
    try:
        rep = json.loads(p.stdout)
    except json.JSONDecodeError:
        tail = (p.stderr or p.stdout or "").strip().splitlines()
        row["error"] = tail[-1][:300] if tail else f"exit {p.returncode}, no output"
        return row
    best = rep.get("best") or {}
    row.update(trials=len(rep.get("trials", [])), baseline=rep.get("baseline", {}).get("value"),
               metric=rep.get("baseline", {}).get("metric"), best_params=best.get("params"),
               best_ratio=best.get("objective"), best_drop=best.get("drop"), best_trial=best.get("number"),
               model=str(out) if out.exists() else None)
    if p.returncode != 0 and not best:
        row["error"] = (p.stderr or "").strip().splitlines()[-1][:300] if p.stderr else f"exit {p.returncode}"
    return row


def cross_time(md: ModelData, picks: dict[str, Path], targets: dict[str, Target], b: Budget) -> dict:
    """Each pick against fp32 on each target, in one sitting per target: is each pick best where it was chosen?"""
    fp32 = load_model(md.path)
    feed = first_feed(list(open_data(str(md.eval), fp32, limit=1)))
    out: dict = {}
    for tname, target in targets.items():
        sess = make_session(fp32, target, timing=True)
        lat = measure(sess, feed, warmup=b.warmup, runs=max(b.min_runs // 2, 5))
        base = Baseline(fp32, sess, make_runner(sess, feed), feed, [], [], None, _runs_for(lat.median, b))
        out[f"on_{tname}"] = {}
        for pname, path in picks.items():
            try:
                lat_row = timed_vs_fp32(base, load_model(path), target, b)
                out[f"on_{tname}"][pname] = {k: lat_row[k] for k in ("ratio", "ratio_p10", "ratio_p90", "median_ms", "fp32_median_ms")}
            except Exception as e:  # noqa: BLE001
                out[f"on_{tname}"][pname] = {"error": _err(e)}
    return out


def search_section(md: ModelData, target: Target, b: Budget, until: float, work: Path,
                   search: Callable[..., dict] | None = None, kinds: list[tuple[str, str]] | None = None) -> dict:
    """search --target <gpu> and --target cpu on one model, then both picks timed on both targets.

    `kinds`: (row label, --target) of each search; default the GPU target and cpu, or cpu alone on
    the CPU EP (the dry run). `search` replaces run_search (tests hand in finished picks)."""
    search = search or run_search
    if kinds is None:
        kinds = [(target.kind, target.kind), ("cpu", "cpu")] if target.kind != "cpu" else [("cpu", "cpu")]
    labels = [k for k, _ in kinds]
    row: dict = {"model": md.name, "targets": labels}
    for i, (label, kind) in enumerate(kinds):
        left = until - time.monotonic()
        # the first of two searches leaves room for the second; the last leaves room for the cross timing
        share = left * (0.42 if i < len(kinds) - 1 else 0.75)
        if share < 3:
            row[label] = {"skipped": f"budget: {max(left, 0):.0f} s left"}
            continue
        row[label] = search(md, kind, b, share, work / f"s{i}")
        print(f"  search --target {kind}: {row[label].get('best_params') or row[label].get('error')}", flush=True)
    got = [row[k]["best_params"] for k in labels if row.get(k, {}).get("best_params") is not None]
    if len(labels) == 2 and len(got) == 2:
        row["same_pick"] = got[0] == got[1]
    picks = {f"{k} pick": Path(row[k]["model"]) for k in labels if row.get(k, {}).get("model")}
    left = until - time.monotonic()
    if picks and left > 2:
        targets = {target.kind: target}
        if target.kind != "cpu":
            targets["cpu"] = Target("cpu", threads=b.cpu_threads)
        try:
            with time_limit(left):
                row["cross"] = cross_time(md, picks, targets, b)
        except BudgetExceeded as e:
            row["cross"] = {"skipped": f"budget: stopped {e}"}
        except Exception as e:  # noqa: BLE001
            row["cross"] = {"error": _err(e)}
    return row


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU EP, the bundled digits CNN, tiny budgets")
    ap.add_argument("--out", help="folder for gpu.json and gpu.md (default: $OUT, else benchmarks/results)")
    ap.add_argument("--models-dir", help=f"model cache with the staged models and data (sets {ENV_CACHE})")
    ap.add_argument("--models", nargs="+", choices=[*REAL_MODELS, "digits"], help="default: every staged real model, then digits")
    ap.add_argument("--search-model", help=f"model of the search step (default {SEARCH_MODEL}, digits in a dry run)")
    ap.add_argument("--no-search", action="store_true", help="skip the search step")
    ap.add_argument("--deadline", type=float, help="seconds for the whole run (default 450; dry run 55)")
    ap.add_argument("--search-budget", type=float, help="seconds kept for the search step (default 150)")
    ap.add_argument("--candidate-budget", type=float, help="seconds one candidate may take at most (default 60; dry run 12)")
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--resume", help="an earlier gpu.json: models and search already in it are kept, not re-run")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t_start = time.monotonic()
    b = Budget.dry() if a.dry_run else Budget()
    if a.deadline:
        b.deadline_s = a.deadline
    if a.search_budget is not None:
        b.search_s = a.search_budget
    if a.candidate_budget is not None:
        b.candidate_s = a.candidate_budget
    deadline = t_start + b.deadline_s
    if a.models_dir:
        os.environ[ENV_CACHE] = str(Path(a.models_dir).resolve())
    out = Path(a.out or os.environ.get("OUT") or (BENCH / "results"))
    target = Target("cpu", threads=b.cpu_threads) if a.dry_run else Target("cuda", device_id=a.device_id)
    prev = json.loads(Path(a.resume).read_text()) if a.resume and Path(a.resume).exists() else {}
    if not prev.get("_meta", {}).get("partial") or prev["_meta"].get("dry_run") != a.dry_run:
        prev = {}  # only an interrupted run of the same kind is resumed; a finished one is measured afresh
    argv_text = shlex.join(["python", "benchmarks/bench_gpu.py", *(sys.argv[1:] if argv is None else argv)])
    result: dict = {"_meta": {"command": argv_text, "started": _now(), "dry_run": a.dry_run, "target": target.kind,
                              "deadline_s": b.deadline_s, "budget": vars(b), "partial": True},
                    "models": dict(prev.get("models", {}))}
    preload = {} if a.dry_run else preload_cuda()
    result["env"] = {**environment(), **preload}
    try:
        result["ep_check"] = ep_check(target)
    except ProviderError as e:
        result["ep_check"] = {"ok": False, "target": target.kind, "error": str(e)}
        result["_meta"].update(partial=False, total_s=round(time.monotonic() - t_start, 1))
        write_outputs(result, out)
        print(f"bench_gpu: {e}", file=sys.stderr)
        return 2
    print(f"EP check: {result['ep_check']}", flush=True)
    if a.dry_run:  # the refusal path of the GPU check, as it reads on this machine
        result["cuda_probe"] = provider_probe("cuda")
    result["tensorrt"] = tensorrt_probe()
    print(f"TensorRT: {result['tensorrt']}", flush=True)
    write_outputs(result, out)

    if a.models:
        names = a.models
    elif a.dry_run:
        names = ["digits"]
    else:
        names = [*REAL_MODELS, "digits"]
    # resumed: a model measured before (its fp32 row exists) is kept; one that failed or never started runs
    kept = [n for n in names if "fp32" in result["models"].get(n, {})]
    names = [n for n in names if n not in kept]
    result["_meta"]["resumed_models"] = kept
    search_name = a.search_model or ("digits" if a.dry_run else SEARCH_MODEL)
    do_search = not a.no_search and not (prev.get("search") and not prev["search"].get("error"))
    if not do_search and prev.get("search"):
        result["search"] = prev["search"]
    reserve = b.search_s if do_search else 0.0
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as d:
        tmp = Path(d)
        datas: dict[str, ModelData] = {}
        for i, name in enumerate(names):
            try:
                datas[name] = model_data(name, b)
            except Exception as e:  # noqa: BLE001 - not staged, or data missing: recorded, the next model runs
                result["models"][name] = {"error": _err(e)}
                print(f"{name}: {result['models'][name]['error']}", flush=True)
                continue
            weights = sum(MODEL_WEIGHT.get(n, 1.0) for n in names[i:] if staged_or_digits(n))
            share = (deadline - reserve - time.monotonic()) * MODEL_WEIGHT.get(name, 1.0) / max(weights, 1e-9)
            until = time.monotonic() + share
            print(f"{name}: {share:.0f} s", flush=True)
            if share < b.min_candidate_s:
                result["models"][name] = {"skipped": f"budget: {max(share, 0):.0f} s share"}
                continue
            try:
                with time_limit(share + 5):
                    result["models"][name] = bench_model(datas[name], target, b, until, result["tensorrt"], tmp)
            except BudgetExceeded as e:
                result["models"][name] = {"error": f"budget: stopped {e}"}
            except Exception as e:  # noqa: BLE001
                result["models"][name] = {"error": _err(e)}
            write_outputs(result, out)
        if do_search:
            try:
                md = datas.get(search_name) or model_data(search_name, b)
                until = max(deadline, time.monotonic() + b.search_min_s)
                result["search"] = search_section(md, target, b, until, tmp)
            except Exception as e:  # noqa: BLE001
                result["search"] = {"model": search_name, "error": _err(e)}
    result["_meta"].update(partial=False, finished=_now(), total_s=round(time.monotonic() - t_start, 1))
    p = write_outputs(result, out)
    print(f"wrote {p} and {p.with_name('gpu.md')} in {result['_meta']['total_s']} s")
    return 0


def staged_or_digits(name: str) -> bool:
    """Models that will really run (for dividing the time among them)."""
    return name == "digits" or staged(name) is None


if __name__ == "__main__":
    sys.exit(main())
