"""Data sets for calibration, evaluation and comparison: feed dicts, one sample at a time.

Every consumer (calibration statistics, fidelity comparison, the accuracy gate of the search) wants
the same thing: a RE-ITERABLE of feed dicts {input_name: np.ndarray}, each array with the model
input's full rank (batch dim included). Calibration passes walk the data several times, so a
`DataSource` starts over on every `iter()`, and it streams: a folder is read one file per sample,
and a big single .npz is memory-mapped where its members are stored uncompressed, so a 10 GB
calibration set is never read into memory at once.

Accepted layouts (`open_data`):
  * one .npz with a leading sample axis per input name (rank = input rank + 1), or rank = input
    rank, meaning each row along axis 0 is one sample (given a batch dim of 1);
  * one .npy, the same for a single-input model;
  * a folder of per-sample .npz files ({name: array}) or .npy files (single-input models), in
    natural name order (sample_2 before sample_10, so an unpadded numbering still matches a label
    file); a sample missing only the batch dim gets one added;
  * a folder of images, preprocessed per `ImageOptions` (needs Pillow);
  * None: inputs generated from the model signature. This is a WEAK fallback: it exercises the
    graph but carries none of the real data's statistics, so calibration or accuracy numbers
    computed on it say little about real inputs.

Every problem with the data is a BadInputError whose one line names the input and what was
expected, so the CLI can print it and exit 2.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph.index import Constants, attr, node_links
from onnxslim_compress.graph.io import load_model
from onnxslim_compress.graph.shapes import ShapeMap, bind_input_shapes, dims_of, graph_inputs

Feed = dict[str, np.ndarray]

#: samples generated when no data is given and no limit says otherwise
DEFAULT_GENERATED_SAMPLES = 8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
ARRAY_SUFFIXES = (".npz", ".npy")


# --------------------------------------------------------------------------------------------------
# What the model expects, and conforming arrays to it
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, dims (int where static, a symbol or '?' where not; None if unknown), dtype."""

    name: str
    dims: tuple[int | str, ...] | None
    dtype: np.dtype

    @property
    def rank(self) -> int | None:
        return None if self.dims is None else len(self.dims)

    def shape_text(self) -> str:
        return "[?]" if self.dims is None else "[" + ", ".join(str(d) for d in self.dims) + "]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that need feeding (initializer-backed inputs excluded), in graph order."""
    specs = []
    for vi in graph_inputs(model):
        if not vi.type.HasField("tensor_type"):
            raise BadInputError(f"input {vi.name!r}: only tensor inputs are supported (sequence/map/optional given)")
        tt = vi.type.tensor_type
        dims = tuple(dims_of(vi)) if tt.HasField("shape") else None
        if tt.elem_type == onnx.TensorProto.UNDEFINED:
            dtype = np.dtype(np.float32)
        else:
            try:
                dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
            except (KeyError, TypeError, ValueError):
                raise BadInputError(
                    f"input {vi.name!r}: element type {onnx.TensorProto.DataType.Name(tt.elem_type)} has no numpy "
                    "equivalent; such an input cannot be fed from data files"
                ) from None
        specs.append(InputSpec(vi.name, dims, dtype))
    return specs


def _kind(dtype: np.dtype) -> str:
    """float / int / bool / other: the kinds that may be converted into one another silently."""
    if dtype.kind == "f":
        return "float"
    if dtype.kind in "iu":
        return "int"
    if dtype.kind == "b":
        return "bool"
    return dtype.kind


def _check_shape(spec: InputSpec, shape: tuple[int, ...], where: str) -> None:
    """Rank and every static dim must match; dynamic dims accept anything."""
    if spec.dims is None:
        return
    if len(shape) != len(spec.dims):
        raise BadInputError(
            f"input {spec.name!r}{where}: rank {len(shape)} (shape {list(shape)}), "
            f"the model expects rank {len(spec.dims)} {spec.shape_text()}"
        )
    for k, (d, s) in enumerate(zip(spec.dims, shape, strict=True)):
        if isinstance(d, int) and d > 0 and d != s:
            raise BadInputError(
                f"input {spec.name!r}{where}: shape {list(shape)} does not fit the model's {spec.shape_text()} "
                f"(dim {k} is {s}, the model fixes {d})"
            )


