"""The pass contract (docs/ARCHITECTURE.md "Pass contract"), after onnx-ir's pass infrastructure.

A pass has typed parameters (a dataclass validated on construction, so a recipe typo fails before
any work), a registry name, pre/post-conditions, and returns a PassResult instead of mutating its
input. The Pipeline ORs `modified` and wraps failures with the pass name and what already ran.

Each parameter is declared once, on its dataclass field, with `param()`: default, help text,
choices, the `compress` flag that sets it (if any) and the range the default search explores (if
any). The CLI flags and their --help (cli/groups.py PassArgs), recipe validation (build_params) and
the default search space (search/space.py default_recipe) are derived from that declaration, so
adding a parameter touches one file.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import onnx

from onnxslim_compress.errors import BadInputError, CompressError, PassFailure, RecipeError
from onnxslim_compress.graph import io as model_io
from onnxslim_compress.graph import weights
from onnxslim_compress.graph.convert import as_model
from onnxslim_compress.passes.context import Context


@dataclass
class PassResult:
    model: onnx.ModelProto
    modified: bool
    #: what the report shows: counts, per-layer rows, and `skipped` entries {"node"/"group", "reason"}
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class NoParams:
    """Parameters of a pass that takes none."""


# ------------------------------------------------------------------------------------------------
# parameter declarations


@dataclass(frozen=True)
class Flag:
    """How a parameter is set on `compress`'s command line.

    Several passes may declare the same spelling (`--exclude`, `--round-to`): the CLI then has one
    flag that sets the parameter of every declaring pass that runs. `enables`: giving the flag adds
    the pass to the pipeline built from flags (`--prune`, `--quantize`). `parse` turns one value
    into several parameters (`--lowrank energy=0.9` sets mode and value); it raises BadInputError.
    `aliases`: other spellings of the same flag (the old name after a rename to the spelling ORT
    and ModelOpt users know, e.g. `--calibration` for `--calibrate-method`). `const`: the value when
    the flag is given without one (`--smoothquant` = `--smoothquant 0.5`).
    `repeatable` with `parse`: the flag may be given several times and `parse` gets the list of
    values (`--fix-input sr=16000 --fix-input h=0`).
    """

    spelling: str
    metavar: str | None = None
    enables: bool = False
    help: str | None = None
    parse: Callable[[Any], dict[str, Any]] | None = None
    aliases: tuple[str, ...] = ()
    const: Any = None
    repeatable: bool = False


@dataclass(frozen=True)
class Range:
    """Search a numeric range (`{search: [low, high]}`; ints stay ints, `step` snaps to a grid).

    `gentle`: the end where the pass loses least (a prune ratio's low end, a kept energy's high
    end). The search backs a candidate that broke the constraint off toward it, halfway each
    time, as the fidelity floor backs off a compress run; it is read from the declaration, so a
    recipe's own range for the same parameter keeps it."""

    low: float | int
    high: float | int
    step: float | int | None = None
    log: bool = False
    gentle: Literal["low", "high"] | None = None


@dataclass(frozen=True)
class Choices:
    """Search among these values (`{choices: [...]}`). FIDELITY_GOAL stands for the goal the search
    derives from its constraint; without one, the parameter is left out of the space."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Pinned:
    """Not searched: the default search recipe pins this value (written out, so the study records it)."""

    value: Any


@dataclass(frozen=True)
class PerTarget:
    """A different search spec per target runtime kind ("cpu", "cuda", "tensorrt"), else `default`."""

    specs: tuple[tuple[str, Any], ...]
    default: Any = None


@dataclass(frozen=True)
class When:
    """Use `then` only when the (pinned or default) value of sibling parameter `param` is in `values`."""

    param: str
    values: tuple[Any, ...]
    then: Any


class _FidelityGoal:
    def __repr__(self) -> str:
        return "FIDELITY_GOAL"


#: placeholder in Choices for the fidelity goal of the running search (e.g. "cosine=0.995")
FIDELITY_GOAL: Any = _FidelityGoal()

#: what `param(search=...)` accepts
SearchSpec = Range | Choices | Pinned | PerTarget | When

_META_KEY = "onnxslim_compress"


@dataclass(frozen=True)
class ParamSpec:
    """The declaration of one pass parameter, kept in the dataclass field's metadata."""

    name: str
    help: str
    default: Any
    #: the field's annotation (resolved), e.g. `float` or `list[str]`
    type: Any = Any
    choices: tuple[Any, ...] | None = None
    flag: Flag | None = None
    search: SearchSpec | None = None


