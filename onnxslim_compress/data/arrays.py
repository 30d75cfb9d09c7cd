"""Arrays on disk: one .npz/.npy (memory-mapped where stored uncompressed), or a folder of
per-sample .npz/.npy files in natural name order.
"""

from __future__ import annotations

import re
import struct
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from onnxslim_compress.data.source import DataSource, limited, refuse_nonfinite
from onnxslim_compress.data.spec import (
    Feed,
    InputSpec,
    cast_to,
    check_dtype,
    check_shape,
    conform,
    match_names,
)
from onnxslim_compress.errors import BadInputError

ARRAY_SUFFIXES = (".npz", ".npy")


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

    def __init__(self, path: Path, specs: list[InputSpec], limit: int | None = None,
                 arrays: Mapping[str, np.ndarray] | None = None):
        """`arrays` ({input name: array}, the layout of an .npz, in memory): what np.load(path)
        would give; `path` then only names the data in messages."""
        self.path = path
        self.specs = specs
        self.names = [s.name for s in specs]
        self.limit = limit
        self.members: dict[str, _NpzMember] = {}
        try:
            if arrays is not None:
                for k, a in arrays.items():
                    self.members[str(k)] = _NpzMember.of_array(path, str(k), np.asarray(a))
            elif path.suffix.lower() == ".npy":
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
        match_names(specs, self.members, f" in {path.name}")
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
            check_shape(s, sample_shape, where + " (one sample)")
            self.casts[s.name] = check_dtype(s, m.dtype, where)
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
        return limited(self.count, self.limit)

    def __iter__(self) -> Iterator[Feed]:
        arrays = {s.name: self.members[s.name].array for s in self.specs}
        for i in range(len(self)):
            feed: Feed = {}
            for s in self.specs:
                a = arrays[s.name]
                x = a[i : i + 1] if self.modes[s.name] == "rows" else a[i]
                if not isinstance(x, np.ndarray):  # a rank-0 input's a[i] is a numpy scalar: ORT refuses it
                    x = np.asarray(x)
                x = cast_to(s, x, self.casts[s.name], f" in {self.path.name} (sample {i})")
                if not x.flags.c_contiguous:
                    x = np.ascontiguousarray(x)
                feed[s.name] = x
            if not self.allow_nonfinite:
                refuse_nonfinite(feed, self, i)
            yield feed

    def where(self, i: int) -> str:
        return f"{self.path.name} (sample {i})"

    def describe(self) -> str:
        mapped = sum(self.memory_mapped.values())
        how = f", {mapped}/{len(self.names)} arrays memory-mapped" if mapped else ""
        return f"{self.path} ({len(self)} of {self.count} samples{how})"


def natural_key(p: Path) -> list:
    """Sort key putting sample_2 before sample_10, so an unpadded numbering still matches a label file."""
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
        # Fail before any expensive work if the first sample does not fit. Its values are checked
        # when iterated (a NaN there may be dropped: open_data(drop_nonfinite=True)).
        self.allow_nonfinite = True
        next(iter(self))
        del self.allow_nonfinite

    def _read(self, path: Path) -> dict[str, np.ndarray]:
        try:
            if path.suffix.lower() == ".npy":
                return {self.specs[0].name: np.load(path, allow_pickle=False)}
            with np.load(path, allow_pickle=False) as z:
                match_names(self.specs, z.files, f" in {path.name}")
                return {s.name: z[s.name] for s in self.specs}
        except BadInputError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise BadInputError(f"{path}: cannot read ({e})") from e

    def __len__(self) -> int:
        return limited(len(self.files), self.limit)

    def __iter__(self) -> Iterator[Feed]:
        for i, path in enumerate(self.files[: len(self)]):
            raw = self._read(path)
            feed = {s.name: conform(s, raw[s.name], f" in {path.name}") for s in self.specs}
            if not self.allow_nonfinite:
                refuse_nonfinite(feed, self, i)
            yield feed

    def where(self, i: int) -> str:
        return f"{self.files[i].name} (sample {i})"

    def describe(self) -> str:
        kinds = "/".join(sorted({f.suffix.lower() for f in self.files}))
        return f"{self.folder}/ ({len(self)} of {len(self.files)} {kinds} samples)"
