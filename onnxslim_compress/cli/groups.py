"""The argument groups every subcommand is built from (after Polygraphy's argument groups).

A group adds its flags to a parser, parses them once after argparse has run, and hands the command
ready objects (a Target, bound input shapes, image options, a data opener, the pass parameters the
flags set), so every subcommand spells `--target`, `--input-shape` or `--calib` the same way and
validates them the same way. A Command lists its groups; main() runs `parse` on each before the
command's `run`, and owns the one error handler.

The pass flags of `compress` (PassArgs) are not written here: they are derived from the pass
parameters' declarations (passes.base.param(flag=...)), help text and defaults included.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from onnxslim_compress.data import ImageOptions, load_labels, open_data
from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph.shapes import parse_input_shapes
from onnxslim_compress.jobs.compress import json_default
from onnxslim_compress.passes.base import Flag, ParamSpec, Pass, param_specs
from onnxslim_compress.runtime.metrics import BUILTIN_METRICS, METRIC_HELP, MetricSpec
from onnxslim_compress.runtime.session import Target

PROG = "onnxslim-compress"


class Parser(argparse.ArgumentParser):
    """argparse prints usage plus the error and exits; we want one line and exit code 2 from main()."""

    def error(self, message: str):  # type: ignore[override]
        raise BadInputError(f"{message} (see {self.prog} --help)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs keep their layout; a flag's help ends with its default when it has a real one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)".lstrip()


def dedent(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


class ArgGroup:
    """Adds flags to a subcommand's parser; `parse` turns the parsed namespace into ready objects."""

    #: listed before the command's own flags in --help (what the command reads and writes)
    leading: ClassVar[bool] = False

    def add(self, p: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def parse(self, ns: argparse.Namespace) -> None:  # noqa: B027 - groups without objects need none
        """Validate and convert the parsed flags (raise BadInputError)."""


class CommonArgs(ArgGroup):
    """--debug, --seed, --no-progress: on every subcommand."""

    debug: bool = False
    seed: int = 0
    no_progress: bool = False

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.add_argument("--seed", type=int, default=0, help="seed for sampling and generated data (default 0)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    def parse(self, ns: argparse.Namespace) -> None:
        self.debug, self.seed, self.no_progress = ns.debug, ns.seed, ns.no_progress

    def progress(self, json_output: bool = False) -> bool:
        """Progress bars: on a terminal, unless asked for quiet or JSON."""
        return not self.no_progress and not json_output and sys.stderr.isatty()

    def table(self, json_output: bool = False) -> bool:
        """Trial rows go to stderr even when it is not a terminal (logs), unless asked for quiet/JSON."""
        return not self.no_progress and not json_output


class ModelArgs(ArgGroup):
    """The model path(s) and --input-shape, which binds dynamic dims (repeatable)."""

    leading = True

    path: str = ""
    path_b: str | None = None
    shapes: dict[str, list[int]]

    def __init__(self, second: Literal["none", "optional", "required"] = "none", second_help: str | None = None,
                 first_help: str | None = None):
        self.first_help = first_help or ("model A (.onnx), the reference" if second != "none" else "input model (.onnx; never modified)")
        self.second, self.second_help = second, second_help or "model B (.onnx), measured against A"
        self.shapes = {}

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help=self.first_help)
        if self.second == "optional":
            p.add_argument("model_b", nargs="?", help=self.second_help)
        elif self.second == "required":
            p.add_argument("model_b", help=self.second_help)
        p.add_argument(
            "--input-shape",
            action="append",
            metavar="NAME:DIMS",
            help="bind an input's dynamic dims, e.g. images:1x3x320x320 (repeatable); without it they come from the "
            "data, else the model's metadata (imgsz), else count as 1 (noted on stderr)",
        )

    def parse(self, ns: argparse.Namespace) -> None:
        self.path, self.path_b = ns.model, getattr(ns, "model_b", None)
        self.shapes = parse_input_shapes(ns.input_shape)


class TargetArgs(ArgGroup):
    """--target and --threads: where the model will be measured/deployed."""

    target: Target

    def __init__(self, default_threads: int = 0):
        self.default_threads = default_threads

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--target", choices=["cpu", "cuda", "tensorrt"], default="cpu", help="execution provider (default: cpu)")
        p.add_argument(
            "--threads", type=int, default=self.default_threads, help="intra-op threads (0: onnxruntime's default)"
        )

    def parse(self, ns: argparse.Namespace) -> None:
        self.target = Target(kind=ns.target, threads=ns.threads)


@dataclass
class DataFlags:
    dest: str
    help: str


def _floats(s: str | None, flag: str) -> tuple[float, ...] | None:
    if s is None:
        return None
    try:
        return tuple(float(x) for x in s.split(","))
    except ValueError:
        raise BadInputError(f"{flag} {s!r}: expected comma-separated numbers") from None


class DataArgs(ArgGroup):
    """--calib/--eval/--data plus the image preprocessing options shared by all of them."""

    image: ImageOptions
    limit: int | None = None
    drop_nonfinite: bool = False

    def __init__(self, *flags: DataFlags):
        self.flags = flags
        self.paths: dict[str, str | None] = {}

    def add(self, p: argparse.ArgumentParser) -> None:
        for f in self.flags:
            p.add_argument(f"--{f.dest}", metavar="PATH", help=f.help)
        g = p.add_argument_group("image folders (used when a data PATH is a folder of images)")
        g.add_argument("--image-size", metavar="HxW", help="resize to HxW, e.g. 224x224 (default: the model's input)")
        g.add_argument("--image-layout", choices=["NCHW", "NHWC"], default=None, help="default: guessed from the input shape")
        g.add_argument("--image-order", choices=["RGB", "BGR"], default="RGB", help="channel order the model expects")
        g.add_argument("--image-scale", type=float, default=1 / 255, help="multiply pixels by this first (default 1/255)")
        g.add_argument("--image-mean", metavar="M[,M,M]", help="subtract per channel, after scaling")
        g.add_argument("--image-std", metavar="S[,S,S]", help="divide per channel, after the mean")
        p.add_argument("--num-samples", type=int, default=None, help="use at most this many samples of each data set")
        p.add_argument("--drop-nonfinite", action="store_true",
                       help="leave out samples holding NaN/Inf (with a warning) instead of refusing the data")

    def parse(self, ns: argparse.Namespace) -> None:
        self.paths = {f.dest: getattr(ns, f.dest) for f in self.flags}
        self.limit = ns.num_samples
        self.drop_nonfinite = ns.drop_nonfinite
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
        mean, std = _floats(ns.image_mean, "--image-mean"), _floats(ns.image_std, "--image-std")
        if mean is not None:
            kwargs["mean"] = mean
        if std is not None:
            kwargs["std"] = std
        self.image = ImageOptions(**kwargs)

    def open(self, dest: str, model: Any, shapes: dict[str, list[int]], *, seed: int = 0) -> Any:
        """The data set of --`dest` (generated from the model's signature when the flag is absent)."""
        return open_data(self.paths.get(dest), model, input_shapes=shapes, limit=self.limit, seed=seed, image=self.image,
                         drop_nonfinite=self.drop_nonfinite)


class OutputArgs(ArgGroup):
    """--json: a machine-readable report on stdout instead of the human summary."""

    json: bool = False

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print a machine-readable JSON report on stdout")

    def parse(self, ns: argparse.Namespace) -> None:
        self.json = ns.json

    @staticmethod
    def print_json(obj: Any) -> None:
        print(json.dumps(obj, indent=2, default=json_default))


class OutputModelArgs(ArgGroup):
    """-o/--output: the model file a command writes (not needed to only print a recipe)."""

    leading = True

    path: str = ""

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("-o", "--output", help="output .onnx path (written atomically; required unless --print-recipe)")

    def parse(self, ns: argparse.Namespace) -> None:
        self.path = ns.output or ""

    def require(self) -> str:
        """The path, or the one-line error argparse would give for a missing required flag."""
        if not self.path:
            raise BadInputError("the following arguments are required: -o/--output")
        return self.path


class RecipeArgs(ArgGroup):
    """--recipe R.yaml and --print-recipe."""

    leading = True

    path: str | None = None
    print_only: bool = False

    def __init__(self, recipe_help: str, print_help: str):
        self.recipe_help, self.print_help = recipe_help, print_help

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--recipe", metavar="R.yaml", help=self.recipe_help)
        p.add_argument("--print-recipe", action="store_true", help=self.print_help)

    def parse(self, ns: argparse.Namespace) -> None:
        self.path, self.print_only = ns.recipe, ns.print_recipe


class LabelsArgs(ArgGroup):
    """--labels FILE (.npy or one per line)."""

    path: str | None = None

    def __init__(self, help: str):
        self.help = help

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--labels", metavar="FILE", help=self.help)

    def parse(self, ns: argparse.Namespace) -> None:
        self.path = ns.labels

    def load(self) -> Any:
        return load_labels(self.path) if self.path else None


class MetricArgs(ArgGroup):
    """--metric NAME|MODULE:FUNC, declared once for every command that takes it (compare, search):
    a built-in metric or the user's f(outputs_a, outputs_b) -> float, read into a MetricSpec
    (runtime.metrics), so `compare --metric m:f` and `search --metric m:f` load the same function
    the same way. `allowed` narrows the built-in names (the search constrains fewer than compare shows)."""

    spec: MetricSpec | None = None

    def __init__(self, help_tail: str = "", allowed: tuple[str, ...] = BUILTIN_METRICS):
        self.help_tail, self.allowed = help_tail, allowed

    def add(self, p: argparse.ArgumentParser) -> None:
        names = ", ".join(self.allowed)
        p.add_argument("--metric", metavar="NAME|MODULE:FUNC",
                       help=(METRIC_HELP if self.allowed == BUILTIN_METRICS else
                             f"a built-in metric ({names}) or MODULE:FUNC / file.py:FUNC, f(outputs_a, outputs_b) -> float")
                       + self.help_tail)

    def parse(self, ns: argparse.Namespace) -> None:
        self.spec = MetricSpec.parse(ns.metric) if ns.metric else None
        if self.spec is not None and not self.spec.custom and self.spec.name not in self.allowed:
            raise BadInputError(f"--metric {self.spec.name}: expected one of {', '.join(self.allowed)} or MODULE:FUNC")

    @property
    def builtin(self) -> str | None:
        """The built-in metric's name (None for none or a user's function)."""
        return self.spec.name if self.spec is not None and not self.spec.custom else None


class TimingArgs(ArgGroup):
    """--warmup and --runs of a latency measurement."""

    warmup: int = 10
    runs: int = 50

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--runs", type=int, default=50, help="timed runs per latency measurement")
        p.add_argument("--warmup", type=int, default=10, help="untimed runs before timing")

    def parse(self, ns: argparse.Namespace) -> None:
        self.warmup, self.runs = ns.warmup, ns.runs


@dataclass
class _PassFlag:
    """One command-line flag and the pass parameters it sets (several passes may share it)."""

    flag: Flag
    dest: str = ""
    #: (pass name, declaration) of every parameter this flag sets
    decls: list[tuple[str, ParamSpec]] = field(default_factory=list)


def _flag_kwargs(spec: ParamSpec, flag: Flag) -> dict[str, Any]:
    """argparse keywords from a parameter's annotation: its value type, choices, repeatable lists."""
    hint = spec.type
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: the X
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    kw: dict[str, Any] = {"metavar": flag.metavar, "default": None}
    if flag.parse is not None:
        if flag.repeatable:
            kw["action"] = "append"  # the pass's parser reads the list of texts
        return kw  # the pass's parser reads the text
    if origin in (list, tuple):
        hint = args[0] if args else str
        kw["action"] = "append"
    if hint is bool:
        kw["action"] = argparse.BooleanOptionalAction
        kw.pop("metavar")
        return kw
    if spec.choices is not None:
        kw["choices"] = list(spec.choices)
        if kw["metavar"] is None:
            kw.pop("metavar")
    if typing.get_origin(hint) is typing.Literal:
        hint = type(typing.get_args(hint)[0])
    if hint in (int, float):  # argparse hands over text otherwise
        kw["type"] = hint
    if flag.const is not None:
        kw.update(nargs="?", const=flag.const)
    return kw


def _show(v: Any) -> str:
    return "none" if v is None else str(v)


class PassArgs(ArgGroup):
    """The pass flags of `compress`, derived from the pass parameters' declarations.

    Each parameter declared with `param(flag=...)` becomes a flag in the group of the first pass
    (in registry order) that declares it; its help names the recipe keys it sets and their defaults.
    A pass runs when one of its `enables` flags is given; a flag's value is passed only when given,
    so every other parameter keeps the pass's default.
    """

    def __init__(self, registry: Mapping[str, type[Pass]]):
        self.registry = registry
        self.flags: dict[str, _PassFlag] = {}
        for name, cls in registry.items():
            for spec in param_specs(cls.Params):
                if spec.flag is not None:
                    pf = self.flags.setdefault(spec.flag.spelling, _PassFlag(spec.flag))
                    if pf.decls and (pf.decls[0][1].type, pf.decls[0][1].choices) != (spec.type, spec.choices):
                        other = f"{pf.decls[0][0]}.{pf.decls[0][1].name}"
                        raise TypeError(f"{spec.flag.spelling}: {name}.{spec.name} and {other} share the flag "
                                        "but differ in type or choices")
                    pf.decls.append((name, spec))
        self.values: dict[str, Any] = {}

    @property
    def enabling(self) -> list[str]:
        """The flags that add a pass (--prune, --lowrank, --quantize), in registry order."""
        return [s for s, pf in self.flags.items() if any(spec.flag is not None and spec.flag.enables for _, spec in pf.decls)]

    def add(self, p: argparse.ArgumentParser) -> None:
        groups: dict[str, Any] = {}
        for spelling, pf in self.flags.items():
            first, spec = pf.decls[0]
            if first not in groups:
                groups[first] = p.add_argument_group(f"{first} pass")
            help_text = next((s.flag.help for _, s in pf.decls if s.flag is not None and s.flag.help), None) or spec.help
            keys = []
            for pname, s in pf.decls:
                alone = f"; alone: {s.flag.const}" if s.flag is not None and s.flag.const is not None else ""
                if s.flag is not None and s.flag.enables:
                    keys.append(f"{pname}.{s.name}; runs the pass{alone}")
                elif s.default is None or s.default == [] or s.default == {}:
                    keys.append(f"{pname}.{s.name}{alone}")
                else:
                    keys.append(f"{pname}.{s.name}, default {_show(s.default)}{alone}")
            full = f"{help_text} ({'; '.join(keys)})".replace("%", "%%")
            aliases = [a for _, s in pf.decls if s.flag is not None for a in s.flag.aliases]
            action = groups[first].add_argument(spelling, *dict.fromkeys(aliases), help=full, **_flag_kwargs(spec, pf.flag))
            pf.dest = action.dest

    def parse(self, ns: argparse.Namespace) -> None:
        self.values = {s: getattr(ns, pf.dest) for s, pf in self.flags.items()}

    def given(self) -> list[str]:
        """The enabling flags the user set."""
        return [s for s in self.enabling if self.values.get(s) is not None]

    def chosen(self, overrides: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """{pass name: params the flags set} of the passes an enabling flag turned on, in registry
        order. `overrides` replaces flag values (the CLI's hardware-aware --round-to)."""
        values = {**self.values, **(overrides or {})}
        out: dict[str, dict[str, Any]] = {}
        for name, cls in self.registry.items():
            params: dict[str, Any] = {}
            on = False
            for spec in param_specs(cls.Params):
                if spec.flag is None or values.get(spec.flag.spelling) is None:
                    continue
                v = values[spec.flag.spelling]
                on = on or spec.flag.enables
                if spec.flag.parse is not None:
                    params.update(spec.flag.parse(v))
                else:
                    params[spec.name] = list(v) if isinstance(v, list) else v
            if on:
                out[name] = params
        return out


class Command:
    """A subcommand: common flags, the leading groups', its own, then the other groups'; each group
    parses once before `run`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    epilog: ClassVar[str] = ""

    def __init__(self) -> None:
        self.common = CommonArgs()

    def groups(self) -> list[ArgGroup]:
        """The groups after the command's own flags, in help order."""
        return []

    def add_arguments(self, p: argparse.ArgumentParser) -> None:  # noqa: B027 - optional hook
        """The flags only this command has."""

    def attach(self, sub: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(self.name, help=self.summary, description=self.summary, epilog=dedent(self.epilog),
                           formatter_class=HelpFormatter)
        self.common.add(p)
        for g in self.groups():
            if g.leading:
                g.add(p)
        self.add_arguments(p)
        for g in self.groups():
            if not g.leading:
                g.add(p)
        p.set_defaults(_command=self)
        return p

    def parse(self, ns: argparse.Namespace) -> None:
        """Every group turns its flags into objects, once, before any work."""
        for g in [self.common, *self.groups()]:
            g.parse(ns)

    def __call__(self, ns: argparse.Namespace) -> int:
        self.parse(ns)
        return self.run(ns)

    def run(self, ns: argparse.Namespace) -> int:
        raise NotImplementedError
