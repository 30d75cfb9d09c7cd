"""What a model expects of its inputs (name, dims, dtype) and conforming arrays to it.

Every source checks its samples here, so a wrong shape or dtype reads the same whatever the
layout, and names the input and what was expected (a BadInputError the CLI prints).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph.shapes import dims_of, graph_inputs

Feed = dict[str, np.ndarray]


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


def check_shape(spec: InputSpec, shape: tuple[int, ...], where: str) -> None:
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


def check_dtype(spec: InputSpec, dtype: np.dtype, where: str) -> np.dtype | None:
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


def cast_to(spec: InputSpec, arr: np.ndarray, to: np.dtype | None, where: str) -> np.ndarray:
    """Apply the cast chosen by check_dtype; an integer narrowing must not wrap values around."""
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


def conform(spec: InputSpec, arr: np.ndarray, where: str, *, add_batch: bool = True) -> np.ndarray:
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
    check_shape(spec, arr.shape, where)
    arr = cast_to(spec, arr, check_dtype(spec, arr.dtype, where), where)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def match_names(specs: list[InputSpec], names: Iterable[str], where: str) -> None:
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
