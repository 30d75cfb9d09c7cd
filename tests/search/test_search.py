"""The profiler-driven search (issue 6), tested against small fake passes in a test-local registry
(so the tests do not depend on which real passes have landed), plus the real passes when present.

Objectives here are MACs/size (exact); latency runs once with runs=5 and is never asserted on.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
from builders import GraphBuilder
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.cli.main import build_parser
from onnxslim_compress.cli.search_commands import SearchCommand, WorkerCommand
from onnxslim_compress.errors import AccuracyGateError, RecipeError
from onnxslim_compress.passes import REGISTRY
from onnxslim_compress.passes.base import Pass, PassResult
from onnxslim_compress.passes.context import Context, fingerprint
from onnxslim_compress.runtime.session import Target, make_session
from onnxslim_compress.search import SearchSpace, default_recipe, search
from onnxslim_compress.search.__main__ import main
from onnxslim_compress.search.build import TrialBuilder
from onnxslim_compress.search.job import fidelity_goal
from onnxslim_compress.search.objective import Evaluator
from onnxslim_compress.search.report import TrialRecord, pareto_plot
from onnxslim_compress.search.runner import LoopSettings, TrialLoop
from onnxslim_compress.search.space import Dim
from onnxslim_compress.search.storage import StudySettings, default_storage_url, redact
from onnxslim_compress.search.strategy import BisectionSampler

N_IN, N_OUT = 32, 16


# --------------------------------------------------------------------------------------- fixtures


def _matmul_model(seed: int = 0) -> onnx.ModelProto:
    """x[1, 32] @ W[32, 16] with geometrically decaying singular values, so rank matters smoothly."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((N_IN, N_IN)))
    v, _ = np.linalg.qr(rng.standard_normal((N_OUT, N_OUT)))
    s = 0.8 ** np.arange(N_OUT)
    w = (u[:, :N_OUT] * s) @ v.T
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N_OUT])],
        [numpy_helper.from_array(w.astype(np.float32), "W")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _weight(model: onnx.ModelProto) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W"))


def _truncate(w: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    return (u[:, :rank] * s[:rank]).astype(np.float32), vt[:rank].astype(np.float32)


def make_registry() -> dict[str, type[Pass]]:
    """Fresh fake pass classes per test: their call counters are not shared between tests."""

    @dataclasses.dataclass
    class LowRankParams:
        rank: int = N_OUT

        def __post_init__(self):
            if not 1 <= self.rank <= N_OUT:
                raise ValueError(f"rank must be in [1, {N_OUT}]")

    class FakeLowRank(Pass):
        """W -> A @ B of the given rank (size falls with the rank, fidelity too)."""

        name = "fake_lowrank"
        Params = LowRankParams
        calls: list[int] = []

        def run(self, model, ctx):
            type(self).calls.append(self.params.rank)
            a, b = _truncate(_weight(model), self.params.rank)
            g = helper.make_graph(
                [helper.make_node("MatMul", ["x", "A"], ["h"], name="mm_a"), helper.make_node("MatMul", ["h", "B"], ["y"], name="mm_b")],
                "mm",
                list(model.graph.input),
                list(model.graph.output),
                [numpy_helper.from_array(a, "A"), numpy_helper.from_array(b, "B")],
            )
            out = helper.make_model(g, opset_imports=list(model.opset_import))
            out.ir_version = model.ir_version
            return PassResult(out, True, {"rank": self.params.rank})

    @dataclasses.dataclass
    class TagParams:
        tag: str = "a"

    class FakeTag(Pass):
        """Changes nothing that matters (a doc string): a cheap second stage for reuse tests."""

        name = "fake_tag"
        Params = TagParams
        calls: list[str] = []

        def run(self, model, ctx):
            type(self).calls.append(self.params.tag)
            out = onnx.ModelProto()
            out.CopyFrom(model)
            out.graph.doc_string = self.params.tag
            return PassResult(out, True, {})

    FakeLowRank.calls = []
    FakeTag.calls = []
    return {"fake_lowrank": FakeLowRank, "fake_tag": FakeTag}


@pytest.fixture
def mm_model() -> onnx.ModelProto:
    return _matmul_model()


@pytest.fixture
def mm_eval() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, N_IN)).astype(np.float32)} for _ in range(64)]


def _agreement(model: onnx.ModelProto, feeds, rank: int) -> float:
    """Hand computation of top-1 agreement between W and its rank-r truncation."""
    w = _weight(model)
    a, b = _truncate(w, rank)
    x = np.concatenate([f["x"] for f in feeds])
    return float(np.mean((x @ w).argmax(-1) == ((x @ a) @ b).argmax(-1)))


def _cosine(model: onnx.ModelProto, feeds, rank: int) -> float:
    """Hand computation of the global output cosine between W and its rank-r truncation."""
    w = _weight(model)
    a, b = _truncate(w, rank)
    x = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    ya, yb = (x @ w).ravel(), ((x @ a) @ b).ravel()
    return float(ya @ yb / (np.linalg.norm(ya) * np.linalg.norm(yb)))


@pytest.fixture
def conv_model() -> onnx.ModelProto:
    b = GraphBuilder(0)
    x = b.conv_bn_relu("x", 3, 16)
    x = b.conv_bn_relu(x, 16, 32)
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    y = b.gemm(x, 32, 10)
    return b.model([("x", [1, 3, 16, 16])], [(y, [1, 10])])


def _conv_data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


# --------------------------------------------------------------------------------------- space


