"""Reusable argument groups for the subcommands (after Polygraphy's argument groups).

Each group adds its flags to a parser and turns the parsed namespace into the project's own objects,
so every subcommand spells `--target`, `--input-shape` or `--calib` the same way and validates them
the same way.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph.shapes import parse_input_shapes
from onnxslim_compress.runtime.session import Target


class ModelArgs:
    """--input-shape binds dynamic dims (repeatable)."""

    @staticmethod
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--input-shape",
            action="append",
            metavar="NAME:DIMS",
            help="bind an input's dynamic dims, e.g. images:1x3x320x320 (repeatable); unbound dims count as 1",
        )

    @staticmethod
    def shapes(ns: argparse.Namespace) -> dict[str, list[int]]:
        return parse_input_shapes(ns.input_shape)


class TargetArgs:
    """--target and --threads: where the model will be measured/deployed."""

    @staticmethod
    def add(p: argparse.ArgumentParser, *, default_threads: int = 0) -> None:
        p.add_argument("--target", choices=["cpu", "cuda", "tensorrt"], default="cpu", help="execution provider (default: cpu)")
        p.add_argument(
            "--threads", type=int, default=default_threads, help="intra-op threads (0: onnxruntime's default)"
        )

    @staticmethod
    def target(ns: argparse.Namespace) -> Target:
        return Target(kind=ns.target, threads=ns.threads)


@dataclass
class DataFlags:
    dest: str
    help: str


class DataArgs:
    """--calib/--eval/--data plus the image preprocessing options shared by all of them."""

    @staticmethod
    def add(p: argparse.ArgumentParser, *flags: DataFlags) -> None:
        for f in flags:
            p.add_argument(f"--{f.dest}", metavar="PATH", help=f.help)
        g = p.add_argument_group("image folders (used when a data PATH is a folder of images)")
        g.add_argument("--image-size", metavar="HxW", help="resize to HxW, e.g. 224x224 (default: the model's input)")
        g.add_argument("--image-layout", choices=["NCHW", "NHWC"], default=None, help="default: guessed from the input shape")
        g.add_argument("--image-order", choices=["RGB", "BGR"], default="RGB")
        g.add_argument("--image-scale", type=float, default=1 / 255, help="multiply pixels by this first (default 1/255)")
        g.add_argument("--image-mean", metavar="M[,M,M]", help="subtract per channel, after scaling")
        g.add_argument("--image-std", metavar="S[,S,S]", help="divide per channel, after the mean")
        p.add_argument("--num-samples", type=int, default=None, help="use at most this many samples of each data set")

    @staticmethod
    def image_options(ns: argparse.Namespace) -> Any:
        from onnxslim_compress.data import ImageOptions

        def floats(s: str | None, flag: str):
            if s is None:
                return None
            try:
                return tuple(float(x) for x in s.split(","))
            except ValueError:
                raise BadInputError(f"{flag} {s!r}: expected comma-separated numbers") from None

        size = None
        if ns.image_size:
            try:
                h, w = (int(x) for x in ns.image_size.lower().split("x"))
            except ValueError:
                raise BadInputError(f"--image-size {ns.image_size!r}: expected HxW, e.g. 224x224") from None
            size = (h, w)
        kwargs: dict[str, Any] = {"size": size, "channel_order": ns.image_order, "scale": ns.image_scale}
        if ns.image_layout:
            kwargs["layout"] = ns.image_layout
        mean, std = floats(ns.image_mean, "--image-mean"), floats(ns.image_std, "--image-std")
        if mean is not None:
            kwargs["mean"] = mean
        if std is not None:
            kwargs["std"] = std
        return ImageOptions(**kwargs)

    @staticmethod
    def open(ns: argparse.Namespace, dest: str, model, shapes, *, seed: int = 0, required: bool = False):
        from onnxslim_compress.data import open_data

        spec = getattr(ns, dest, None)
        if spec is None and required:
            raise BadInputError(f"--{dest} is required")
        return open_data(
            spec, model, input_shapes=shapes, limit=ns.num_samples, seed=seed, image=DataArgs.image_options(ns)
        )


class OutputArgs:
    @staticmethod
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print a machine-readable JSON report on stdout")