def param(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    choices: tuple[Any, ...] | list[Any] | None = None,
    flag: str | Flag | None = None,
    search: SearchSpec | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    """A params dataclass field that declares everything about the parameter in one place.

    `choices` restricts the values beyond the type (a Literal annotation gives its choices
    already); `flag` exposes it on `compress` ("--round-to" or a Flag); `search` is the range the
    default search explores (Range, Choices, Pinned, PerTarget, When).
    """
    if isinstance(flag, str):
        flag = Flag(flag)
    meta = {_META_KEY: {"help": help, "choices": tuple(choices) if choices is not None else None,
                        "flag": flag, "search": search}}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _literal_choices(hint: Any) -> tuple[Any, ...] | None:
    """The values of a Literal annotation (also inside `Literal[...] | None`), else None."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for a in typing.get_args(hint):
            found = _literal_choices(a)
            if found is not None:
                return found
    return None


def param_specs(params_cls: type) -> list[ParamSpec]:
    """The declarations of a params dataclass, in field order (plain fields get an empty help)."""
    hints = typing.get_type_hints(params_cls)
    out = []
    for f in dataclasses.fields(params_cls):
        meta = f.metadata.get(_META_KEY, {})
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        choices = meta.get("choices") or _literal_choices(hints[f.name])
        out.append(ParamSpec(f.name, meta.get("help", ""), default, hints[f.name], choices, meta.get("flag"), meta.get("search")))
    return out


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Validate (and lightly coerce int->float) one parameter against its annotation."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _check_type(key, value, a)
            except RecipeError:
                continue
        raise RecipeError(f"parameter '{key}': {value!r} is not a {hint}")
    if hint is type(None):
        if value is None:
            return None
        raise RecipeError(f"parameter '{key}': expected null")
    if origin is typing.Literal:
        if value in args:
            return value
        raise RecipeError(f"parameter '{key}': {value!r} is not one of {list(args)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"parameter '{key}': expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_check_type(key, v, inner) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"parameter '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"parameter '{key}': expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"parameter '{key}': expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"parameter '{key}': expected true/false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"parameter '{key}': expected a string, got {value!r}")
        return value
    return value


def build_params(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """Construct a params dataclass from a mapping, naming any unknown key or bad value."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in values:
        if k not in names:
            raise RecipeError(f"{where}: unknown parameter '{k}' (known: {', '.join(names) or 'none'})")
    declared = {f.name: f.metadata.get(_META_KEY, {}).get("choices") for f in dataclasses.fields(cls)}
    checked = {}
    for k, v in values.items():
        try:
            checked[k] = _check_type(k, v, hints[k])
            allowed = declared[k]
            if allowed is not None and checked[k] is not None and checked[k] not in allowed:
                raise RecipeError(f"parameter '{k}': {v!r} is not one of {list(allowed)}")
        except RecipeError as e:
            raise RecipeError(f"{where}: {e}") from None
    try:
        return cls(**checked)
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{where}: {e}") from None


def params_to_dict(params: Any) -> dict[str, Any]:
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}


