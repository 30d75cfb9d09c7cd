from dataclasses import dataclass, field
from typing import Literal

import onnx
import pytest
from builders import resnet_like

from onnxslim_compress.errors import PassFailure, RecipeError
from onnxslim_compress.passes.base import Pass, PassResult, Pipeline, build_params
from onnxslim_compress.passes.recipe import dump_recipe, load_recipe, pipeline_from_dict


@dataclass
class P:
    ratio: float = 0.5
    mode: Literal["a", "b"] = "a"
    exclude: list[str] = field(default_factory=list)
    limit: int | None = None

    def __post_init__(self):
        if not 0 <= self.ratio <= 1:
            raise ValueError("ratio must be in [0, 1]")


def test_build_params_validates_and_coerces():
    p = build_params(P, {"ratio": 1, "mode": "b", "exclude": ["x.*"], "limit": None}, "t")
    assert p == P(1.0, "b", ["x.*"], None) and isinstance(p.ratio, float)
    with pytest.raises(RecipeError, match="unknown parameter 'ratoi'"):
        build_params(P, {"ratoi": 0.1}, "t")
    with pytest.raises(RecipeError, match="'mode'.*not one of"):
        build_params(P, {"mode": "c"}, "t")
    with pytest.raises(RecipeError, match="'ratio'.*expected a number"):
        build_params(P, {"ratio": "0.3"}, "t")
    with pytest.raises(RecipeError, match="ratio must be in"):
        build_params(P, {"ratio": 3.0}, "t")
    with pytest.raises(RecipeError, match="'limit'"):
        build_params(P, {"limit": 1.5}, "t")


class Rename(Pass):
    """Test pass: renames the graph, declares itself in place."""

    name = "rename"
    in_place = True

    def run(self, model, ctx):
        model.graph.name = model.graph.name + "+"
        return PassResult(model, True, {"n": 1})


class Noop(Pass):
    name = "noop"

    def run(self, model, ctx):
        return PassResult(model, False, {})


class Boom(Pass):
    name = "boom"

    def run(self, model, ctx):
        raise ZeroDivisionError("x")


def test_pipeline_ors_modified_and_never_mutates_input():
    m = resnet_like()
    before = m.SerializeToString()
    res = Pipeline([Noop(), Rename(), Noop()]).run(m)
    assert res.modified is True
    assert [s.name for s in res.steps] == ["noop", "rename", "noop"]
    assert res.model.graph.name == "test+"
    assert m.SerializeToString() == before
    assert Pipeline([Noop()]).run(m).modified is False


def test_in_place_pass_copies_when_called_directly():
    m = resnet_like()
    res = Rename()(m)
    assert res.model is not m and m.graph.name == "test"


def test_pipeline_wraps_failure_with_context():
    with pytest.raises(PassFailure, match=r"pass 'boom' failed \(ZeroDivisionError: x\); passes already run: noop, rename"):
        Pipeline([Noop(), Rename(), Boom()]).run(resnet_like())


def test_ensures_rejects_invalid_output():
    class Breaker(Pass):
        name = "breaker"

        def run(self, model, ctx):
            m = onnx.ModelProto()
            m.CopyFrom(model)
            m.graph.node[0].input[0] = "does_not_exist"
            return PassResult(m, True, {})

    with pytest.raises(Exception, match="invalid model"):
        Breaker()(resnet_like())


def test_recipe_roundtrip(tmp_path):
    pl = pipeline_from_dict({"passes": ["simplify", {"fold_batchnorm": None}, {"eliminate_dead": {}}]})
    text = dump_recipe(pl)
    p = tmp_path / "r.yaml"
    p.write_text(text)
    back = load_recipe(p)
    assert back.to_recipe() == pl.to_recipe()
    assert [x.name for x in back.passes] == ["simplify", "fold_batchnorm", "eliminate_dead"]


@pytest.mark.parametrize(
    "text,match",
    [
        ("passes:\n  - simplfy: {}\n", "unknown pass 'simplfy'"),
        ("passes:\n  - simplify: {keep_bn: true}\n", "unknown parameter 'keep_bn'"),
        ("passes:\n  - simplify: {keep_batchnorm: 3}\n", "'keep_batchnorm': expected true/false"),
        ("pases: []\n", "unknown key 'pases'"),
        ("passes: [\n", "not valid YAML"),
        ("passes: {a: 1}\n", "'passes' must be a list"),
    ],
)
def test_recipe_errors_name_the_key(tmp_path, text, match):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(RecipeError, match=match):
        load_recipe(p)
