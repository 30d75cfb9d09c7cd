"""Inputs generated from the model signature: the WEAK fallback when no data is given.

It exercises the graph but carries none of the real data's statistics; how each input is drawn
(normal, indices below a Gather table's size, ones for masks) is read off how the graph uses it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from onnxslim_compress.data.source import DataSource
from onnxslim_compress.data.spec import Feed, InputSpec
from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph.index import Constants, attr, node_links
from onnxslim_compress.graph.shapes import ShapeMap, bind_input_shapes

#: samples generated when no data is given and no limit says otherwise
DEFAULT_GENERATED_SAMPLES = 8


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


#: the largest sample generated for one input; a bigger declared shape is refused, not allocated
MAX_GENERATED_BYTES = 1 << 31


def check_generated_size(name: str, shape: Sequence[int], dtype: np.dtype | type) -> None:
    """A declared dim of 200000 (or a typo'd one) must fail with one line, not a MemoryError."""
    n = 1
    for d in shape:
        n *= int(d)
    size = n * np.dtype(dtype).itemsize
    if size > MAX_GENERATED_BYTES:
        raise BadInputError(
            f"input {name!r} declares shape {list(shape)} ({size / 1e9:.3g} GB per sample): too big to "
            "generate; bind its dims with --input-shape or give data"
        )


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
        for s in specs:
            check_generated_size(s.name, self.shapes[s.name], s.dtype)
        self.assumed = list(bound.assumed)
        self.from_metadata = list(bound.from_metadata)
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
        if self.from_metadata:
            dyn += f"; dynamic dims from the model's metadata: {', '.join(self.from_metadata)}"
        return f"{self.count} generated samples (weak fallback, seed {self.seed}): " + "; ".join(parts) + dyn


def generated_failure(data: object, exc: BaseException, what: str) -> BadInputError | None:
    """The one-line exit-2 error for a run on generated inputs that failed while some dynamic dim
    was only guessed (YOLOv8n at H=W=1 fails inside Concat, a VAD model in a reflect Pad): the
    cause is the guess, and the fix is a flag. None when the data was not generated or no dim was
    guessed (then the failure is the model's or ours, not the user's)."""
    if not isinstance(data, GeneratedSource) or not data.assumed:
        return None
    dim = data.assumed[0]
    name = dim.split("[", 1)[0]
    spec = next((s for s in data.specs if s.name == name), None)
    dims = "x".join(str(d) if isinstance(d, int) and d > 0 else "N" for d in (spec.dims or [] if spec else []))
    cause = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__
    return BadInputError(
        f"{what} failed on generated inputs where dynamic dim {dim} was guessed ({cause}); "
        f"bind it with --input-shape {name}:{dims or 'DIMS'} or give real data"
    )