def _check_dtype(spec: InputSpec, dtype: np.dtype, where: str) -> np.dtype | None:
    """The dtype to cast to (None: no cast). Only casts within a kind (float64->float32, int32->int64)."""
    dtype = np.dtype(dtype)
    if dtype == spec.dtype:
        return None
    if _kind(dtype) != _kind(spec.dtype) or _kind(dtype) not in ("float", "int"):
        raise BadInputError(
            f"input {spec.name!r}{where}: dtype {dtype} given, the model expects {spec.dtype} "
            f"({_kind(spec.dtype)} values; convert the data first)"
        )
    return spec.dtype


def _cast(spec: InputSpec, arr: np.ndarray, to: np.dtype | None, where: str) -> np.ndarray:
    """Apply the cast chosen by _check_dtype; an integer narrowing must not wrap values around."""
    if to is None:
        return arr
    if to.kind in "iu" and not np.can_cast(arr.dtype, to, casting="safe") and arr.size:
        info = np.iinfo(to)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise BadInputError(
                f"input {spec.name!r}{where}: values in [{lo}, {hi}] do not fit the model's {to}"
            )
    return arr.astype(to)


def _conform(spec: InputSpec, arr: np.ndarray, where: str, *, add_batch: bool = True) -> np.ndarray:
    """Check one sample's array against the input and return it in the model's dtype.

    A sample one rank short gets a leading batch dim of 1 when the model's dim 0 allows it: per-sample
    files written as `x[i]` instead of `x[i:i+1]` are the most common slip and unambiguous.
    """
    arr = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    if (
        add_batch
        and spec.dims is not None
        and arr.ndim == len(spec.dims) - 1
        and not (isinstance(spec.dims[0], int) and spec.dims[0] > 1)
    ):
        arr = arr[None]
    _check_shape(spec, arr.shape, where)
    arr = _cast(spec, arr, _check_dtype(spec, arr.dtype, where), where)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def _match_names(specs: list[InputSpec], names: Iterable[str], where: str) -> None:
    """Every model input must be present; extra names are ignored unless none match at all."""
    have = set(names)
    wanted = [s.name for s in specs]
    if wanted and not have & set(wanted):
        raise BadInputError(
            f"data{where} has arrays {sorted(have)}, none of which is a model input (inputs: {wanted})"
        )
    for s in specs:
        if s.name not in have:
            raise BadInputError(f"input {s.name!r} is missing from the data{where} (it has: {sorted(have)})")


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


class DataSource:
    """A re-iterable of feed dicts: each `iter()` starts over from the first sample.

    `names` are the model inputs every feed carries; `len()` is the number of samples an iteration
    yields (after any limit); `describe()` is one line for reports.
    """

    names: list[str]

    def __iter__(self) -> Iterator[Feed]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def _limited(n: int, limit: int | None) -> int:
    return n if limit is None else min(n, limit)


class _NpzMember:
    """One array of a single-file data set: memory-mapped if stored, else decompressed once on first use."""

    def __init__(self, path: Path, info: zipfile.ZipInfo | None):
        self.path = path
        self.info = info
        self._array: np.ndarray | None = None
        self.mapped = False
        if info is None:  # filled in by of_array
            return
        self.key = info.filename[:-4]
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            mapped = _memmap_stored_member(path, info)
            if mapped is not None:
                self._array = mapped
                self.mapped = True
        if self._array is None:
            self.shape, self.dtype = _member_header(path, info)
        else:
            self.shape, self.dtype = self._array.shape, self._array.dtype

    @classmethod
    def of_array(cls, path: Path, key: str, arr: np.ndarray) -> _NpzMember:
        """A member for an array already opened (a plain .npy, memory-mapped by np.load)."""
        m = cls(path, None)
        m.key, m._array, m.mapped = key, arr, isinstance(arr, np.memmap)
        m.shape, m.dtype = arr.shape, arr.dtype
        return m

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    self._array = z[self.key]
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
                raise BadInputError(f"{self.path}: cannot read array {self.key!r} ({e})") from e
        return self._array


