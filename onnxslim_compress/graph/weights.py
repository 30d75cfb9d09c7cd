"""Where tensor bytes live: in the proto, or offloaded to files in a workspace folder.

Why: a 2 GB model held as protobuf bytes, plus the numpy copies a pass makes, plus the ORT sessions
that read it, costs many times its size (12x measured, BENCHMARKS.md "Robustness"). Offloaded, the
in-memory model is graph-only: every big tensor is an external-data reference whose location is an
*absolute* path into one workspace folder. Passes read one tensor at a time (`read`), write new
tensors to an append-only scratch file there (`new_tensor`), and ONNX Runtime memory-maps the
files (`session_file`), so the weights are never resident twice.

The absolute location is the marker: onnx itself refuses absolute locations, so any code path that
bypasses `read` fails loudly instead of silently loading the weights back into the proto.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress import files

#: tensors smaller than this stay inside the proto (shapes, scales, biases: read often, cost nothing)
OFFLOAD_MIN_BYTES = 64 * 1024
#: offsets in the files we write are aligned so ORT can map each tensor on its own pages
ALIGN = 4096


def external_info(t: TensorProto) -> dict[str, str]:
    return {kv.key: kv.value for kv in t.external_data}


def is_external(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL


def is_offloaded(t: TensorProto) -> bool:
    return is_external(t) and os.path.isabs(external_info(t).get("location", ""))


def nbytes(t: TensorProto) -> int:
    """Bytes of a tensor's data wherever it lives (no read)."""
    if is_external(t):
        info = external_info(t)
        if "length" in info:
            return int(info["length"])
        n = int(np.prod(t.dims)) if t.dims else 1
        return n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return len(t.raw_data) if t.HasField("raw_data") else t.ByteSize()


@dataclass(frozen=True)
class TensorInfo:
    """What code that only inspects a weight needs (shape, ndim, dtype), without reading it."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def info(t: TensorProto) -> TensorInfo:
    return TensorInfo(tuple(int(d) for d in t.dims), np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)))


def read(t: TensorProto) -> np.ndarray:
    """The tensor's value, read from its file when offloaded (never cached: the caller decides)."""
    if not is_offloaded(t):
        return numpy_helper.to_array(t)
    info = external_info(t)
    offset, length = int(info.get("offset", 0)), int(info["length"])
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    direct = t.data_type in _DIRECT_TYPES
    with open(info["location"], "rb") as f:
        f.seek(offset)
        if direct:
            arr = np.fromfile(f, dtype=dtype, count=length // dtype.itemsize)
            return arr.reshape(tuple(t.dims))
        raw = f.read(length)
    tmp = TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, raw_data=raw)
    return numpy_helper.to_array(tmp)


_DIRECT_TYPES = {
    TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8, TensorProto.UINT8,
    TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32, TensorProto.UINT32, TensorProto.INT64,
    TensorProto.UINT64, TensorProto.BOOL,
}


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and every If/Loop/Scan body nested in it."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from graphs(g)