def test_space_from_recipe_types_and_keys():
    reg = make_registry()
    space = SearchSpace.from_recipe(
        {"passes": [
            {"fake_lowrank": {"rank": {"search": [2, 12]}}},
            {"fake_tag": {"enabled": {"choices": [True, False]}, "tag": {"choices": ["a", "b"]}}},
        ]},
        reg,
    )
    dims = {d.name: d for d in space.dims}
    assert list(dims) == ["fake_lowrank.rank", "fake_tag.enabled", "fake_tag.tag"]
    assert dims["fake_lowrank.rank"].kind == "int" and (dims["fake_lowrank.rank"].low, dims["fake_lowrank.rank"].high) == (2, 12)
    assert dims["fake_tag.tag"].choices == ("a", "b")
    off_a = {"fake_lowrank.rank": 4, "fake_tag.enabled": False, "fake_tag.tag": "a"}
    off_b = {**off_a, "fake_tag.tag": "b"}
    on_a = {**off_a, "fake_tag.enabled": True}
    # a disabled pass's knobs do not make a different candidate
    assert space.key(off_a) == space.key(off_b) != space.key(on_a)
    assert space.steps(off_a) == [("fake_lowrank", {"rank": 4})]
    assert space.recipe(on_a) == {"passes": [{"fake_lowrank": {"rank": 4}}, {"fake_tag": {"tag": "a"}}]}
    # 11 ranks x (off, a, b) -> not enumerable (numeric); the tag alone is 3 candidates
    assert space.cardinality() is None
    tags = SearchSpace.from_recipe({"passes": [{"fake_tag": {"enabled": {"choices": [True, False]}, "tag": {"choices": ["a", "b"]}}}]}, reg)
    assert tags.cardinality() == 3
    # describe() round-trips to the same space
    again = SearchSpace.from_recipe(space.describe(), reg)
    assert [d for d in again.dims] == space.dims


def test_space_float_range_and_snap():
    reg = make_registry()
    space = SearchSpace.from_recipe({"passes": [{"fake_tag": {"tag": "x"}}, {"fake_lowrank": {"rank": {"search": [1, 16], "step": 3}}}]}, reg)
    d = space.one_knob()
    assert d is not None and d.kind == "int"
    assert d.snap(5.4) == 4 and d.snap(100) == 16 and d.snap(-3) == 1
    f = Dim("p.x", "p", "x", "float", low=0.1, high=0.6)
    assert f.snap(0.35) == pytest.approx(0.35) and f.midpoint() == pytest.approx(0.35)


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"passes": [{"nope": {}}]}, "unknown pass 'nope'"),
        ({"passes": [{"fake_lowrank": {"rank": {"search": [8, 2]}}}]}, "low < high"),
        ({"passes": [{"fake_lowrank": {"rank": {"search": [1, 99]}}}]}, "rank must be in"),
        ({"passes": [{"fake_lowrank": {"rank": {"choices": [2, "x"]}}}]}, "rank"),
        ({"passes": [{"fake_lowrank": {"rank": {"search": [1, 4], "grid": 2}}}]}, "unknown key 'grid'"),
        ({"passes": [{"fake_lowrank": {"enabled": "maybe"}}]}, "enabled must be"),
        ({"passes": [{"fake_lowrank": {"ranks": 3}}]}, "unknown parameter 'ranks'"),
        ({"passes": []}, "non-empty"),
    ],
)
def test_space_rejects_bad_recipes(recipe, message):
    with pytest.raises(RecipeError, match=message):
        SearchSpace.from_recipe(recipe, make_registry())


def test_default_recipe_uses_only_registered_passes():
    data = default_recipe("cpu", REGISTRY)
    names = [next(iter(e)) if isinstance(e, dict) else e for e in data["passes"]]
    assert set(names) <= set(REGISTRY)
    space = SearchSpace.from_recipe(data, REGISTRY)  # every range end validates against the real passes
    assert space.dims
    only_quant = {k: v for k, v in REGISTRY.items() if k in ("simplify", "quantize")}
    if set(only_quant) == {"simplify", "quantize"}:
        q = default_recipe("cpu", only_quant)
        assert [next(iter(e)) if isinstance(e, dict) else e for e in q["passes"]] == ["simplify", "quantize"]
    with pytest.raises(RecipeError, match="nothing to search"):
        default_recipe("cpu", {k: v for k, v in REGISTRY.items() if k in ("simplify", "eliminate_dead")})


# --------------------------------------------------------------------------------------- strategy


def test_bisection_sampler_brackets_a_float_threshold():
    """feasible iff x >= 0.37: the sampler must close in on 0.37 within Condensa's 10 evaluations."""
    dim = Dim("k.x", "k", "x", "float", low=0.0, high=1.0)
    sampler = BisectionSampler(dim)
    study = optuna.create_study(sampler=sampler)
    n = 0
    while not sampler.converged(study.get_trials()) and n < 20:
        t = study.ask()
        x = dim.suggest(t)
        t.set_user_attr("feasible", x >= 0.37)
        study.tell(t, 1.0 - x)
        n += 1
    assert n <= 10
    xs = [t.params["k.x"] for t in study.trials]
    assert len(set(xs)) == len(xs)  # no point measured twice
    best = min(x for x in xs if x >= 0.37)
    assert 0.37 <= best <= 0.37 + 1 / 64 + 1e-9


def test_one_knob_search_finds_the_smallest_feasible_rank(mm_model, mm_eval):
    reg = make_registry()
    cos = {r: _cosine(mm_model, mm_eval, r) for r in range(1, N_OUT + 1)}
    max_drop = 0.01
    feasible = [r for r in cos if 1 - cos[r] <= max_drop]
    # the premise of bisection: feasibility is monotone in the rank for this data
    assert feasible == list(range(feasible[0], N_OUT + 1)) and 2 < feasible[0] < N_OUT, cos
    res = search(
        mm_model, recipe={"passes": [{"fake_lowrank": {"rank": {"search": [1, N_OUT]}}}]}, eval_data=mm_eval,
        metric="cosine", max_drop=max_drop, trials=20, objective="size", registry=reg,
    )
    assert res.best is not None and res.best.params["fake_lowrank.rank"] == feasible[0]
    assert len(res.trials) <= 10
    assert res.best.drop == pytest.approx(1 - cos[feasible[0]], abs=1e-6)
    # every trial built a distinct candidate; the pass ran once per trial
    # (the final rebuild of the best comes from the prefix cache)
    assert sorted(reg["fake_lowrank"].calls) == sorted(r.params["fake_lowrank.rank"] for r in res.trials)
    assert res.model is not None
    assert res.report["trials_to_best"] <= len(res.trials)


