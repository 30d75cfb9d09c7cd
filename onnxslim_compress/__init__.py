"""onnxslim_compress: make .onnx models smaller and faster on the runtime they ship on."""

from __future__ import annotations

import importlib

from onnxslim_compress.errors import AccuracyGateError, BadInputError, CompressError, RecipeError
from onnxslim_compress.version import __version__

#: the rest of the API, imported on first use: `import onnxslim_compress` (and so the CLI's start)
#: does not pay for onnx and onnxruntime before it can handle Ctrl-C
_LAZY = {
    "load_model": "onnxslim_compress.graph.io",
    "save_model": "onnxslim_compress.graph.io",
    "Pass": "onnxslim_compress.passes.base",
    "PassResult": "onnxslim_compress.passes.base",
    "Pipeline": "onnxslim_compress.passes.base",
    "Context": "onnxslim_compress.passes.context",
    "Target": "onnxslim_compress.runtime.session",
    "compress": "onnxslim_compress.jobs.compress",  # the compress job (README "pipeline step")
    "flags_pipeline": "onnxslim_compress.jobs.compress",
    "open_data": "onnxslim_compress.data",
}


def __getattr__(name: str):
    """`onnxslim_compress.search(model, ...)` without importing optuna on every `import onnxslim_compress`."""
    if name == "search":
        return importlib.import_module(".search", __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
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