def all_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Initializers and Constant/attribute tensors of a graph and all its subgraphs."""
    for g in graphs(graph):
        yield from g.initializer
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t
                elif a.type == onnx.AttributeProto.TENSORS:
                    yield from a.tensors


def has_offloaded(model_or_graph: onnx.ModelProto | onnx.GraphProto) -> bool:
    g = model_or_graph.graph if isinstance(model_or_graph, onnx.ModelProto) else model_or_graph
    return any(is_offloaded(t) for t in all_tensors(g))


class Workspace:
    """A folder holding offloaded tensor data. `owned` workspaces are deleted by close()."""

    def __init__(self, path: str | os.PathLike, *, owned: bool = False):
        self.path = Path(path)
        self.owned = owned

    @classmethod
    def create(cls, parent: str | os.PathLike | None = None) -> Workspace:
        if parent is not None:
            files.remove_stale(parent)  # workspaces of killed runs (their PID is in the name)
        return cls(tempfile.mkdtemp(prefix=files.workspace_prefix(), dir=parent), owned=True)

    @classmethod
    def of(cls, model_or_graph: onnx.ModelProto | onnx.GraphProto) -> Workspace | None:
        """The workspace the model's offloaded tensors live in, or None when they are all in memory."""
        g = model_or_graph.graph if isinstance(model_or_graph, onnx.ModelProto) else model_or_graph
        for t in all_tensors(g):
            if is_offloaded(t):
                return cls(Path(external_info(t)["location"]).parent)
        return None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)

    def _scratch(self) -> Path:
        # one file per process: search workers may share a workspace and append concurrently
        return self.path / f"scratch-{os.getpid()}.bin"

    def put(self, arr: np.ndarray, name: str) -> TensorProto:
        """Append `arr` to the scratch file; returns an offloaded TensorProto for it."""
        t = numpy_helper.from_array(np.zeros((0,), dtype=arr.dtype), name)
        del t.dims[:]
        t.dims.extend(arr.shape)
        t.ClearField("raw_data")
        path = self._scratch()
        with open(path, "ab") as f:
            offset = f.tell()
            pad = -offset % ALIGN
            if pad:
                f.write(b"\0" * pad)
                offset += pad
            data = np.ascontiguousarray(arr)
            if data.dtype.byteorder == ">":
                data = data.astype(data.dtype.newbyteorder("<"))
            data.tofile(f)
            length = data.nbytes
        set_external(t, str(path), offset, length)
        return t

    def adopt(self, model: onnx.ModelProto, base_dir: str | os.PathLike | None) -> int:
        """Offload a loaded model in place: relative external data (files under `base_dir`) is
        hard-linked (or copied) into the workspace; big in-proto tensors are written to it.
        Returns the number of tensors now offloaded. The source files are only read."""
        linked: dict[str, Path] = {}
        count = 0
        for t in all_tensors(model.graph):
            if is_offloaded(t):
                count += 1
                continue
            if is_external(t):
                if base_dir is None:
                    raise ValueError(f"tensor {t.name!r} has external data but the model has no folder")
                info = external_info(t)
                rel = info.get("location", "")
                if rel not in linked:
                    src = inside(base_dir, rel)
                    if src is None:
                        raise ValueError(f"external data of {t.name!r} ({rel}) lies outside the model's folder")
                    linked[rel] = self._bring(src, rel)
                set_external(t, str(linked[rel]), int(info.get("offset", 0)), int(info["length"]) if "length" in info else os.path.getsize(linked[rel]))
                count += 1
            elif t.HasField("raw_data") and len(t.raw_data) >= OFFLOAD_MIN_BYTES:
                arr = numpy_helper.to_array(t)
                t.CopyFrom(self.put(arr, t.name))
                count += 1
        return count

    def _bring(self, src: Path, rel: str) -> Path:
        if not src.is_file():
            raise FileNotFoundError(f"external data file missing: {rel}")
        dst = self.path / f"input-{sum(1 for _ in self.path.glob('input-*'))}.bin"
        try:
            os.link(src, dst)  # no copy; the file is only ever opened for reading
        except OSError:
            shutil.copyfile(src, dst)
        return dst


def inside(base_dir: str | os.PathLike, location: str) -> Path | None:
    """The real path of external data `location` if it lies inside `base_dir`, else None.

    Why: a model file is untrusted input. Its `location` may be absolute, climb out with `..`, or
    name a symlink pointing elsewhere; following it would copy any readable file (/etc/passwd, a
    key) into the workspace and from there into the output. Real paths are compared, so symlinks
    inside the folder are fine as long as they stay inside it."""
    if not location or os.path.isabs(location) or "\0" in location:
        return None
    base = os.path.realpath(base_dir)
    target = os.path.realpath(os.path.join(base, location))
    if os.path.commonpath([base, target]) != base or target == base:
        return None
    return Path(target)


def set_external(t: TensorProto, location: str, offset: int, length: int) -> None:
    t.ClearField("raw_data")
    del t.external_data[:]
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