def test_repeated_parameter_sets_are_not_rebuilt(mm_model, mm_eval):
    reg = make_registry()
    recipe = {"passes": [
        {"fake_lowrank": {"rank": {"choices": [8, 12]}}},
        {"fake_tag": {"enabled": {"choices": [True, False]}, "tag": {"choices": ["a", "b"]}}},
    ]}
    res = search(
        mm_model, recipe=recipe, eval_data=mm_eval, metric="cosine", max_drop=0.5, trials=20, objective="size",
        sampler="random", registry=reg, presets=False,
    )
    computed = [r for r in res.trials if r.duplicate_of is None and r.state == "COMPLETE"]
    keys = [json.dumps(r.params, sort_keys=True) for r in computed]
    assert len(keys) == len(set(keys)) == 6  # 2 ranks x (off, a, b): the space is exhausted, nothing twice
    # the prefix cache: each rank factorized once, whatever the tag stage did
    assert sorted(reg["fake_lowrank"].calls) == [8, 12]
    assert len(reg["fake_tag"].calls) == 4
    for r in res.trials:
        if r.duplicate_of is not None:
            twin = next(t for t in res.trials if t.number == r.duplicate_of)
            assert (r.objective, r.drop) == (twin.objective, twin.drop)
    assert res.report["cache"]["prefix_hits"] >= 4


def test_trial_builder_never_modifies_the_input(mm_model):
    reg = make_registry()
    before = fingerprint(mm_model)
    b = TrialBuilder(mm_model, Context())
    out = b.build([reg["fake_lowrank"](rank=3)])
    assert fingerprint(mm_model) == before
    assert [n.op_type for n in out.model.graph.node] == ["MatMul", "MatMul"]
    again = b.build([reg["fake_lowrank"](rank=3), reg["fake_tag"](tag="z")])
    assert again.reused_steps == 1 and reg["fake_lowrank"].calls == [3]
    nothing = b.build([])
    assert nothing.model is not mm_model and fingerprint(nothing.model) == before


def test_resume_continues_the_same_study(tmp_path, mm_model, mm_eval):
    reg = make_registry()
    path = tmp_path / "mm.onnx"
    onnx.save(mm_model, path)
    common = dict(
        recipe={"passes": [{"fake_lowrank": {"rank": {"choices": [2, 4, 6, 8, 10, 12]}}}]}, eval_data=mm_eval,
        metric="cosine", max_drop=0.5, objective="size", sampler="random", registry=reg, presets=False,
    )
    out = tmp_path / "out.onnx"
    first = search(path, out, trials=3, **common)
    assert (tmp_path / "out.search.db").is_file()
    # the budget counts evaluated candidates; repeats proposed by the sampler are free
    computed = [r for r in first.trials if r.duplicate_of is None]
    assert len(computed) == 3 and len(reg["fake_lowrank"].calls) == 3
    second = search(path, out, trials=5, **common)
    assert len([r for r in second.trials if r.duplicate_of is None]) == 5
    assert [r.params for r in second.trials[: len(first.trials)]] == [r.params for r in first.trials]
    # only the two new trials built anything (plus none for the rebuild: the prefix cache has it,
    # or one rebuild when the best was found in the first run)
    new_calls = len(reg["fake_lowrank"].calls) - 3
    assert 2 <= new_calls <= 3
    assert second.report["study"] == first.report["study"]
    report = json.loads((tmp_path / "out.search.json").read_text())
    assert len(report["trials"]) == len(second.trials)
    # a different experiment in the same storage is refused, not mixed in
    with pytest.raises(Exception, match="different settings"):
        search(path, out, trials=5, study_name=second.report["study"], **{**common, "max_drop": 0.2})


def test_no_candidate_meets_the_constraint_returns_the_original(tmp_path, mm_model, mm_eval, capsys):
    """Ranks 1 and 2 both break a zero-drop top1 constraint. The original is always a candidate
    (drop 0, ratio 1), so it is the result: written, exit 0, the report says `picked: original` and
    why, one line on stderr."""
    reg = make_registry()
    out = tmp_path / "none.onnx"
    res = search(
        mm_model, out, recipe={"passes": [{"fake_lowrank": {"rank": {"choices": [1, 2]}}}]}, eval_data=mm_eval,
        metric="top1", max_drop=0.0, trials=4, objective="size", registry=reg, sampler="random",
    )
    rep = res.report
    assert len(rep["trials"]) == 2 and all(not t["feasible"] for t in rep["trials"])
    assert rep["picked"] == "original" and res.best is None
    assert rep["best"] == {"number": None, "original": True, "objective": 1.0, "drop": 0.0, "params": {}, "feasible": True}
    assert rep["rejected_best"] is None
    assert rep["claim"]["source"] == "original" and rep["claim"]["speedup"] == 1.0
    assert "no candidate met the constraint (max drop 0.0 on top1) in 2 trials" in rep["picked_reason"]
    assert any(rep["picked_reason"] in n for n in rep["notes"])
    said = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("search:")]  # Optuna logs there too
    assert said == [f"search: {rep['picked_reason']}"]
    written = onnx.load(out)
    assert [n.op_type for n in written.graph.node] == ["MatMul"]
    assert np.array_equal(numpy_helper.to_array(written.graph.initializer[0]), _weight(mm_model))
    saved = json.loads((tmp_path / "none.search.json").read_text())
    assert saved["picked"] == "original" and saved["best"]["original"] is True


def test_every_trial_errored_still_raises_with_the_error(tmp_path, mm_model, mm_eval):
    """Nothing was measured (every candidate failed to build): that is a broken setup, not a
    result, so the search still exits 3 naming the trials' error, and writes no model."""
    reg = make_registry()

    class Broken(reg["fake_lowrank"]):  # type: ignore[misc, valid-type]
        def run(self, model, ctx):
            raise ValueError("cannot factorize this")

    reg["fake_lowrank"] = Broken
    out = tmp_path / "none.onnx"
    with pytest.raises(AccuracyGateError, match="trial errors: .*cannot factorize this") as ei:
        search(mm_model, out, recipe={"passes": [{"fake_lowrank": {"rank": {"choices": [1, 2]}}}]}, eval_data=mm_eval,
               metric="top1", max_drop=0.0, trials=2, objective="size", registry=reg, sampler="random")
    assert ei.value.exit_code == 3
    assert not out.exists()
    assert ei.value.report["best"] is None  # type: ignore[attr-defined]


