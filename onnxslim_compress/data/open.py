"""`open_data`: any accepted layout (see the package doc) as a DataSource checked against a model."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxslim_compress.data.arrays import ARRAY_SUFFIXES, ArrayFolderSource, NpzSource, natural_key
from onnxslim_compress.data.generated import DEFAULT_GENERATED_SAMPLES, GeneratedSource
from onnxslim_compress.data.images import IMAGE_SUFFIXES, ImageFolderSource, ImageOptions
from onnxslim_compress.data.source import DataSource, LimitedSource, ListSource, drop_nonfinite_samples
from onnxslim_compress.data.spec import InputSpec, input_specs
from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph.io import load_model
from onnxslim_compress.graph.shapes import ShapeMap


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
    drop_nonfinite: bool = False,
) -> DataSource:
    """Open `spec` as a DataSource checked against `model`'s inputs (see the module doc for layouts).

    `limit` keeps the first samples (deterministic, and streaming: no need to know the whole set);
    it is also the number of generated samples when spec is None (default 8). `seed` only drives
    generation. `image` applies only to folders of images. Arrays read from files or given in
    memory are checked for NaN/Inf as they are read (refuse_nonfinite); with `drop_nonfinite`
    such samples are left out instead, with a warning.
    """
    src = _open_data(spec, model, input_shapes=input_shapes, limit=limit, seed=seed, image=image)
    if drop_nonfinite and isinstance(src, (NpzSource, ArrayFolderSource, ListSource)):
        return drop_nonfinite_samples(src)
    return src


def _open_data(
    spec: str | os.PathLike | DataSource | Iterable[Mapping[str, np.ndarray]] | None,
    model: onnx.ModelProto | str | os.PathLike,
    *,
    input_shapes: ShapeMap | None,
    limit: int | None,
    seed: int,
    image: ImageOptions | None,
) -> DataSource:
    if limit is not None and limit < 1:
        raise BadInputError(f"number of samples must be >= 1, got {limit}")
    m = _as_model(model)
    specs = input_specs(m)
    if isinstance(spec, DataSource):
        return spec if limit is None else LimitedSource(spec, limit)
    if spec is None:
        return GeneratedSource(m, specs, limit or DEFAULT_GENERATED_SAMPLES, input_shapes, seed)
    if isinstance(spec, Mapping):
        if spec and all(isinstance(v, np.ndarray) for v in spec.values()):  # an .npz's layout, in memory
            try:
                return NpzSource(Path("arrays"), specs, limit, arrays=spec)
            except BadInputError as e:
                raise BadInputError(f"data: one dict is read as {{input name: array of samples}}, the layout of an "
                                    f".npz ({e}); for one sample give a list of feed dicts: [feed]") from None
        raise BadInputError("data: got one dict that is not {input name: array of samples}; expected that, "
                            "a list of feed dicts (one per sample) or a path")
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
    arrays = sorted((p for p in entries if p.suffix.lower() in ARRAY_SUFFIXES), key=natural_key)
    images = sorted((p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
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