def _read_npy_header(fp) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """(shape, fortran_order, dtype) from an .npy stream positioned at its magic; None for format 3.0."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    return None


def _memmap_stored_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Map an uncompressed .npy member of a zip in place: its bytes sit contiguously in the file.

    The data starts after the zip local header (30 bytes + name + extra field, whose length can
    differ from the central directory's copy, so it is read from the local header itself) and the
    .npy header. Object arrays and .npy format 3.0 are not mapped (None: the caller loads them).
    """
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise BadInputError(f"{path}: corrupt zip entry {info.filename!r}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        header = _read_npy_header(f)
        if header is None:
            return None
        shape, fortran, dtype = header
        offset = f.tell()
    if dtype.hasobject:
        return None
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)


def _member_header(path: Path, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a compressed member, decompressing only its header."""
    with zipfile.ZipFile(path) as zf, zf.open(info) as fp:
        header = _read_npy_header(fp)
    if header is None:
        with np.load(path, allow_pickle=False) as z:
            a = z[info.filename[:-4]]
        return a.shape, a.dtype
    return header[0], header[2]


class NpzSource(DataSource):
    """One .npz (or .npy) holding every sample: a leading sample axis per input name.

    An array of rank input+1 is indexed along its sample axis; an array of the input's own rank is
    read row by row, each row given a batch dim of 1 (`x[i:i+1]`), which keeps memmap backing.
    """

    def __init__(self, path: Path, specs: list[InputSpec], limit: int | None = None):
        self.path = path
        self.specs = specs
        self.names = [s.name for s in specs]
        self.limit = limit
        self.members: dict[str, _NpzMember] = {}
        try:
            if path.suffix.lower() == ".npy":
                self._open_npy()
            else:
                with zipfile.ZipFile(path) as zf:
                    infos = [i for i in zf.infolist() if i.filename.endswith(".npy")]
                for info in infos:
                    m = _NpzMember(path, info)
                    self.members[m.key] = m
        except BadInputError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, struct.error) as e:
            raise BadInputError(f"{path}: cannot read ({e})") from e
        _match_names(specs, self.members, f" in {path.name}")
        self.modes: dict[str, str] = {}
        self.casts: dict[str, np.dtype | None] = {}
        counts: dict[str, int] = {}
        for s in specs:
            m = self.members[s.name]
            where = f" in {path.name}"
            if len(m.shape) == 0:
                raise BadInputError(f"input {s.name!r}{where}: a scalar array has no sample axis")
            if s.rank is not None and len(m.shape) == s.rank and s.rank > 0:
                mode, sample_shape = "rows", (1, *m.shape[1:])
            elif s.rank is None or len(m.shape) == s.rank + 1:
                mode, sample_shape = "axis", tuple(m.shape[1:])
            else:
                raise BadInputError(
                    f"input {s.name!r}{where}: array of rank {len(m.shape)} (shape {list(m.shape)}); expected rank "
                    f"{s.rank + 1} (a sample axis, then {s.shape_text()}) or rank {s.rank} (one row per sample)"
                )
            _check_shape(s, sample_shape, where + " (one sample)")
            self.casts[s.name] = _check_dtype(s, m.dtype, where)
            self.modes[s.name] = mode
            counts[s.name] = m.shape[0]
        if len(set(counts.values())) > 1:
            (a, na), (b, nb) = min(counts.items(), key=lambda kv: kv[1]), max(counts.items(), key=lambda kv: kv[1])
            raise BadInputError(f"input {a!r} in {path.name} has {na} samples but {b!r} has {nb}; they must agree")
        self.count = next(iter(counts.values()), 0)
        if self.count == 0:
            raise BadInputError(f"{path}: holds no samples")

    def _open_npy(self) -> None:
        if len(self.specs) != 1:
            raise BadInputError(
                f"{self.path}: one .npy feeds a single input; the model has inputs {[s.name for s in self.specs]} "
                "(use an .npz with one array per input name)"
            )
        arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self.members[self.specs[0].name] = _NpzMember.of_array(self.path, self.specs[0].name, arr)

    @property
    def memory_mapped(self) -> dict[str, bool]:
        """Which inputs are served straight from the file (stored members) rather than loaded."""
        return {n: self.members[n].mapped for n in self.names}

    def __len__(self) -> int:
        return _limited(self.count, self.limit)

    def __iter__(self) -> Iterator[Feed]:
        arrays = {s.name: self.members[s.name].array for s in self.specs}
        for i in range(len(self)):
            feed: Feed = {}
            for s in self.specs:
                a = arrays[s.name]
                x = a[i : i + 1] if self.modes[s.name] == "rows" else a[i]
                x = _cast(s, x, self.casts[s.name], f" in {self.path.name} (sample {i})")
                if not x.flags.c_contiguous:
                    x = np.ascontiguousarray(x)
                feed[s.name] = x
            yield feed

    def describe(self) -> str:
        mapped = sum(self.memory_mapped.values())
        how = f", {mapped}/{len(self.names)} arrays memory-mapped" if mapped else ""
        return f"{self.path} ({len(self)} of {self.count} samples{how})"


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


class ArrayFolderSource(DataSource):
    """A folder of per-sample .npz ({name: array}) or .npy (single-input) files, read one at a time."""

    def __init__(self, folder: Path, files: list[Path], specs: list[InputSpec], limit: int | None = None):
        self.folder = folder
        self.files = files
        self.specs = specs
        self.names = [s.name for s in specs]
        self.limit = limit
        suffixes = {f.suffix.lower() for f in files}
        if ".npy" in suffixes and len(specs) != 1:
            raise BadInputError(
                f"{folder}: .npy files feed a single input; the model has inputs {self.names} "
                "(use .npz files with one array per input name)"
            )
        # Fail before any expensive work if the first sample does not fit.
        next(iter(self))

    def _read(self, path: Path) -> dict[str, np.ndarray]:
        try:
            if path.suffix.lower() == ".npy":
                return {self.specs[0].name: np.load(path, allow_pickle=False)}
            with np.load(path, allow_pickle=False) as z:
                _match_names(self.specs, z.files, f" in {path.name}")
                return {s.name: z[s.name] for s in self.specs}
        except BadInputError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise BadInputError(f"{path}: cannot read ({e})") from e

    def __len__(self) -> int:
        return _limited(len(self.files), self.limit)

    def __iter__(self) -> Iterator[Feed]:
        for path in self.files[: len(self)]:
            raw = self._read(path)
            yield {s.name: _conform(s, raw[s.name], f" in {path.name}") for s in self.specs}

    def describe(self) -> str:
        kinds = "/".join(sorted({f.suffix.lower() for f in self.files}))
        return f"{self.folder}/ ({len(self)} of {len(self.files)} {kinds} samples)"


class ListSource(DataSource):
    """Feeds given in memory (the Python API); each is checked and converted once up front."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], specs: list[InputSpec], limit: int | None = None):
        self.specs = specs
        self.names = [s.name for s in specs]
        n = _limited(len(feeds), limit)
        if n == 0:
            raise BadInputError("the data holds no samples")
        self.feeds = []
        for i, f in enumerate(feeds[:n]):
            if not isinstance(f, Mapping):
                raise BadInputError(f"sample {i}: expected a dict {{input name: array}}, got {type(f).__name__}")
            _match_names(specs, f, f" (sample {i})")
            self.feeds.append({s.name: _conform(s, np.asarray(f[s.name]), f" (sample {i})") for s in specs})

    def __len__(self) -> int:
        return len(self.feeds)

    def __iter__(self) -> Iterator[Feed]:
        return iter(self.feeds)

    def describe(self) -> str:
        return f"{len(self.feeds)} samples given in memory"


class _LimitedSource(DataSource):
    def __init__(self, inner: DataSource, limit: int):
        self.inner, self.limit = inner, limit
        self.names = list(inner.names)

    def __len__(self) -> int:
        return min(len(self.inner), self.limit)

    def __iter__(self) -> Iterator[Feed]:
        for k, feed in enumerate(self.inner):
            if k >= self.limit:
                return
            yield feed

    def describe(self) -> str:
        return f"first {len(self)} of {self.inner.describe()}"


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageOptions:
    """How a folder of images becomes input tensors.

    Per pixel: x = pixel * scale, then (x - mean) / std per channel (torchvision's convention, so
    ImageNet models take scale=1/255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).
    Images are resized (bilinear, aspect ratio not kept, no crop) to `size`; a pipeline with a
    center crop should be applied beforehand and saved as .npz. None fields are derived from the
    model input: size from its static H and W, layout from where the 1- or 3-channel dim sits,
    grayscale from a channel count of 1. Integer-typed image inputs (uint8 models normalize
    internally) get the raw pixels: scale, mean and std are not applied.
    """

    size: tuple[int, int] | None = None
    layout: Literal["NCHW", "NHWC"] | None = None
    channel_order: Literal["RGB", "BGR"] = "RGB"
    grayscale: bool | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_name: str | None = None

    def __post_init__(self):
        if self.layout not in (None, "NCHW", "NHWC"):
            raise BadInputError(f"image layout {self.layout!r}: choose NCHW or NHWC")
        if self.channel_order not in ("RGB", "BGR"):
            raise BadInputError(f"image channel order {self.channel_order!r}: choose RGB or BGR")
        if self.size is not None and (len(self.size) != 2 or any(int(v) <= 0 for v in self.size)):
            raise BadInputError(f"image size {self.size!r}: expected (height, width), both positive")
        if self.std is not None and any(v == 0 for v in self.std):
            raise BadInputError(f"image std {self.std!r}: must not contain 0")


@dataclass(frozen=True)
class _ImagePlan:
    """ImageOptions resolved against one model input."""

    spec: InputSpec
    size: tuple[int, int]
    layout: str
    channels: int
    bgr: bool
    scale: float
    mean: np.ndarray
    std: np.ndarray
    normalize: bool


def _plan_images(specs: list[InputSpec], opts: ImageOptions) -> _ImagePlan:
    if opts.input_name is not None:
        found = [s for s in specs if s.name == opts.input_name]
        if not found:
            raise BadInputError(
                f"image input {opts.input_name!r} is not a model input (inputs: {[s.name for s in specs]})"
            )
        spec = found[0]
    else:
        rank4 = [s for s in specs if s.rank == 4]
        if len(specs) == 1:
            spec = specs[0]
        elif len(rank4) == 1:
            spec = rank4[0]
        else:
            raise BadInputError(
                f"a folder of images feeds one input; the model has inputs {[s.name for s in specs]}: "
                "name the image input (ImageOptions.input_name)"
            )
    if spec.rank is not None and spec.rank != 4:
        raise BadInputError(f"input {spec.name!r}: images need a rank-4 input, the model's is {spec.shape_text()}")
    dims = spec.dims or ("?", "?", "?", "?")

    def static(d) -> int | None:
        return d if isinstance(d, int) and d > 0 else None

    layout = opts.layout
    if layout is None:
        layout = "NHWC" if static(dims[3]) in (1, 3) and static(dims[1]) not in (1, 3) else "NCHW"
    c_dim, h_dim, w_dim = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    channels = static(c_dim)
    if opts.grayscale is not None:
        want = 1 if opts.grayscale else 3
        if channels is not None and channels != want:
            raise BadInputError(
                f"input {spec.name!r}: grayscale={opts.grayscale} gives {want} channel(s), the model's "
                f"{layout} input {spec.shape_text()} has {channels}"
            )
        channels = want
    channels = channels or 3
    if channels not in (1, 3):
        raise BadInputError(f"input {spec.name!r}: {channels} channels in {layout} {spec.shape_text()}; images give 1 or 3")
    if opts.size is not None:
        size = (int(opts.size[0]), int(opts.size[1]))
    elif static(h_dim) and static(w_dim):
        size = (int(h_dim), int(w_dim))
    else:
        raise BadInputError(
            f"input {spec.name!r} has dynamic height/width {spec.shape_text()}: give the image size (HxW)"
        )

    def per_channel(v, what: str, default: float) -> np.ndarray:
        if v is None:
            return np.full(channels, default, dtype=np.float32)
        v = np.asarray(v, dtype=np.float32).reshape(-1)
        if v.size == 1:
            return np.full(channels, v[0], dtype=np.float32)
        if v.size != channels:
            raise BadInputError(f"input {spec.name!r}: image {what} has {v.size} values for {channels} channels")
        return v

    return _ImagePlan(
        spec=spec,
        size=size,
        layout=layout,
        channels=channels,
        bgr=opts.channel_order == "BGR",
        scale=float(opts.scale),
        mean=per_channel(opts.mean, "mean", 0.0),
        std=per_channel(opts.std, "std", 1.0),
        normalize=spec.dtype.kind == "f",
    )


def preprocess_image(pixels: np.ndarray, plan: _ImagePlan) -> np.ndarray:
    """HxW or HxWxC pixels (already at plan.size, RGB) -> one sample with batch dim, in the input's dtype."""
    x = np.asarray(pixels)
    if x.ndim == 2:
        x = x[:, :, None]
    if plan.bgr and x.shape[2] == 3:
        x = x[:, :, ::-1]
    if plan.normalize:
        x = (x.astype(np.float32) * plan.scale - plan.mean) / plan.std
        x = x.astype(plan.spec.dtype)
    else:
        info = np.iinfo(plan.spec.dtype)
        x = np.clip(np.rint(x), info.min, info.max).astype(plan.spec.dtype)
    if plan.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])


