"""One declaration per pass parameter (passes.base.param): the CLI flags and their --help, recipe
validation and the default search space all come from the dataclass field."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Literal

import pytest

import onnxslim_compress.passes as passes_pkg
from onnxslim_compress.cli.main import build_parser, main
from onnxslim_compress.errors import BadInputError, RecipeError
from onnxslim_compress.passes import REGISTRY
from onnxslim_compress.passes.base import (
    Choices,
    Flag,
    Pass,
    PassResult,
    Range,
    build_params,
    param,
    param_specs,
)
from onnxslim_compress.passes.recipe import canonical_pipeline, pipeline_from_dict
from onnxslim_compress.search.space import SearchSpace, default_recipe


@dataclass
class BlurParams:
    """A throwaway pass's parameters: adding `sigma` here is all it takes."""

    strength: float = param(0.25, help="how much to blur", flag=Flag("--blur", metavar="S", enables=True),
                            search=Range(0.1, 0.5, step=0.1))
    sigma: int = param(3, help="kernel radius", choices=(1, 3, 5), flag="--blur-sigma", search=Choices((1, 5)))
    mode: Literal["box", "gauss"] = param("gauss", help="kernel shape", flag="--blur-mode")
    sharpen: bool = param(False, help="sharpen afterwards", flag="--blur-sharpen")
    exclude: list[str] = param(default_factory=list, help="node regexes left alone", flag="--exclude")


class Blur(Pass):
    """Does nothing to the model; exists to show where its parameters appear."""

    name = "blur"
    Params = BlurParams

    def run(self, model, ctx) -> PassResult:
        return PassResult(model, False, {})


def _registry() -> dict[str, type[Pass]]:
    return {**REGISTRY, "blur": Blur}


def _action(parser, command: str, flag: str):
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    return next(a for a in sub.choices[command]._actions if flag in a.option_strings)


def test_a_new_parameter_appears_in_parser_recipe_validation_and_search_space(capsys):
    reg = _registry()
    parser = build_parser(reg)
    # parser: the flag exists with the declared type/choices and a help that shows the recipe key and default
    sigma = _action(parser, "compress", "--blur-sigma")
    assert (sigma.type, sigma.choices, sigma.default) == (int, [1, 3, 5], None)
    assert "kernel radius" in sigma.help and "blur.sigma, default 3" in sigma.help
    assert _action(parser, "compress", "--blur-mode").choices == ["box", "gauss"]
    # a shared spelling is one flag that names every pass it sets
    assert "blur.exclude" in _action(parser, "compress", "--exclude").help
    ns = parser.parse_args(["compress", "m.onnx", "-o", "o.onnx", "--blur", "0.4", "--blur-sigma", "5", "--blur-sharpen",
                            "--exclude", "^x"])
    cmd = ns._command
    cmd.parse(ns)
    assert cmd.passes.chosen() == {"blur": {"strength": 0.4, "sigma": 5, "sharpen": True, "exclude": ["^x"]}}
    names = [p.name for p in cmd.pipeline().passes]
    assert names == ["simplify", "fold_batchnorm", "fuse_attention", "eliminate_dead", "blur"]  # registry order, lossless ones always
    assert "--blur" in cmd.passes.enabling
    ns = parser.parse_args(["compress", "m.onnx", "-o", "o.onnx", "--blur-sigma", "5"])  # no enabling flag: pass off
    cmd.passes.parse(ns)
    assert cmd.passes.chosen() == {}
    with pytest.raises(BadInputError, match="--blur-sigma: invalid choice: 4"):
        parser.parse_args(["compress", "m.onnx", "-o", "o.onnx", "--blur", "0.4", "--blur-sigma", "4"])
    # recipe validation: the declared choices hold in a recipe too, and the type from the annotation
    pipe = pipeline_from_dict({"passes": [{"blur": {"sigma": 1, "strength": 1}}]}, registry=reg)
    assert pipe.passes[0].params == BlurParams(strength=1.0, sigma=1)
    with pytest.raises(RecipeError, match=r"'sigma': 4 is not one of \[1, 3, 5\]"):
        pipeline_from_dict({"passes": [{"blur": {"sigma": 4}}]}, registry=reg)
    with pytest.raises(RecipeError, match="'mode'.*not one of"):
        pipeline_from_dict({"passes": [{"blur": {"mode": "median"}}]}, registry=reg)
    # search space: the declared range and choices, the pass switchable, appended in registry order
    data = default_recipe("cpu", reg)
    assert data["passes"][-1] == {"blur": {"enabled": {"choices": [True, False]},
                                           "strength": {"search": [0.1, 0.5], "step": 0.1},
                                           "sigma": {"choices": [1, 5]}}}
    dims = {d.name: d for d in SearchSpace.from_recipe(data, reg).dims}
    assert (dims["blur.strength"].low, dims["blur.strength"].high, dims["blur.sigma"].choices) == (0.1, 0.5, (1, 5))
    # and --print-recipe shows it without touching the global registry
    assert "blur" not in REGISTRY
    code = main(["compress", "m.onnx", "-o", "o.onnx", "--print-recipe", "--prune", "0.2"])
    assert code == 0 and "blur" not in capsys.readouterr().out


