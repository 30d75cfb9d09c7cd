"""onnxslim_compress: make .onnx models smaller and faster on the runtime they ship on."""

from __future__ import annotations

import importlib

from onnxslim_compress.errors import AccuracyGateError, BadInputError, CompressError, RecipeError
from onnxslim_compress.graph.io import load_model, save_model
from onnxslim_compress.passes.base import Pass, PassResult, Pipeline
from onnxslim_compress.passes.context import Context
from onnxslim_compress.runtime.session import Target
from onnxslim_compress.version import __version__


def __getattr__(name: str):
    """`onnxslim_compress.search(model, ...)` without importing optuna on every `import onnxslim_compress`."""
    if name == "search":
        return importlib.import_module(".search", __name__)
    if name in ("compress", "flags_pipeline"):  # the compress job (README "pipeline step")
        return getattr(importlib.import_module(".jobs.compress", __name__), name)
    if name == "open_data":
        return importlib.import_module(".data", __name__).open_data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AccuracyGateError",
    "BadInputError",
    "CompressError",
    "Context",
    "Pass",
    "PassResult",
    "Pipeline",
    "RecipeError",
    "Target",
    "__version__",
    "compress",
    "flags_pipeline",
    "load_model",
    "open_data",
    "save_model",
]
