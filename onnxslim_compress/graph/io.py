"""Loading and saving models without ever harming the user's files.

Why this module exists: real exported models come with external data, IR versions newer than the
installed onnxruntime reads, initializers duplicated as graph inputs, and sizes over protobuf's 2 GB
limit. Every pass and command goes through these functions so those cases are handled once.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, version_converter

from onnxslim_compress import files
from onnxslim_compress.errors import NO_SPACE_ERRNOS, BadInputError, CompressError
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

    External data must lie inside the model's folder (check_external_locations), also when only
    the graph is loaded: the graph-only proto is what later loads the weights.
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
    check_external_locations(model, p)
    if load_external_data or offload_to is not None:
        load_weights(model, p, offload_to=offload_to)
    return model


def check_external_locations(model: onnx.ModelProto, path: str | os.PathLike) -> list[Path]:
    """The real paths of a model's external data files; BadInputError for any outside its folder.

    Why: `location` is attacker-controlled. onnx refuses `..` and absolute paths itself, but the
    offload workspace links files directly, and a symlink inside the folder can point anywhere."""
    p = Path(path)
    found: dict[str, Path] = {}
    for t in weights.all_tensors(model.graph):
        if not weights.is_external(t):
            continue
        loc = _external_location(t)
        if loc in found:
            continue
        real = weights.inside(p.parent, loc)
        if real is None:
            raise BadInputError(
                f"{p}: external data of tensor {t.name!r} ({loc!r}) lies outside the model's folder; refused"
            )
        found[loc] = real
    return list(found.values())


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(weights.is_external(t) for t in weights.all_tensors(model.graph))


def load_weights(model: onnx.ModelProto, path: str | os.PathLike, *, offload_to: Workspace | None = None) -> None:
    """In place: the external data of a model loaded graph-only from `path`, read into the proto or,
    with `offload_to`, left in files the workspace points at (one clear error if missing/truncated)."""
    p = Path(path)
    check_external_locations(model, p)
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
        except OSError as e:
            if e.errno in NO_SPACE_ERRNOS:
                raise BadInputError(
                    f"cannot write the weights workspace {offload_to.path}: {os.strerror(e.errno)}"
                ) from e
            raise BadInputError(f"{p}: cannot read external data ({e})") from e
        except ValueError as e:
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
    """In place: drop graph inputs that are initializers in IR < 4 models, dedupe node names, clamp IR.

    Below IR 4 every initializer had to be listed as an input, so such inputs are weights, and
    keeping them would make ORT treat the weights as overridable (blocking constant folding).
    From IR 4 on, an initializer named like an input is that input's *default value*: the input
    is real (a temperature, a threshold) and stays; the initializer is kept as its default.
    """
    rep = NormalizeReport()
    if model.ir_version < 4:
        inits = {t.name for t in model.graph.initializer}
        keep = [i for i in model.graph.input if i.name not in inits]
        if len(keep) != len(model.graph.input):
            rep.initializers_removed_from_inputs = [i.name for i in model.graph.input if i.name in inits]
            del model.graph.input[:]
            model.graph.input.extend(keep)
            model.ir_version = 4
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


def input_files(path: str | os.PathLike) -> list[Path]:
    """Real paths of a model file and of the external data files it references (best effort: a
    file that does not parse has no data files we could harm)."""
    p = Path(path)
    out = [Path(os.path.realpath(p))]
    if p.suffix.lower() != ".onnx" or not p.is_file():
        return out
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model (data, labels, recipe): only the file itself
        return out
    for t in weights.all_tensors(m.graph):
        if weights.is_external(t):
            real = weights.inside(p.parent, _external_location(t))
            if real is not None:
                out.append(real)
    return out


def _data_name_pattern(out: Path) -> re.Pattern:
    """Data files of `out` that save_model names (and so may delete): `o.onnx.data`, `o.onnx.3.data`."""
    return re.compile(re.escape(out.name) + r"(?:\.\d+)?\.data")


def _own_data_files(out: Path) -> list[Path]:
    """Data files the existing `out` references that save_model itself named (only those are ever
    removed when `out` is rewritten; a file the user named stays)."""
    if not out.is_file():
        return []
    try:
        m = onnx.load(str(out), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable old output has nothing to clean
        return []
    pat = _data_name_pattern(out)
    names = {_external_location(t) for t in weights.all_tensors(m.graph) if weights.is_external(t)}
    return [out.parent / n for n in sorted(names) if pat.fullmatch(n)]


def check_output_path(out: str | os.PathLike, inputs: list[str | os.PathLike]) -> Path:
    """Refuse, before any work, an output we must not write: one that is (or resolves to) an input
    or one of its data files, whose data file would be one, that exists but is not a regular file
    (a device, a FIFO: replacing /dev/null breaks the system), or in a folder we cannot write.
    Also removes what killed runs left in the output folder (files.remove_stale)."""
    o = Path(out)
    protected: dict[Path, str] = {}
    for i in inputs:
        for f in input_files(i):
            protected.setdefault(f, str(i))
    written = [o, o.parent / f"{o.name}.data", *_own_data_files(o)]
    if o.parent.is_dir():
        pat = _data_name_pattern(o)
        written += [o.parent / n for n in os.listdir(o.parent) if pat.fullmatch(n)]
    for w in written:
        real = Path(os.path.realpath(w))
        if real in protected:
            what = "the input file" if real == Path(os.path.realpath(protected[real])) else f"a data file of the input {protected[real]}"
            subject = f"output {o}" if w == o else f"output {o} would write {w.name}, which"
            raise BadInputError(f"{subject} is {what}; choose another path")
    parent = o.absolute().parent
    if not parent.is_dir():
        raise BadInputError(f"output folder {parent} does not exist")
    if o.is_dir():
        raise BadInputError(f"output {o} is a directory")
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(o).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)) or (o.exists() and not o.is_file()):
            raise BadInputError(f"output {o} exists and is not a regular file (a device or pipe); choose another path")
    try:  # a real probe: os.access says yes to root even where the filesystem refuses
        fd, probe = tempfile.mkstemp(prefix=files.temp_prefix(o.name), suffix=".probe", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError:
        raise BadInputError(f"output folder {parent} is not writable") from None
    files.remove_stale(parent)
    files.remove_stale(tempfile.gettempdir())  # temp models (temp_model_file) and profiles of killed runs
    return o


def save_model(
    model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None, check: bool = True
) -> Path:
    """Write atomically: into a fresh temp folder beside the target, then rename into place.

    A crash or Ctrl-C therefore never leaves a half-written model. Models above
    EXTERNAL_DATA_THRESHOLD (or with external_data=True) keep weights in `<name>.data` (or
    `<name>.N.data` when that name is taken: see _install).
    """
    out = Path(path)
    clamp_ir_version(model)
    if weights.has_offloaded(model):
        return _save_offloaded(model, out, check=check)
    big = model_bytes(model) > EXTERNAL_DATA_THRESHOLD
    use_ext = big if external_data is None else external_data
    if check:
        _check(model, big)
    tmpdir = _temp_dir_beside(out)
    try:
        tmp_model = tmpdir / out.name
        data_name = _fresh_data_name(out) if use_ext else None
        if data_name is not None:
            onnx.save_model(
                model,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(tmp_model))
        _install(tmpdir, out, data_name)
        if data_name is not None:
            # saving with external data strips raw_data from the caller's proto; put the weights back
            onnx.load_external_data_for_model(model, str(out.absolute().parent))
    except OSError as e:
        raise BadInputError(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def _fresh_data_name(out: Path) -> str:
    """A data file name beside `out` that nothing uses yet: the old pair keeps its own file until
    the new `.onnx` has replaced the old one."""
    taken = {p.name for p in _own_data_files(out)}
    for k in range(10_000):
        name = f"{out.name}.data" if k == 0 else f"{out.name}.{k}.data"
        if name not in taken and not os.path.lexists(out.parent / name):
            return name
    raise BadInputError(f"cannot write {out}: too many {out.name}.N.data files beside it")


def _install(tmpdir: Path, out: Path, data_name: str | None) -> None:
    """Move a written model (and its data file) from `tmpdir` into place so that a kill at any
    moment leaves the old pair or the new pair, never a mix.

    The new data file goes in under a name nothing uses (a hard link fails if the name exists, so
    a racing writer cannot be overwritten either); the `.onnx` rename is the commit point; the
    old pair's data file is removed only after it."""
    parent = out.absolute().parent
    old_data = _own_data_files(out)
    placed: Path | None = None
    try:
        if data_name is not None:
            placed = parent / data_name
            try:
                os.link(tmpdir / data_name, placed)
                os.unlink(tmpdir / data_name)  # one link left: onnx refuses multiply-linked data files
            except FileExistsError:
                placed = None
                raise
            except OSError as e:  # no hard links on this filesystem: a rename to a name we checked is free
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    placed = None
                    raise
                if os.path.lexists(placed):
                    placed = None
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(parent / data_name)) from e
                os.rename(tmpdir / data_name, placed)
        os.replace(tmpdir / out.name, out)
    except BaseException:
        if placed is not None:
            with contextlib.suppress(OSError):
                os.unlink(placed)
        raise
    for f in old_data:
        if f.name != data_name:
            with contextlib.suppress(OSError):
                os.unlink(f)