class Pass(ABC):
    """Base class. Subclasses set `name`, `Params` and implement `run`."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    #: True when run() edits its argument; the base class then skips the defensive copy only if the
    #: caller allowed it (Pipeline copies once at the start, so in-place passes are cheap there).
    in_place: ClassVar[bool] = False
    #: lossless passes must not change outputs beyond float reassociation
    lossless: ClassVar[bool] = False

    def __init__(self, params: Any = None, **kwargs: Any):
        if params is not None and kwargs:
            raise TypeError("give either a params object or keyword arguments, not both")
        if params is None:
            params = build_params(self.Params, kwargs, f"pass '{self.name}'")
        elif not isinstance(params, self.Params):
            raise RecipeError(f"pass '{self.name}': params must be {self.Params.__name__}")
        self.params = params

    def requires(self, model: onnx.ModelProto, ctx: Any) -> None:  # noqa: B027 - optional hook
        """Raise CompressError if the model is not in a state this pass can work on."""

    def ensures(self, model: onnx.ModelProto, ctx: Any) -> None:
        """Raise CompressError if the output breaks the pass's promise. Default: checker passes."""
        offloaded = weights.has_offloaded(model)
        if not offloaded and model_io.model_bytes(model) > model_io.EXTERNAL_DATA_THRESHOLD:
            return  # the in-memory checker cannot serialize >2 GB (EncodeError); save_model checks by path
        try:
            if offloaded:
                weights.check(model)  # by path: the in-memory checker refuses offloaded locations
            else:
                onnx.checker.check_model(model)
        except onnx.checker.ValidationError as e:
            raise CompressError(f"pass '{self.name}' produced an invalid model: {str(e).splitlines()[0]}") from e
        except ValueError:
            pass  # >2 GB protos cannot be checked in memory; save_model checks by path

    @abstractmethod
    def run(self, model: onnx.ModelProto, ctx: Any) -> PassResult: ...

    def __call__(self, model: onnx.ModelProto, ctx: Any = None, *, copy_input: bool = True) -> PassResult:
        ctx = ctx if ctx is not None else Context()
        work = copy.deepcopy(model) if (self.in_place and copy_input) else model
        self.requires(work, ctx)
        res = self.run(work, ctx)
        self.ensures(res.model, ctx)
        return res

    def describe(self) -> dict[str, Any]:
        return {self.name: params_to_dict(self.params)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


@dataclass
class StepRecord:
    name: str
    params: dict[str, Any]
    modified: bool
    seconds: float
    stats: dict[str, Any]


@dataclass
class PipelineResult:
    model: onnx.ModelProto
    modified: bool
    steps: list[StepRecord]


class Pipeline:
    """Runs passes in order. The input model is never mutated: one copy is made up front."""

    def __init__(self, passes: list[Pass]):
        self.passes = list(passes)

    def run(
        self, model: onnx.ModelProto, ctx: Any = None, *, progress: Any = None, verifier: Any = None,
        copy_input: bool = True,
    ) -> PipelineResult:
        """Run every pass. With a `verifier` (see verify.Verifier) each pass's output is checked
        against its input, which is then kept intact (in-place passes get a copy). copy_input=False:
        the caller gives up `model` (in-place passes may edit it), which saves one copy of the weights."""
        ctx = ctx if ctx is not None else Context()
        if not isinstance(model, onnx.ModelProto):  # a gs.Graph / onnx-ir model: converted or refused
            model = as_model(model)
            if not isinstance(model, onnx.ModelProto):
                raise BadInputError("Pipeline.run takes a loaded model; load a path with onnxslim_compress.load_model")
            copy_input = False  # a fresh proto of our own
        current = copy.deepcopy(model) if copy_input else model
        # what the model will run at after every pass: earlier passes (pruning's alignment) read it
        ctx.precision = "int8" if any(p.name == "quantize" and getattr(p.params, "mode", None) == "int8"
                                      for p in self.passes) else "fp32"
        steps: list[StepRecord] = []
        modified = False
        for p in self.passes:
            t0 = time.perf_counter()
            if progress is not None:
                progress(p.name)
            try:
                res = p(current, ctx, copy_input=verifier is not None)
                if verifier is not None:
                    res, outcome = verifier.check(p, current, res, ctx)
                    res.stats = {**res.stats, "verify": outcome.as_dict()}
            except PassFailure:
                raise
            except Exception as e:  # noqa: BLE001 - wrapped with context, re-raised
                raise PassFailure(p.name, [s.name for s in steps], e) from e
            current = res.model
            modified = modified or res.modified
            steps.append(StepRecord(p.name, params_to_dict(p.params), res.modified, time.perf_counter() - t0, res.stats))
        return PipelineResult(current, modified, steps)

    __call__ = run

    def to_recipe(self) -> dict[str, Any]:
        return {"passes": [p.describe() for p in self.passes]}

    def __len__(self) -> int:
        return len(self.passes)