def test_user_evaluate_callable_is_the_metric(mm_model, mm_eval):
    reg = make_registry()
    x = np.concatenate([f["x"] for f in mm_eval])
    labels = (x @ _weight(mm_model)).argmax(-1)
    seen: list[float] = []

    def evaluate(session) -> float:
        y = session.run(None, {"x": x[:1]})[0]  # the session works
        assert y.shape == (1, N_OUT)
        preds = np.concatenate([session.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))]).argmax(-1)
        seen.append(float(np.mean(preds == labels)))
        return seen[-1]

    res = search(
        mm_model, recipe={"passes": [{"fake_lowrank": {"rank": {"search": [1, N_OUT]}}}]}, eval_data=mm_eval,
        evaluate=evaluate, max_drop=0.05, trials=10, objective="size", registry=reg,
    )
    assert seen[0] == 1.0  # the baseline, evaluated first
    assert res.report["baseline"]["metric"] == "custom"
    # every rank that keeps the drop within 0.05 factorizes into more numbers than the weight (rank
    # > 10 of 32x16), so no candidate beats the original and the original is the result
    feasible = [r for r in res.trials if r.state == "COMPLETE" and r.feasible]
    assert feasible and min(r.params["fake_lowrank.rank"] for r in feasible) > 10
    assert min(r.objective for r in feasible) > 1.0
    assert res.report["picked"] == "original" and res.best is None
    rej = res.report["rejected_best"]
    assert rej["drop"] <= 0.05
    assert 1 - _agreement(mm_model, mm_eval, rej["params"]["fake_lowrank.rank"]) == pytest.approx(rej["drop"])


def test_accuracy_with_labels_and_pareto_front(mm_model, mm_eval):
    reg = make_registry()
    x = np.concatenate([f["x"] for f in mm_eval])
    labels = (x @ _weight(mm_model)).argmax(-1)
    labels[:8] = (labels[:8] + 1) % N_OUT  # the baseline is 87.5 % accurate, not 100 %
    res = search(
        mm_model, recipe={"passes": [{"fake_lowrank": {"rank": {"choices": [1, 3, 6, 9, 12, 16]}}}]}, eval_data=mm_eval,
        labels=labels, metric="accuracy", max_drop=0.05, trials=6, objective="size", registry=reg,
        multi_objective=True, sampler="random",
    )
    assert res.report["baseline"]["value"] == pytest.approx(56 / 64)
    pts = [r for r in res.trials if r.state == "COMPLETE"]
    assert len(pts) == 6
    front = {r.number for r in res.pareto}
    for r in pts:  # the front, checked by hand: nothing on it is dominated, everything off it is
        dominated = any(o.objective <= r.objective and o.drop <= r.drop and (o.objective < r.objective or o.drop < r.drop) for o in pts)
        assert (r.number in front) == (not dominated)
    assert res.best is not None and res.best.drop <= 0.05


# --------------------------------------------------------------------------------------- real passes


def test_default_recipe_with_real_passes_end_to_end(tmp_path, conv_model):
    if not {"prune_channels", "quantize", "low_rank"} & set(REGISTRY):
        pytest.skip("no compression pass installed")
    res = search(
        conv_model, tmp_path / "out.onnx", calib=[{"x": v[None]} for v in _conv_data(8, 0)],
        eval_data=[{"x": v[None]} for v in _conv_data(16, 1)], metric="cosine", max_drop=0.2, trials=3,
        objective="macs", sampler="random",
    )
    names = {d.slot for d in SearchSpace.from_recipe(res.report["space"]).dims}
    assert names <= set(REGISTRY)
    assert res.output is not None and res.output.is_file()
    out = onnx.load(res.output)
    onnx.checker.check_model(out)
    assert any(p.key == "onnxslim_compress" for p in out.metadata_props)
    make_session(out)  # loads in the installed onnxruntime
    assert res.best is not None and res.best.objective == min(r.objective for r in res.trials if r.feasible)