def new_tensor(arr: np.ndarray, name: str, ws: Workspace | None) -> TensorProto:
    """A TensorProto for `arr`: offloaded to `ws` when there is one and the array is big."""
    arr = np.asarray(arr)
    if ws is not None and arr.nbytes >= OFFLOAD_MIN_BYTES:
        return ws.put(arr, name)
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def new_int4_tensor(q: np.ndarray, name: str, ws: Workspace | None) -> TensorProto:
    """An INT4 tensor from int values in [-8, 7], packed two per byte (low nibble first) with numpy:
    helper.make_tensor would build a Python list of every value (GBs of ints on a big model)."""
    flat = np.asarray(q, dtype=np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    packed = ((flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)).astype(np.uint8)
    if ws is not None and packed.nbytes >= OFFLOAD_MIN_BYTES:
        t = ws.put(packed, name)
    else:
        t = TensorProto(name=name, raw_data=packed.tobytes())
    t.data_type = TensorProto.INT4
    del t.dims[:]
    t.dims.extend(int(d) for d in np.shape(q))
    return t


def materialize(model: onnx.ModelProto) -> onnx.ModelProto:
    """In place: read every offloaded tensor back into the proto (the workspace may then go)."""
    for t in all_tensors(model.graph):
        if is_offloaded(t):
            t.CopyFrom(numpy_helper.from_array(read(t), t.name))
    return model


def relocated_copy(model: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    """A graph-only copy whose offloaded locations are relative to `folder` (for ORT and the checker)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in all_tensors(m.graph):
        if is_offloaded(t):
            info = external_info(t)
            set_external(t, os.path.relpath(info["location"], folder), int(info.get("offset", 0)), int(info["length"]))
    return m


def as_inputs(model: onnx.ModelProto, *, subgraphs: bool = True) -> tuple[onnx.ModelProto, dict[str, TensorProto]]:
    """(graph-only copy, hidden tensors): offloaded initializers become main-graph inputs of the same
    type and shape, for tools that must not read them (the checker, onnxslim). Names are unique
    across scopes, so a body reads such an input as an outer-scope capture."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    hidden: dict[str, TensorProto] = {}
    for g in graphs(m.graph) if subgraphs else [m.graph]:
        off = [t for t in g.initializer if is_offloaded(t)]
        if not off:
            continue
        keep = [t for t in g.initializer if not is_offloaded(t)]
        del g.initializer[:]
        g.initializer.extend(keep)
        hidden.update((t.name, t) for t in off)
    m.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in hidden.values())
    return m, hidden


def check(model: onnx.ModelProto) -> None:
    """onnx.checker on an offloaded model's graph, offloaded initializers checked as inputs (the
    checker refuses absolute locations, and by path the hard-linked input data; the data itself is
    checked when the output is saved)."""
    onnx.checker.check_model(as_inputs(model)[0])


@contextlib.contextmanager
def session_file(model: onnx.ModelProto) -> Iterator[Path]:
    """The model as a file inside its workspace, so ORT memory-maps the offloaded tensors.

    ORT refuses external data outside the model's folder, hence the file goes into the workspace;
    it is removed once the caller has built its session (ORT keeps the data files mapped).
    """
    ws = Workspace.of(model)
    if ws is None:
        raise ValueError("model has no offloaded tensors")
    p = ws.path / f"session-{os.getpid()}-{uuid.uuid4().hex[:8]}.onnx"
    onnx.save_model(relocated_copy(model, ws.path), str(p))
    try:
        yield p
    finally:
        with contextlib.suppress(OSError):
            p.unlink()


def write_external(model: onnx.ModelProto, out: Path, data_name: str) -> onnx.ModelProto:
    """Write `model` to `out` with every offloaded or big tensor streamed into `out.parent/data_name`,
    one tensor in memory at a time. Returns the graph-only proto that was written."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    data_path = out.parent / data_name
    with open(data_path, "wb") as f:
        for t in all_tensors(m.graph):
            big = is_offloaded(t) or (t.HasField("raw_data") and len(t.raw_data) >= 1024)
            if not big:
                continue
            pad = -f.tell() % ALIGN
            if pad:
                f.write(b"\0" * pad)
            offset = f.tell()
            if is_offloaded(t):
                info = external_info(t)
                length = int(info["length"])
                with open(info["location"], "rb") as src:
                    src.seek(int(info.get("offset", 0)))
                    _copy_bytes(src, f, length)
            else:
                length = len(t.raw_data)
                f.write(t.raw_data)
            set_external(t, data_name, offset, length)
    onnx.save_model(m, str(out))
    return m


def _copy_bytes(src, dst, length: int, chunk: int = 64 << 20) -> None:
    left = length
    while left > 0:
        b = src.read(min(chunk, left))
        if not b:
            raise OSError("external data file is shorter than its tensors say")
        dst.write(b)
        left -= len(b)
