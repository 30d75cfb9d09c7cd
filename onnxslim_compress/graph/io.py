"""Loading and saving models without ever harming the user's files.

Why this module exists: real exported models come with external data, IR versions newer than the
installed onnxruntime reads, initializers duplicated as graph inputs, and sizes over protobuf's 2 GB
limit. Every pass and command goes through these functions so those cases are handled once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, version_converter

from onnxslim_compress.errors import BadInputError, CompressError
from onnxslim_compress.graph import weights
from onnxslim_compress.graph.index import UniqueNames
from onnxslim_compress.graph.weights import Workspace

PROTOBUF_LIMIT = 2**31 - 1
#: Above this many bytes of initializers a model is saved with external data (protobuf's hard limit
#: is 2 GiB; leave room for the graph itself).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(
    path: str | os.PathLike, *, load_external_data: bool = True, offload_to: Workspace | None = None
) -> onnx.ModelProto:
    """Load an ONNX file, turning every way it can be broken into one BadInputError line.

    With `offload_to`, weights are not read: external data is linked into the workspace and big
    in-proto tensors are written there (weights.py), so the returned proto is graph-only."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file")
    if p.is_dir():
        raise BadInputError(f"{p}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise BadInputError(f"{p}: not a valid ONNX model ({type(e).__name__})") from e
    except OSError as e:
        raise BadInputError(f"{p}: cannot read ({e.strerror or e})") from e
    if not model.opset_import or not model.HasField("graph") or (
        not model.graph.node and not model.graph.output
    ):
        raise BadInputError(f"{p}: not a valid ONNX model (no graph or opset)")
    if load_external_data or offload_to is not None:
        load_weights(model, p, offload_to=offload_to)
    return model


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(weights.is_external(t) for t in weights.all_tensors(model.graph))


def load_weights(model: onnx.ModelProto, path: str | os.PathLike, *, offload_to: Workspace | None = None) -> None:
    """In place: the external data of a model loaded graph-only from `path`, read into the proto or,
    with `offload_to`, left in files the workspace points at (one clear error if missing/truncated)."""
    p = Path(path)
    missing = sorted(
        {
            _external_location(t)
            for t in all_initializers(model.graph)
            if t.data_location == onnx.TensorProto.EXTERNAL
            and not (p.parent / _external_location(t)).exists()
        }
    )
    if missing:
        raise BadInputError(f"{p}: external data file missing: {missing[0]}")
    if offload_to is not None:
        try:
            offload_to.adopt(model, p.parent)
        except (OSError, ValueError) as e:
            raise BadInputError(f"{p}: cannot read external data ({e})") from e
        _check_external_lengths(model, p)
        return
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except (OSError, ValueError) as e:
        raise BadInputError(f"{p}: cannot read external data ({e})") from e


def _check_external_lengths(model: onnx.ModelProto, p: Path) -> None:
    """A truncated data file must fail here, with the file named, not later inside a pass."""
    for t in all_initializers(model.graph):
        if weights.is_offloaded(t):
            info = weights.external_info(t)
            end = int(info.get("offset", 0)) + int(info["length"])
            if os.path.getsize(info["location"]) < end:
                raise BadInputError(f"{p}: external data of {t.name!r} runs past the end of its file (truncated?)")


def _external_location(t: onnx.TensorProto) -> str:
    for kv in t.external_data:
        if kv.key == "location":
            return kv.value
    return ""


def all_initializers(graph: onnx.GraphProto):
    """Initializers of a graph and of every subgraph (If/Loop/Scan bodies)."""
    for g in weights.graphs(graph):
        yield from g.initializer


def model_bytes(model: onnx.ModelProto) -> int:
    """Approximate serialized size, without serializing (which fails above 2 GB)."""
    return sum(weights.nbytes(t) for t in all_initializers(model.graph)) + 1_000_000


@functools.lru_cache(maxsize=1)
def max_ir_version() -> int:
    """Highest IR version the installed onnxruntime loads, found by trying (no table to go stale)."""
    import onnxruntime as ort  # lazy: loading or saving a model should not start the runtime

    for ir in range(onnx.IR_VERSION, 6, -1):
        g = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = ir
        try:
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            return ir
        except Exception:  # noqa: BLE001 - any refusal means "too new"
            continue
    return 7


def clamp_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower the IR version to what onnxruntime reads, but never below what the opsets need."""
    cap = max_ir_version()
    if model.ir_version > cap:
        model.ir_version = cap
    return model


def for_runtime(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself when onnxruntime reads its IR version, else a copy with the version lowered.

    Why a copy: a session is built from the caller's model, and building one must not change it (a
    model saved after a session would otherwise carry an older IR version than it was given). The
    copy is only made when the version is too new; offloaded weights are not copied (they live on disk).
    """
    if model.ir_version <= max_ir_version():
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return clamp_ir_version(m)


def main_opset(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return 0


def upgrade_opset(model: onnx.ModelProto, target: int) -> tuple[onnx.ModelProto, bool]:
    """Convert to at least `target`; returns (model, changed). Raises CompressError if onnx cannot."""
    current = main_opset(model)
    if current >= target:
        return model, False
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as e:  # the converter raises a bare RuntimeError/ValidationError
        raise CompressError(f"cannot upgrade opset {current} -> {target}: {e}".splitlines()[0]) from e
    clamp_ir_version(converted)
    return converted, True


@dataclass
class NormalizeReport:
    initializers_removed_from_inputs: list[str] = field(default_factory=list)
    ir_version: tuple[int, int] | None = None
    nodes_renamed: int = 0

    def as_dict(self) -> dict:
        return {
            "initializers_removed_from_inputs": len(self.initializers_removed_from_inputs),
            "ir_version": list(self.ir_version) if self.ir_version else None,
            "nodes_renamed": self.nodes_renamed,
        }


def normalize(model: onnx.ModelProto) -> NormalizeReport:
    """In place: drop graph inputs that are initializers (old exporters, IR < 4) and clamp IR.

    Such inputs make ORT treat weights as overridable, which blocks constant folding and makes every
    weight look like a runtime input to the analysis.
    """
    rep = NormalizeReport()
    inits = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    if len(keep) != len(model.graph.input):
        rep.initializers_removed_from_inputs = [i.name for i in model.graph.input if i.name in inits]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)
    rep.nodes_renamed = _dedupe_node_names(model.graph)
    before = model.ir_version
    clamp_ir_version(model)
    if before != model.ir_version:
        rep.ir_version = (before, model.ir_version)
    return rep


def _dedupe_node_names(graph: onnx.GraphProto) -> int:
    """Give the 2nd, 3rd ... node of one non-empty name a unique one: ORT refuses such graphs."""
    fresh = UniqueNames.of(n.name for n in graph.node)  # node names: their own namespace
    seen: set[str] = set()
    renamed = 0
    for n in graph.node:
        if n.name and n.name in seen:
            n.name = fresh(n.name)
            renamed += 1
        seen.add(n.name)
    return renamed


def check_output_path(out: str | os.PathLike, inputs: list[str | os.PathLike]) -> Path:
    """Refuse an output that equals an input or sits in a folder we cannot write, before any work."""
    o = Path(out)
    for i in inputs:
        ip = Path(i)
        same = o.absolute() == ip.absolute() or (ip.exists() and o.exists() and o.resolve() == ip.resolve())
        if same:
            raise BadInputError(f"output {o} is the input file; choose another path")
    parent = o.absolute().parent
    if not parent.is_dir():
        raise BadInputError(f"output folder {parent} does not exist")
    try:  # a real probe: os.access says yes to root even where the filesystem refuses
        fd, probe = tempfile.mkstemp(prefix=f".{o.name}.probe.", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError:
        raise BadInputError(f"output folder {parent} is not writable") from None
    if o.is_dir():
        raise BadInputError(f"output {o} is a directory")
    return o


def save_model(
    model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None, check: bool = True
) -> Path:
    """Write atomically: into a temp folder beside the target, then rename into place.

    A crash or Ctrl-C therefore never leaves a half-written model. Models above
    EXTERNAL_DATA_THRESHOLD (or with external_data=True) keep weights in `<name>.data`.
    """
    out = Path(path)
    clamp_ir_version(model)
    if weights.has_offloaded(model):
        return _save_offloaded(model, out, check=check)
    big = model_bytes(model) > EXTERNAL_DATA_THRESHOLD
    use_ext = big if external_data is None else external_data
    if check:
        _check(model, big)
    parent = out.absolute().parent
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        tmp_model = tmpdir / out.name
        data_name = out.name + ".data"
        if use_ext:
            onnx.save_model(
                model,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            os.replace(tmpdir / data_name, parent / data_name)
            # saving with external data strips raw_data from the caller's proto; put the weights back
            onnx.load_external_data_for_model(model, str(parent))
        else:
            onnx.save_model(model, str(tmp_model))
        os.replace(tmp_model, out)
    except OSError as e:
        raise BadInputError(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def _save_offloaded(model: onnx.ModelProto, out: Path, *, check: bool) -> Path:
    """Stream the weights of an offloaded model into `<name>.data`, one tensor at a time, then point
    the caller's proto at the written file (so it stays usable once the workspace is gone)."""
    parent = out.absolute().parent
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    data_name = out.name + ".data"
    try:
        written = weights.write_external(model, tmpdir / out.name, data_name)
        if check:
            try:
                onnx.checker.check_model(str(tmpdir / out.name))
            except onnx.checker.ValidationError as e:
                raise CompressError(f"output model fails onnx.checker: {str(e).splitlines()[0]}") from e
        os.replace(tmpdir / data_name, parent / data_name)
        os.replace(tmpdir / out.name, out)
    except OSError as e:
        raise BadInputError(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    for t, w in zip(weights.all_tensors(model.graph), weights.all_tensors(written.graph), strict=True):
        if weights.is_offloaded(t):
            info = weights.external_info(w)
            weights.set_external(t, str(parent / data_name), int(info["offset"]), int(info["length"]))
    return out


def _check(model: onnx.ModelProto, big: bool) -> None:
    if big:
        return  # the in-memory checker refuses >2 GB protos; the path-based check runs after writing
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise CompressError(f"output model fails onnx.checker: {str(e).splitlines()[0]}") from e


@contextlib.contextmanager
def temp_model_file(model: onnx.ModelProto):
    """A model written to a temporary path (for ORT sessions of >2 GB models and tools wanting paths)."""
    if weights.has_offloaded(model):
        with weights.session_file(model) as p:
            yield p
        return
    d = Path(tempfile.mkdtemp(prefix="osc-"))
    try:
        p = d / "model.onnx"
        save_model(model, p, check=False)
        yield p
    finally:
        shutil.rmtree(d, ignore_errors=True)