def _temp_dir_beside(out: Path) -> Path:
    """A fresh temp folder in the output's folder (same filesystem, so the final rename is atomic),
    named with this process's marker so a stale one can be cleaned after a kill."""
    try:
        return Path(tempfile.mkdtemp(prefix=files.temp_prefix(out.name), dir=out.absolute().parent))
    except OSError as e:
        raise BadInputError(f"cannot write {out}: {e.strerror or e}") from e


def _save_offloaded(model: onnx.ModelProto, out: Path, *, check: bool) -> Path:
    """Stream the weights of an offloaded model into `<name>.data`, one tensor at a time, then point
    the caller's proto at the written file (so it stays usable once the workspace is gone)."""
    tmpdir = _temp_dir_beside(out)
    try:
        data_name = _fresh_data_name(out)
        written = weights.write_external(model, tmpdir / out.name, data_name)
        if check:
            try:
                onnx.checker.check_model(str(tmpdir / out.name))
            except onnx.checker.ValidationError as e:
                raise CompressError(f"output model fails onnx.checker: {str(e).splitlines()[0]}") from e
        _install(tmpdir, out, data_name)
    except OSError as e:
        raise BadInputError(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    for t, w in zip(weights.all_tensors(model.graph), weights.all_tensors(written.graph), strict=True):
        if weights.is_offloaded(t):
            info = weights.external_info(w)
            weights.set_external(t, str(out.absolute().parent / data_name), int(info["offset"]), int(info["length"]))
    return out


def graph_problem(model: onnx.ModelProto) -> str | None:
    """What onnx.checker finds wrong with a model's graph (weights checked as inputs, so this is
    cheap and works above 2 GB), or None. Used to blame a failure on an invalid input model."""
    hidden = onnx.ModelProto()
    hidden.CopyFrom(model)
    try:
        onnx.checker.check_model(_strip(hidden))
    except onnx.checker.ValidationError as e:
        return str(e).splitlines()[0]
    except Exception:  # noqa: BLE001 - the checker cannot tell; do not guess
        return None
    return None


def _strip(model: onnx.ModelProto) -> onnx.ModelProto:
    """In place: main-graph initializers become inputs of the same type and shape, so the checker
    reads no weight (offloaded ones would be refused for their absolute location)."""
    inits = list(model.graph.initializer)
    del model.graph.initializer[:]
    have = {i.name for i in model.graph.input}
    model.graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits if t.name not in have
    )
    return model


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
    d = Path(tempfile.mkdtemp(prefix=f"osc-{files.owner_tag()}-"))
    try:
        p = d / "model.onnx"
        save_model(model, p, check=False)
        yield p
    finally:
        shutil.rmtree(d, ignore_errors=True)