def test_default_search_recipe_is_the_one_it_was_before_the_declarations():
    """Study names hash the recipe: the derived default must equal the hand-written one, key order too."""
    cpu = default_recipe("cpu", REGISTRY, "cosine=0.995")
    assert cpu == {"passes": [
        "simplify",
        {"prune_channels": {"enabled": {"choices": [True, False]}, "ratio": {"search": [0.05, 0.6], "step": 0.025},
                            "round_to": {"choices": [0, 8]}}},  # 0 = probed on the target (issue 17)
        "fold_batchnorm",
        {"low_rank": {"enabled": {"choices": [True, False]}, "mode": "energy", "value": {"search": [0.8, 0.995], "step": 0.005}}},
        "fuse_attention",  # issue 16: a new lossless pass, so default study names changed with it
        "eliminate_dead",
        {"quantize": {"enabled": {"choices": [True, False]}, "mode": "int8",
                      # auto first (issue 18): the int8 preset is what `compress --quantize int8` does
                      "calibration": {"choices": ["auto", "percentile", "minmax", "entropy"]},
                      "min_fidelity": {"choices": [None, "cosine=0.995"]},
                      # per-layer precision (issue 18; a new knob: default study names changed with it)
                      "float_share": {"choices": [0.0, 0.125, 0.25, 0.5]},
                      "speed_check": False}},  # trials are timed by the search itself
    ]}
    assert [list(e.get("quantize", {})) for e in cpu["passes"] if isinstance(e, dict)][-1] == \
        ["enabled", "mode", "calibration", "min_fidelity", "float_share", "speed_check"]
    cuda = default_recipe("cuda", REGISTRY)
    steps = {next(iter(e)): next(iter(e.values())) for e in cuda["passes"] if isinstance(e, dict)}
    assert steps["quantize"] == {"enabled": {"choices": [True, False]}, "mode": "fp16"}  # When(mode=int8) drops the rest
    assert steps["prune_channels"]["round_to"] == {"choices": [8, 16]}
    assert "min_fidelity" not in default_recipe("cpu", REGISTRY)["passes"][-1]["quantize"]  # no goal, no knob


def test_every_registered_parameter_is_declared_with_help():
    for name, cls in REGISTRY.items():
        for spec in param_specs(cls.Params):
            assert spec.help.strip(), f"{name}.{spec.name} has no help"
            assert spec.default is not dataclasses.MISSING, f"{name}.{spec.name} has no default"
    q = {s.name: s for s in param_specs(REGISTRY["quantize"].Params)}
    assert q["mode"].choices == ("int8", "fp8", "int4-weight", "fp16") and q["mode"].flag.spelling == "--quantize"
    assert q["exclude"].default == []


def test_registry_lists_every_pass_class_in_pipeline_order_and_fp16_is_a_quantize_mode():
    """REGISTRY is consistent: every Pass subclass under passes/ is registered; to_fp16 defines none
    (fp16 is quantize's mode: fp16)."""
    found = {}
    for mod in pkgutil.walk_packages(passes_pkg.__path__, passes_pkg.__name__ + "."):
        m = importlib.import_module(mod.name)
        for _, obj in inspect.getmembers(m, inspect.isclass):
            if issubclass(obj, Pass) and obj is not Pass and obj.__module__ == m.__name__:
                found[obj.name] = obj
    assert found == REGISTRY
    assert list(REGISTRY) == ["specialize", "simplify", "prune_channels", "fold_batchnorm", "low_rank", "fuse_attention", "eliminate_dead", "quantize"]
    assert REGISTRY["quantize"](mode="fp16").params.mode == "fp16"
    with pytest.raises(RecipeError, match="unknown pass 'to_fp16'"):
        pipeline_from_dict({"passes": ["to_fp16"]})
    assert [p.name for p in canonical_pipeline({"quantize": {"mode": "fp16"}, "prune_channels": {}}).passes] == \
        ["simplify", "prune_channels", "fold_batchnorm", "fuse_attention", "eliminate_dead", "quantize"]


def test_build_params_checks_declared_choices():
    @dataclass
    class P:
        k: int | None = param(None, help="k", choices=(2, 4))

    assert build_params(P, {"k": 4}, "t").k == 4 and build_params(P, {"k": None}, "t").k is None
    with pytest.raises(RecipeError, match=r"t: parameter 'k': 3 is not one of \[2, 4\]"):
        build_params(P, {"k": 3}, "t")


def test_bool_and_numeric_flags_get_their_types(capsys):
    parser = build_parser(_registry())
    sharpen = _action(parser, "compress", "--blur-sharpen")
    assert sharpen.option_strings == ["--blur-sharpen", "--no-blur-sharpen"] and sharpen.default is None
    assert _action(parser, "compress", "--blur").type is float
    # --prune takes "0.3" or "latency=0.7": parsed by the pass's Flag(parse=...), so no argparse type
    assert _action(parser, "compress", "--prune").type is None and _action(parser, "compress", "--round-to").type is int
    help_text = _action(parser, "compress", "--round-to").help
    assert "prune_channels.round_to, default 0" in help_text and "low_rank.round_to, default 1" in help_text


def test_a_shared_flag_must_mean_the_same_type_everywhere():
    @dataclass
    class OddParams:
        round_to: float = param(2.5, help="a float where others have an int", flag="--round-to")

    class Odd(Blur):
        name = "odd"
        Params = OddParams

    with pytest.raises(TypeError, match="--round-to: odd.round_to and prune_channels.round_to share the flag"):
        build_parser({**REGISTRY, "odd": Odd})
