"""Models given as something other than an ONNX ModelProto or a path: a graphsurgeon `gs.Graph`, an
onnx-ir model. Deployment pipelines hold models in those forms; deep-copying one as if it were a
proto recursed without end, so they are converted (when the package that made them is importable)
or refused with one clear line.
"""

from __future__ import annotations

import os
from typing import Any

import onnx

from onnxslim_compress.errors import BadInputError

#: what the API takes where it takes a model
MODEL_TYPES = "a path to an .onnx file, an onnx.ModelProto, an onnx_graphsurgeon Graph or an onnx_ir Model"


def _origin(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


def as_model(model: Any, what: str = "model") -> str | os.PathLike | onnx.ModelProto:
    """A path or ModelProto unchanged; a gs.Graph or an onnx-ir model converted to a ModelProto;
    anything else refused (BadInputError naming what was given and what is accepted)."""
    if isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        return model
    origin = _origin(model)
    if origin == "onnx_graphsurgeon":
        try:
            import onnx_graphsurgeon as gs  # optional heavy dependency: only for a gs.Graph
        except ImportError:
            raise BadInputError(f"{what}: an onnx_graphsurgeon {type(model).__name__} needs onnx_graphsurgeon to "
                                "convert it; export it first with gs.export_onnx(graph)") from None
        if not isinstance(model, gs.Graph):
            raise BadInputError(f"{what}: an onnx_graphsurgeon {type(model).__name__} is not a Graph; give {MODEL_TYPES}")
        return gs.export_onnx(model)
    if origin == "onnx_ir":
        try:
            import onnx_ir  # optional heavy dependency: only for an onnx-ir model
        except ImportError:
            raise BadInputError(f"{what}: an onnx_ir {type(model).__name__} needs onnx_ir to convert it; "
                                "serialize it first with onnx_ir.serde.serialize_model(model)") from None
        if not isinstance(model, onnx_ir.Model):
            raise BadInputError(f"{what}: an onnx_ir {type(model).__name__} is not a Model; give {MODEL_TYPES}")
        return onnx_ir.serde.serialize_model(model)
    raise BadInputError(f"{what}: got {type(model).__module__}.{type(model).__name__}; expected {MODEL_TYPES}")