class ImageFolderSource(DataSource):
    """A folder of images, decoded and preprocessed one at a time (Pillow does the decoding)."""

    def __init__(self, folder: Path, files: list[Path], specs: list[InputSpec], opts: ImageOptions,
                 limit: int | None = None):
        try:
            from PIL import Image  # noqa: F401 - only checking it is there
        except ImportError:
            raise BadInputError(
                f"{folder}: reading images needs Pillow (pip install Pillow); "
                "or save the preprocessed inputs as .npz/.npy"
            ) from None
        self.folder, self.files, self.limit, self.opts = folder, files, limit, opts
        self.plan = _plan_images(specs, opts)
        others = [s.name for s in specs if s.name != self.plan.spec.name]
        if others:
            raise BadInputError(
                f"input {others[0]!r} cannot be fed from an image folder (only {self.plan.spec.name!r} can); "
                "use .npz samples for multi-input models"
            )
        self.names = [self.plan.spec.name]
        next(iter(self))

    def _read(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im = im.convert("L" if self.plan.channels == 1 else "RGB")
                h, w = self.plan.size
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                return np.asarray(im)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise BadInputError(f"{path}: cannot read image ({e})") from e

    def __len__(self) -> int:
        return _limited(len(self.files), self.limit)

    def __iter__(self) -> Iterator[Feed]:
        for path in self.files[: len(self)]:
            yield {self.plan.spec.name: preprocess_image(self._read(path), self.plan)}

    def describe(self) -> str:
        p = self.plan
        norm = (
            f"x*{p.scale:g}, mean {p.mean.tolist()}, std {p.std.tolist()}" if p.normalize else "raw pixels"
        )
        return (
            f"{self.folder}/ ({len(self)} of {len(self.files)} images -> {p.spec.name} {p.layout} "
            f"{p.size[0]}x{p.size[1]}x{p.channels} {'BGR' if p.bgr else 'RGB'}, {norm})"
        )


# --------------------------------------------------------------------------------------------------
# Generated inputs (weak fallback)
# --------------------------------------------------------------------------------------------------

#: Ops that pass an input's VALUES through unchanged (a subset or a re-shaping of them) from input 0;
#: following them finds where an integer input is finally used.
_VALUE_PRESERVING = frozenset(
    {"Cast", "CastLike", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Transpose", "Slice", "Tile"}
)
#: Ops through which a constant table reaches a Gather's data input (dtype changes, dequantization).
_TABLE_PRODUCERS = frozenset({"Identity", "Cast", "DequantizeLinear"})
#: Ops that use an integer input's values as numbers or conditions: masks (1 = keep) are what such
#: inputs carry in exported transformers, and ones are the neutral value for all of them.
_MASK_USERS = frozenset(
    {"Mul", "Sub", "Add", "Where", "Not", "And", "Or", "Xor", "Equal", "Less", "Greater", "LessOrEqual",
     "GreaterOrEqual", "CumSum", "ReduceSum", "ReduceMax", "ReduceMin"}
)


@dataclass(frozen=True)
class GenRule:
    """How one input is generated, and why (shown by describe())."""

    kind: Literal["normal", "index", "ones", "uniform"]
    high: int = 0
    reason: str = ""


def _input_rules(model: onnx.ModelProto, specs: list[InputSpec]) -> dict[str, GenRule]:
    """Decide each input's generator from how the graph uses it; names only as a last resort."""
    g = model.graph
    nodes = list(g.node)
    prod, slots = node_links(nodes)
    producer = {name: nodes[i] for name, i in prod.items()}
    consumers = {name: [(nodes[i], k) for i, k in s] for name, s in slots.items()}
    const_shapes = {name: tuple(t.dims) for name, t in Constants(g).tensors.items()}

    def table_shape(name: str, depth: int = 0) -> tuple[int, ...] | None:
        if name in const_shapes:
            return const_shapes[name]
        node = producer.get(name)
        if node is not None and node.op_type in _TABLE_PRODUCERS and depth < 8:
            return table_shape(node.input[0], depth + 1)
        return None

    def uses(name: str) -> tuple[list[tuple[int, str]], list[str]]:
        """(Gather table bounds with table names, mask-like op types) reached from `name`."""
        bounds: list[tuple[int, str]] = []
        masks: list[str] = []
        seen: set[str] = set()
        stack = [name]
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            for node, k in consumers.get(t, []):
                if node.op_type in _VALUE_PRESERVING and k == 0:
                    stack.extend(o for o in node.output if o)
                elif node.op_type == "Gather" and k == 1:
                    shape = table_shape(node.input[0])
                    if shape:
                        axis = attr(node, "axis", 0)
                        axis = axis + len(shape) if axis < 0 else axis
                        if 0 <= axis < len(shape) and shape[axis] > 0:
                            bounds.append((int(shape[axis]), node.input[0]))
                elif node.op_type in _MASK_USERS:
                    masks.append(node.op_type)
        return bounds, masks

    rules: dict[str, GenRule] = {}
    for s in specs:
        if s.dtype.kind == "f":
            rules[s.name] = GenRule("normal", reason="float: N(0, 1)")
            continue
        if s.dtype.kind == "b":
            rules[s.name] = GenRule("ones", reason="bool: all True")
            continue
        if s.dtype.kind not in "iu":
            raise BadInputError(f"input {s.name!r}: cannot generate {s.dtype} values; give data")
        bounds, masks = uses(s.name)
        if bounds:
            high, table = min(bounds)
            rules[s.name] = GenRule("index", high=high, reason=f"Gather indices into {table!r}: uniform [0, {high})")
        elif masks:
            rules[s.name] = GenRule("ones", reason=f"mask-like (used by {sorted(set(masks))[0]}): ones")
        elif "mask" in s.name.lower():
            rules[s.name] = GenRule("ones", reason="named like a mask: ones")
        elif s.dtype.itemsize == 1:
            rules[s.name] = GenRule("uniform", reason=f"{s.dtype} data: uniform over its range")
        else:
            rules[s.name] = GenRule("ones", reason="integer of unknown use: ones")
    return rules


class GeneratedSource(DataSource):
    """Inputs made up from the model signature: a weak fallback when no data is given.

    Deterministic for a seed, and the same on every iteration (the generator restarts).
    """

    def __init__(self, model: onnx.ModelProto, specs: list[InputSpec], count: int,
                 input_shapes: ShapeMap | None = None, seed: int = 0):
        self.specs = specs
        self.names = [s.name for s in specs]
        self.count = count
        self.seed = seed
        bound = bind_input_shapes(model, input_shapes)
        self.shapes = {n: tuple(bound.inputs[n]) for n in self.names}
        self.assumed = list(bound.assumed)
        self.rules = _input_rules(model, specs)

    def __len__(self) -> int:
        return self.count

    def _make(self, spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
        shape, rule = self.shapes[spec.name], self.rules[spec.name]
        if rule.kind == "normal":
            return rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype)
        if rule.kind == "index":
            return rng.integers(0, rule.high, size=shape).astype(spec.dtype)
        if rule.kind == "uniform":
            info = np.iinfo(spec.dtype)
            return rng.integers(info.min, int(info.max) + 1, size=shape).astype(spec.dtype)
        return np.ones(shape, dtype=spec.dtype)

    def __iter__(self) -> Iterator[Feed]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.count):
            yield {s.name: self._make(s, rng) for s in self.specs}

    def describe(self) -> str:
        parts = [
            f"{s.name} {s.dtype} {list(self.shapes[s.name])} {self.rules[s.name].reason}" for s in self.specs
        ]
        dyn = f"; dynamic dims assumed: {', '.join(self.assumed)}" if self.assumed else ""
        return f"{self.count} generated samples (weak fallback, seed {self.seed}): " + "; ".join(parts) + dyn


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def _as_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model

    # Only the graph is needed (input signature, initializer dims): skip external weights.
    return load_model(model, load_external_data=False)


def open_data(
    spec: str | os.PathLike | DataSource | Iterable[Mapping[str, np.ndarray]] | None,
    model: onnx.ModelProto | str | os.PathLike,
    *,
    input_shapes: ShapeMap | None = None,
    limit: int | None = None,
    seed: int = 0,
    image: ImageOptions | None = None,
) -> DataSource:
    """Open `spec` as a DataSource checked against `model`'s inputs (see the module doc for layouts).

    `limit` keeps the first samples (deterministic, and streaming: no need to know the whole set);
    it is also the number of generated samples when spec is None (default 8). `seed` only drives
    generation. `image` applies only to folders of images.
    """
    if limit is not None and limit < 1:
        raise BadInputError(f"number of samples must be >= 1, got {limit}")
    m = _as_model(model)
    specs = input_specs(m)
    if isinstance(spec, DataSource):
        return spec if limit is None else _LimitedSource(spec, limit)
    if spec is None:
        return GeneratedSource(m, specs, limit or DEFAULT_GENERATED_SAMPLES, input_shapes, seed)
    if isinstance(spec, Mapping):
        raise BadInputError("data: got one dict; expected a list of feed dicts (one per sample) or a path")
    if isinstance(spec, Iterable) and not isinstance(spec, (str, bytes, os.PathLike)):
        # A generator cannot be re-iterated: materialize it (in-memory data is small by nature).
        return ListSource(spec if isinstance(spec, Sequence) else list(spec), specs, limit)
    if not isinstance(spec, (str, os.PathLike)):
        raise BadInputError(f"data: expected a path, a DataSource or feed dicts, got {type(spec).__name__}")
    path = Path(spec)
    if not path.exists():
        raise BadInputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _open_folder(path, specs, limit, image)
    if path.suffix.lower() in (".npz", ".npy"):
        return NpzSource(path, specs, limit)
    raise BadInputError(f"{path}: expected an .npz or .npy file or a folder of samples or images")


def _open_folder(path: Path, specs: list[InputSpec], limit: int | None, image: ImageOptions | None) -> DataSource:
    try:
        listing = [p for p in path.iterdir() if not p.name.startswith(".")]
    except OSError as e:
        raise BadInputError(f"{path}: cannot list folder ({e.strerror or e})") from e
    entries = [p for p in listing if p.is_file()]
    arrays = sorted((p for p in entries if p.suffix.lower() in ARRAY_SUFFIXES), key=_natural_key)
    images = sorted((p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if arrays and images:
        raise BadInputError(f"{path}: mixes array files ({arrays[0].name}) and images ({images[0].name}); keep one kind")
    if {p.suffix.lower() for p in arrays} == {".npz", ".npy"}:
        raise BadInputError(f"{path}: mixes .npz and .npy samples; keep one kind")
    if arrays:
        return ArrayFolderSource(path, arrays, specs, limit)
    if images:
        return ImageFolderSource(path, images, specs, image or ImageOptions(), limit)
    if any(p.is_dir() for p in listing):
        raise BadInputError(
            f"{path}: no .npz, .npy or image files, only subfolders (class-per-folder layouts are not read: "
            "put the samples in one folder and give labels in a file)"
        )
    raise BadInputError(f"{path}: empty folder (no .npz, .npy or image files)")


def load_labels(path: str | os.PathLike) -> np.ndarray:
    """Class labels, one per sample: an .npy array, or a .txt/.csv file with one integer per line.

    A non-numeric first line of a .csv is taken as a header and skipped; a line with several
    comma-separated fields is an error (which column would be the label is a guess).
    """
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: no such labels file")
    if p.suffix.lower() == ".npy":
        try:
            labels = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInputError(f"{p}: cannot read labels ({e})") from e
        if labels.dtype.kind == "f" and labels.ndim == 1 and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        return labels
    try:
        lines = [ln.strip() for ln in p.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"{p}: cannot read labels ({e})") from e
    lines = [ln for ln in lines if ln]
    out: list[int] = []
    for k, ln in enumerate(lines):
        if "," in ln:
            raise BadInputError(f"{p}: line {k + 1} has several fields ({ln!r}); expected one label per line")
        try:
            v = float(ln)
        except ValueError:
            if k == 0 and p.suffix.lower() == ".csv":
                continue
            raise BadInputError(f"{p}: line {k + 1} ({ln!r}) is not an integer class label") from None
        if v != int(v):
            raise BadInputError(f"{p}: line {k + 1} ({ln!r}) is not an integer class label")
        out.append(int(v))
    if not out:
        raise BadInputError(f"{p}: no labels")
    return np.asarray(out, dtype=np.int64)
