"""A folder of images, decoded with Pillow and preprocessed per ImageOptions into the model's layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from onnxslim_compress.data.source import DataSource, limited
from onnxslim_compress.data.spec import Feed, InputSpec
from onnxslim_compress.errors import BadInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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
class ImagePlan:
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


def plan_images(specs: list[InputSpec], opts: ImageOptions) -> ImagePlan:
    """Which input the images feed, in which layout and size: ImageOptions checked against the model."""
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

    return ImagePlan(
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


def preprocess_image(pixels: np.ndarray, plan: ImagePlan) -> np.ndarray:
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
        self.plan = plan_images(specs, opts)
        others = [s.name for s in specs if s.name != self.plan.spec.name]
        if others:
            raise BadInputError(
                f"input {others[0]!r} cannot be fed from an image folder (only {self.plan.spec.name!r} can); "
                "use .npz samples for multi-input models"
            )
        self.names = [self.plan.spec.name]
        next(iter(self))

    def _read(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError  # lazy: only image folders need Pillow

        try:
            with Image.open(path) as im:
                im = im.convert("L" if self.plan.channels == 1 else "RGB")
                h, w = self.plan.size
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                return np.asarray(im)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise BadInputError(f"{path}: cannot read image ({e})") from e

    def __len__(self) -> int:
        return limited(len(self.files), self.limit)

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