def _run_cli(args: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(args)
    return rc, buf.getvalue()


def test_cli_search_latency_json_and_exit_codes(tmp_path, conv_model):
    if "quantize" not in REGISTRY:
        pytest.skip("quantize pass not installed")
    model = tmp_path / "m.onnx"
    onnx.save(conv_model, model)
    np.savez(tmp_path / "calib.npz", x=_conv_data(8, 0))
    np.savez(tmp_path / "eval.npz", x=_conv_data(16, 1))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - quantize:\n      enabled: {choices: [true, false]}\n      calibration: {choices: [minmax, percentile]}\n")
    data = ["--calib", str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz"), "--threads", "1", "--no-progress"]
    rc, out = _run_cli(["search", str(model), "-o", str(tmp_path / "o.onnx"), *data, "--recipe", str(recipe), "--runs", "5",
                        "--warmup", "1", "--metric", "cosine", "--max-drop", "0.5", "--trials", "2", "--json", "--sampler", "random"])
    assert rc == 0
    rep = json.loads(out)
    assert len(rep["trials"]) == 2 and rep["best"] is not None
    assert all(isinstance(t["latency_ratio"], float) and t["latency_ratio"] > 0 for t in rep["trials"] if t["state"] == "COMPLETE")
    assert (tmp_path / "o.onnx").is_file() and (tmp_path / "o.search.json").is_file()
    assert rep["plot"] is not None or any("matplotlib" in n for n in rep["notes"])
    # quantized only, zero drop allowed on cosine: no candidate passes -> the original, exit 0
    only_q = tmp_path / "q.yaml"
    only_q.write_text("passes:\n  - quantize: {calibration: {choices: [minmax, percentile]}}\n")
    rc, out = _run_cli(["search", str(model), "-o", str(tmp_path / "none.onnx"), *data, "--recipe", str(only_q), "--objective", "size",
                        "--metric", "cosine", "--max-drop", "0", "--trials", "2", "--sampler", "random"])
    assert rc == 0 and "the original model: no candidate met the constraint" in out
    kept = onnx.load(tmp_path / "none.onnx")
    assert [n.op_type for n in kept.graph.node] == [n.op_type for n in conv_model.graph.node]
    base = ["search", str(model), *data]
    # bad input: labels without the accuracy metric, unknown storage scheme, missing study
    rc, _ = _run_cli([*base, "-o", str(tmp_path / "x.onnx"), "--labels", str(tmp_path / "calib.npz"), "--metric", "top1"])
    assert rc == 2
    rc, _ = _run_cli(["worker", "--storage", f"sqlite:///{tmp_path / 'empty.db'}", "--study", "nope"])
    assert rc == 2
    rc, out = _run_cli(["search", str(model), "-o", str(tmp_path / "p.onnx"), "--print-recipe"])
    assert rc == 0 and "passes:" in out


def test_search_and_worker_parse_through_the_one_parser():
    """search/worker are Commands of the main parser (cli/groups.py), not a second copy of its flags."""
    p = build_parser()
    ns = p.parse_args(["search", "m.onnx", "-o", "o.onnx", "--max-drop", "0.02", "--trials", "7", "--storage", "sqlite:///x.db", "--study", "s"])
    assert isinstance(ns._command, SearchCommand)
    assert (ns.max_drop, ns.trials, ns.storage, ns.study, ns.metric, ns.target) == (0.02, 7, "sqlite:///x.db", "s", None, "cpu")
    assert (ns.runs, ns.warmup, ns.seed, ns.debug) == (50, 10, 0, False)
    ns = p.parse_args(["worker", "--storage", "sqlite:///x.db", "--study", "s", "--seed", "3"])
    assert isinstance(ns._command, WorkerCommand)
    assert (ns.storage, ns.study, ns.seed, ns.wait) == ("sqlite:///x.db", "s", 3, 0.0)


def test_settings_roundtrip_and_redaction():
    s = StudySettings(model="/m.onnx", recipe={"passes": ["simplify"]}, target={"kind": "cpu"}, max_drop=0.01, metric="top1")
    assert StudySettings.from_dict(json.loads(json.dumps(s.as_dict()))) == s
    assert s.default_study_name() == StudySettings.from_dict(s.as_dict()).default_study_name()
    assert s.default_study_name() != dataclasses.replace(s, max_drop=0.02).default_study_name()
    assert s.default_study_name() == dataclasses.replace(s, trials=99).default_study_name()  # the budget may change on resume
    assert redact("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    assert default_storage_url("/a/b/out.onnx") == f"sqlite:///{Path('/a/b/out.search.db').resolve()}"
    assert math.isfinite(0.0)


def test_pareto_plot_written_or_skipped(tmp_path, mm_model, mm_eval, monkeypatch):
    recs = [TrialRecord(i, "COMPLETE", {"r": i}, objective=1.0 - 0.1 * i, drop=0.01 * i, metric=1 - 0.01 * i, feasible=i < 3)
            for i in range(5)]
    best = recs[2]
    pytest.importorskip("matplotlib")
    path = tmp_path / "p.png"
    assert pareto_plot(recs, path, objective="size", max_drop=0.025, best=best) is None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without matplotlib: a note, no file, no exception
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    note = pareto_plot(recs, tmp_path / "q.png", objective="size", max_drop=0.025, best=best)
    assert note is not None and "matplotlib" in note and not (tmp_path / "q.png").exists()


def test_fidelity_goal_enters_the_default_recipe():
    assert fidelity_goal("cosine", 0.01) == "cosine=0.995"
    assert fidelity_goal("accuracy", 0.02) == "top1=0.99"
    # a CTC recognizer's goal is its decoded text: one flipped frame in 40 (per-frame top-1 0.975)
    # may change every string, so the quantizer aims at the constraint's own metric
    assert fidelity_goal("sequence", 0.05) == "sequence=0.975"
    assert fidelity_goal("custom", 0.01) is None
    if "quantize" in REGISTRY:
        space = SearchSpace.from_recipe(default_recipe("cpu", REGISTRY, "cosine=0.995"), REGISTRY)
        dims = {d.name: d for d in space.dims}
        assert dims["quantize.min_fidelity"].choices == (None, "cosine=0.995")


class Lowest(optuna.samplers.BaseSampler):
    """Always proposes the same point: each categorical knob's first choice, each range's low end."""

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, dist):
        return dist.choices[0] if hasattr(dist, "choices") else dist.low


def test_a_stubborn_sampler_still_explores(mm_model, mm_eval):
    """A sampler that always proposes the same point: each repeat queues an unseen neighbour, so
    the budget is spent on new candidates, not on copies."""
    reg = make_registry()
    space = SearchSpace.from_recipe({"passes": [{"fake_lowrank": {"rank": {"search": [1, N_OUT]}}},
                                                {"fake_tag": {"tag": {"choices": ["a", "b"]}}}]}, reg)
    ev = Evaluator(mm_model, target=Target(), eval_data=mm_eval, metric="cosine", max_drop=1.0, objective="size")
    study = optuna.create_study(sampler=Lowest())
    loop = TrialLoop(study, space, TrialBuilder(mm_model, Context()), ev, LoopSettings(budget=5, max_drop=1.0))
    loop.run()
    built = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(built) == 5 and len({t.user_attrs["key"] for t in built}) == 5
    assert len(study.trials) <= 10  # every repeat was followed by a new candidate
    off = TrialLoop(optuna.create_study(sampler=Lowest()), space, TrialBuilder(mm_model, Context()), ev,
                    LoopSettings(budget=5, max_drop=1.0, explore_on_repeat=False))
    off.run()
    assert len(off.computed) == 1 and len(off.study.trials) == 15  # without it: one candidate, then the cap


def test_report_records_the_sampler_that_ran(mm_model, mm_eval):
    """The default sampler is TPE (its dependencies are Optuna's own); asking for gp without torch
    falls back to TPE, and the report says tpe, not gp."""
    import importlib.util  # only to know whether this machine has GPSampler's dependencies

    recipe = {"passes": [
        {"fake_lowrank": {"rank": {"choices": [8, 12]}}},
        {"fake_tag": {"enabled": {"choices": [True, False]}, "tag": {"choices": ["a", "b"]}}},
    ]}
    common = dict(recipe=recipe, eval_data=mm_eval, metric="cosine", max_drop=0.5, trials=2, objective="size", presets=False)
    res = search(mm_model, registry=make_registry(), **common)
    assert res.report["settings"]["sampler"] == "tpe" and res.report["sampler"] == "tpe"
    has_gp = all(importlib.util.find_spec(m) is not None for m in ("torch", "scipy"))
    if has_gp:
        res = search(mm_model, registry=make_registry(), sampler="gp", **common)
    else:
        with pytest.warns(RuntimeWarning, match="GPSampler needs torch"):
            res = search(mm_model, registry=make_registry(), sampler="gp", **common)
    assert res.report["settings"]["sampler"] == "gp"
    assert res.report["sampler"] == ("gp" if has_gp else "tpe")


def test_the_original_wins_when_every_candidate_is_worse(tmp_path, mm_model, mm_eval):
    """Ranks 11 and 16 of a 32x16 weight factorize into more numbers than the weight (528 and 768 >
    512): every candidate is bigger. The original is always a candidate, so it is the result."""
    recipe = {"passes": [{"fake_lowrank": {"rank": {"choices": [11, 16]}}}]}
    out = tmp_path / "o.onnx"
    res = search(mm_model, out, recipe=recipe, eval_data=mm_eval, metric="cosine", max_drop=0.5, trials=4,
                 objective="size", registry=make_registry(), presets=False)
    done = sorted(r.objective for r in res.trials if r.state == "COMPLETE" and r.duplicate_of is None)
    assert done == pytest.approx([528 / 512, 768 / 512], rel=0.02)
    assert res.report["picked"] == "original" and res.best is None
    assert res.report["best"]["original"] is True and res.report["best"]["objective"] == 1.0
    assert res.report["rejected_best"]["objective"] == pytest.approx(528 / 512, rel=0.02)
    assert any("the result is the original model" in n for n in res.report["notes"])
    written = onnx.load(out)
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in mm_model.graph.node]
    assert np.array_equal(numpy_helper.to_array(written.graph.initializer[0]), numpy_helper.to_array(mm_model.graph.initializer[0]))


# --------------------------------------------------------------------------------------- honest latency


def _fake_timer(trial_table: dict[int, float], final_table: dict[int, float], final_from: int = 100):
    """A timer with profiler.compare's signature: B's latency is `ratio` x A's with 2 % deterministic
    noise, the ratio looked up by B's rank (the inner dim of its weight A) in `trial_table` for short
    runs and in `final_table` for runs >= final_from (the finalists' re-measure): a trial's timing
    that misleads, which only the longer re-measure corrects."""
    from onnxslim_compress.runtime.profiler import ab_from_samples

    calls: list[tuple[int, int]] = []

    def timer(a, b, feeds, target, warmup=10, runs=50):
        rank = next(int(t.dims[1]) for t in b.graph.initializer if t.name == "A")
        ratio = (final_table if runs >= final_from else trial_table)[rank]
        rng = np.random.default_rng(rank * 1000 + runs)
        ta = list(1.0 + 0.02 * rng.standard_normal(runs))
        tb = list(ratio * (1.0 + 0.02 * rng.standard_normal(runs)))
        calls.append((rank, runs))
        return ab_from_samples(ta, tb, target)

    timer.calls = calls  # type: ignore[attr-defined]
    return timer


def test_finalist_remeasure_changes_a_pick_the_trial_timing_misled(mm_model, mm_eval):
    """Rank 4 looks fastest in its 20-run trial (x0.5) but re-timed over 200 runs it is x1.0 (its
    interval crosses the original's 1.0): rank 8 (x0.7 both times) is the pick, and the claim is its
    re-measured ratio with an interval below 1."""
    timer = _fake_timer({4: 0.5, 8: 0.7, 12: 0.85}, {4: 1.0, 8: 0.7, 12: 0.85})
    res = search(mm_model, recipe={"passes": [{"fake_lowrank": {"rank": {"choices": [4, 8, 12]}}}]}, eval_data=mm_eval,
                 metric="cosine", max_drop=0.5, trials=3, objective="latency", registry=make_registry(), presets=False,
                 runs=20, final_runs=200, finalists=3, timer=timer)
    trial_runs = sorted(c for c in timer.calls if c[1] == 20)
    assert trial_runs == [(4, 20), (8, 20), (12, 20)]
    # three finalists, then a confirmation run of the pick alone (its claim: not the figure it won on)
    assert sorted(c for c in timer.calls if c[1] == 200) == [(4, 200), (8, 200), (8, 200), (12, 200)]
    assert timer.calls[-1] == (8, 200)
    fin = {f["params"]["fake_lowrank.rank"]: f for f in res.report["finalists"]}
    assert fin[4]["trial_ratio"] == pytest.approx(0.5, rel=0.03) and fin[4]["ratio"] == pytest.approx(1.0, rel=0.03)
    assert fin[4]["beats_original"] is False and fin[4]["ci95"][0] < 1.0 < fin[4]["ci95"][1]
    assert fin[8]["beats_original"] and fin[12]["beats_original"]
    assert res.best is not None and res.best.params["fake_lowrank.rank"] == 8
    c = res.report["claim"]
    assert c["source"] == "confirmation run of the pick" and c["runs"] == 200
    assert c["selection_ratio"] == pytest.approx(fin[8]["ratio"])
    assert c["latency_ratio"] == pytest.approx(0.7, rel=0.02) and c["ci95"][0] <= c["latency_ratio"] <= c["ci95"][1] < 1.0
    assert c["speedup"] == pytest.approx(1 / c["latency_ratio"])
    assert c["speedup_ci95"] == pytest.approx([1 / c["ci95"][1], 1 / c["ci95"][0]])
    assert any("re-measure changed the pick" in n for n in res.report["notes"])
    assert res.report["trials_to_best"] == next(r.number for r in res.trials if r.params["fake_lowrank.rank"] == 8) + 1
    assert next(t.dims[1] for t in res.model.graph.initializer if t.name == "A") == 8


def test_every_candidate_slower_returns_the_original(tmp_path, mm_model, mm_eval):
    """Rank 4's trial says x0.9 but 200 runs say x1.05; rank 8 is x1.3 throughout: no finalist is
    faster than the original for sure, so the written model is the original."""
    timer = _fake_timer({4: 0.9, 8: 1.3}, {4: 1.05, 8: 1.3})
    out = tmp_path / "o.onnx"
    res = search(mm_model, out, recipe={"passes": [{"fake_lowrank": {"rank": {"choices": [4, 8]}}}]}, eval_data=mm_eval,
                 metric="cosine", max_drop=0.5, trials=2, objective="latency", registry=make_registry(), presets=False,
                 runs=20, final_runs=200, timer=timer)
    assert res.report["picked"] == "original" and res.best is None
    assert res.report["claim"] == {"latency_ratio": 1.0, "ci95": None, "speedup": 1.0, "runs": None, "source": "original"}
    assert sorted(f["ratio"] for f in res.report["finalists"]) == pytest.approx([1.05, 1.3], rel=0.03)
    assert any("no finalist's 95 % latency interval" in n for n in res.report["notes"])
    written = onnx.load(out)
    assert [n.op_type for n in written.graph.node] == ["MatMul"]
    assert np.array_equal(numpy_helper.to_array(written.graph.initializer[0]), _weight(mm_model))


def test_early_stop_screens_a_candidate_that_broke_top1_for_sure(mm_model, mm_eval):
    """top1 with max drop 0.05 over 64 samples: a candidate is infeasible for sure after 4
    disagreements. Rank 1 disagrees on most samples, so it stops early with a drop lower bound above
    0.05 and no latency measured; rank 16 (exact) runs through."""
    timer = _fake_timer({1: 0.2, 16: 0.99}, {1: 0.2, 16: 0.99})
    ev = Evaluator(mm_model, target=Target(), eval_data=mm_eval, metric="top1", max_drop=0.05, objective="latency",
                   runs=20, timer=timer)
    reg = make_registry()  # no baseline run before the first candidate: the first one is screened too
    low = reg["fake_lowrank"](rank=1)(mm_model, Context()).model
    m = ev.measure(low)
    full = _agreement(mm_model, mm_eval, 1)
    assert 1 - full > 0.05
    assert m.extra["screened"] and not m.feasible and m.latency_ratio is None and timer.calls == []
    assert 0.05 < m.drop <= 1 - full + 1e-9 and m.extra["screened_after"] < len(mm_eval)
    assert m.drop == pytest.approx(4 / 64)  # stopped at the 4th disagreement (4/64 > 0.05 >= 3/64)
    exact = reg["fake_lowrank"](rank=16)(mm_model, Context()).model
    m2 = ev.measure(exact)
    assert "screened" not in m2.extra and m2.feasible and m2.drop == pytest.approx(0.0) and timer.calls == [(16, 20)]


# --------------------------------------------------------------------------------------- presets


def test_fixed_presets_of_the_default_cpu_space():
    """int8 alone, prune 0.3 + int8, prune 0.3 and low rank 0.9 are points of the default space (fp16
    is not: its quantize mode is pinned to int8), each with only its passes on."""
    space = SearchSpace.from_recipe(default_recipe("cpu"))
    assert [n for n, _ in space.fixed_presets()] == ["int8", "prune 0.3 + int8", "prune 0.3", "low rank 0.9"]  # no goal: no min_fidelity knob
    space = SearchSpace.from_recipe(default_recipe("cpu", None, fidelity_goal("sequence", 0.05)))
    fixed = dict(space.fixed_presets())
    assert list(fixed) == ["int8", "int8, sensitive layers float", "prune 0.3 + int8", "prune 0.3", "low rank 0.9"]
    assert dict(space.steps(fixed["int8, sensitive layers float"]))["quantize"]["min_fidelity"] == "sequence=0.975"
    assert dict(space.steps(fixed["int8"]))["quantize"]["min_fidelity"] is None
    # the int8 preset is what `compress --quantize int8` does: per-tensor auto calibration
    assert dict(space.steps(fixed["int8"]))["quantize"]["calibration"] == "auto"
    assert {d.name: d for d in space.dims}["quantize.calibration"].choices == ("auto", "percentile", "minmax", "entropy")
    # per-layer precision as a knob (issue 18): a share of the ranked units kept float, 0 in every preset
    assert {d.name: d for d in space.dims}["quantize.float_share"].choices == (0.0, 0.125, 0.25, 0.5)
    assert {dict(space.steps(v))["quantize"]["float_share"] for v in fixed.values() if "quantize" in dict(space.steps(v))} == {0.0}
    on = {n: [p for p, _ in space.steps(v) if p in ("prune_channels", "low_rank", "quantize")] for n, v in fixed.items()}
    assert on == {"int8": ["quantize"], "int8, sensitive layers float": ["quantize"], "prune 0.3 + int8": ["prune_channels", "quantize"], "prune 0.3": ["prune_channels"],
                  "low rank 0.9": ["low_rank"]}
    steps = dict(space.steps(fixed["prune 0.3 + int8"]))
    assert steps["prune_channels"]["ratio"] == pytest.approx(0.3) and steps["quantize"]["mode"] == "int8"
    # backed off after breaking the constraint: the prune ratio halfway to its low end (on the grid),
    # the kept energy halfway to its high end, the choices as they were
    soft = dict(space.steps(space.gentler(fixed["prune 0.3 + int8"])))
    assert soft["prune_channels"]["ratio"] == pytest.approx(0.175) and soft["quantize"] == steps["quantize"]
    assert dict(space.steps(space.gentler(fixed["low rank 0.9"])))["low_rank"]["value"] == pytest.approx(0.945)
    assert space.gentler(fixed["int8"]) is None  # nothing lossy to back off but the choices
    assert dict(space.steps(fixed["low rank 0.9"]))["low_rank"]["value"] == pytest.approx(0.9)
    names = [n for n, _ in space.named_presets()]
    assert names[:5] == list(fixed) and len(set(names)) == len(names)
    fp16 = SearchSpace.from_recipe({"passes": [{"quantize": {"enabled": {"choices": [True, False]}, "mode": {"choices": ["int8", "fp16"]}}}]})
    assert [n for n, _ in fp16.fixed_presets()] == ["int8", "fp16"]


def test_fixed_presets_are_enqueued_first_and_reported(monkeypatch, mm_model, mm_eval):
    from onnxslim_compress.search import space as space_mod

    monkeypatch.setattr(space_mod, "FIXED_PRESETS", (("rank 6", {"fake_lowrank": {"rank": 6}}), ("rank 99", {"fake_lowrank": {"rank": 99}})))
    recipe = {"passes": [{"fake_lowrank": {"enabled": {"choices": [True, False]}, "rank": {"search": [1, N_OUT]}}}]}
    res = search(mm_model, recipe=recipe, eval_data=mm_eval, metric="cosine", max_drop=0.5, trials=4, objective="size",
                 registry=make_registry(), sampler="random", strategy="optuna")
    first = min(res.trials, key=lambda r: r.number)
    assert first.params == {"fake_lowrank.enabled": True, "fake_lowrank.rank": 6}  # rank 99 is out of range: dropped
    assert res.report["presets"]["rank 6"] == first.number
    assert "rank 99" not in res.report["presets"]
    assert res.report["best_preset"]["preset"] in res.report["presets"]
    assert res.best is not None and res.best.objective <= res.report["best_preset"]["objective"]


def test_without_finalists_the_pick_is_made_on_the_trials_intervals(mm_model, mm_eval):
    """finalists=0 (what a coordinator does): nothing is re-timed, the trials' own intervals decide."""
    timer = _fake_timer({4: 0.5, 8: 0.7}, {4: 1.0, 8: 0.7})
    res = search(mm_model, recipe={"passes": [{"fake_lowrank": {"rank": {"choices": [4, 8]}}}]}, eval_data=mm_eval,
                 metric="cosine", max_drop=0.5, trials=2, objective="latency", registry=make_registry(), presets=False,
                 runs=20, finalists=0, timer=timer)
    assert all(runs == 20 for _, runs in timer.calls)
    assert res.best is not None and res.best.params["fake_lowrank.rank"] == 4
    c = res.report["claim"]
    assert c["source"] == "trial" and c["runs"] == 20 and c["latency_ratio"] == pytest.approx(0.5, rel=0.03)


def test_a_candidate_that_breaks_the_constraint_is_backed_off_toward_the_gentle_end(mm_model, mm_eval):
    """A sampler that only proposes rank 1 (far too lossy): each infeasible candidate queues itself
    halfway toward the rank's declared gentle end (high), so the loop walks 1 -> 9 -> 13 -> ... to a
    feasible rank within the budget; without the back-off it never leaves rank 1."""
    from onnxslim_compress.passes.base import Range, param

    @dataclasses.dataclass
    class TruncParams:
        rank: int = param(N_OUT, help="kept rank", search=Range(1, N_OUT, gentle="high"))

    base = make_registry()["fake_lowrank"]
    trunc = type("FakeTrunc", (base,), {"name": "fake_trunc", "Params": TruncParams, "calls": []})
    reg = {"fake_trunc": trunc}
    space = SearchSpace.from_recipe({"passes": [{"fake_trunc": {"rank": {"search": [1, N_OUT]}}}]}, reg)
    chain, v = [1], {"fake_trunc.rank": 1}
    while (v := space.gentler(v)) is not None:
        chain.append(v["fake_trunc.rank"])
    assert chain == [1, 9, 13, 15, 16]  # halfway each time, snapped to the integer grid
    ev = Evaluator(mm_model, target=Target(), eval_data=mm_eval, metric="cosine", max_drop=1e-5, objective="size")
    study = optuna.create_study(sampler=Lowest())
    loop = TrialLoop(study, space, TrialBuilder(mm_model, Context()), ev,
                     LoopSettings(budget=8, max_drop=1e-5, explore_on_repeat=False))
    loop.run()
    done = [t for t in study.trials if t.number in loop.computed]
    ranks = [t.params["fake_trunc.rank"] for t in done]
    feasible = [t.user_attrs["feasible"] for t in done]
    assert ranks[:5] == chain and feasible[:5] == [False, False, False, False, True]
    assert trunc.calls[:5] == chain  # each rank built once
    assert [t.user_attrs.get("softened_from") for t in done[1:5]] == [t.number for t in done[:4]]
    # back-offs hold at most half the budget: with 4 trials, rank 1 -> 9 -> 13, then the sampler
    short = TrialLoop(optuna.create_study(sampler=Lowest()), space, TrialBuilder(mm_model, Context()), ev,
                      LoopSettings(budget=4, max_drop=1e-5, explore_on_repeat=False))
    short.run()
    got = [t.params["fake_trunc.rank"] for t in short.study.trials if t.number in short.computed]
    assert got == [1, 9, 13]  # the sampler's own proposals (rank 1 again) are repeats, not new candidates
    off = TrialLoop(optuna.create_study(sampler=Lowest()), space, TrialBuilder(mm_model, Context()), ev,
                    LoopSettings(budget=8, max_drop=1e-5, explore_on_repeat=False, soften_infeasible=False))
    off.run()
    assert len(off.computed) == 1 and not any(t.user_attrs.get("feasible") for t in off.study.trials)
