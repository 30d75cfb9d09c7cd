"""The fidelity floor's back-off is a mechanism, not a count (jobs/guard.py): it goes on while each
round raises fidelity, doubles quantize's kept-float set each round, stops (exit 3, with the
figures) at the first round that does not help, and drops a pass it would have to undo entirely,
so the input comes back unchanged - never a model under the floor with exit 0.

The fidelity each round reads is scripted here (the real check runs, then its figures are replaced
by a sequence), so what is tested is the loop, on a real quantize pass of a 16-conv chain."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import GraphBuilder, random_input

from onnxslim_compress import Target
from onnxslim_compress.cli.main import main
from onnxslim_compress.errors import AccuracyGateError
from onnxslim_compress.jobs import compress as compress_mod
from onnxslim_compress.jobs import guard
from onnxslim_compress.jobs.compress import compress
from onnxslim_compress.passes.base import Pipeline
from onnxslim_compress.passes.quantize.quantize import Quantize
from onnxslim_compress.runtime.metrics import FidelityReport

CPU1 = Target("cpu", threads=1)
UNITS = 16


def chain(n: int = UNITS) -> onnx.ModelProto:
    """n 1x1 convs 8 -> 8 with Relus between: n int8 units, each one layer of the ranking."""
    b = GraphBuilder(3)
    y = "x"
    for i in range(n):
        y = b.conv(y, 8, 8, k=1)
        if i < n - 1:
            y = b.node("Relu", [y])
    b.nodes[-1].output[0] = "out"
    return b.model([("x", [1, 8, 6, 6])], [("out", [1, 8, 6, 6])])


def _calib(n: int = 8) -> list[dict]:
    return [{"x": random_input([1, 8, 6, 6], seed=s)} for s in range(n)]


def scripted(monkeypatch, pearsons: list[float]) -> list[int]:
    """Each round's check reads the next pearson of `pearsons` (rel_l2 0.01, cosine = pearson);
    past the end, the real figures. Returns the list the rounds' DequantizeLinear counts go to."""
    real = compress_mod._check
    seq = iter(pearsons)
    dq_counts: list[int] = []

    def check(model, *args):
        v = real(model, *args)
        dq_counts.append(sum(n.op_type == "DequantizeLinear" for n in model.graph.node))
        p = next(seq, None)
        if p is not None:
            for m in v.report.per_output.values():
                m.update(pearson=p, cosine=p, rel_l2=0.01)
        return v

    monkeypatch.setattr(compress_mod, "_check", check)
    return dq_counts


def test_backoff_goes_past_three_rounds_while_fidelity_rises_doubling_the_kept_float_set(monkeypatch):
    scripted(monkeypatch, [0.90, 0.93, 0.95, 0.97, 0.98, 0.995])
    res = compress(chain(), pipeline=Pipeline([Quantize(mode="int8")]), calib=_calib(), target=CPU1)
    att = res.report["no_harm"]["attempts"]
    assert len(att) == 6 and not att[-1]["shortfalls"]  # 5 back-offs: the old fixed count stopped at 3
    asked = [int(a["backed_off"][0].split("at least ")[1].split()[0]) for a in att[:-1]]
    assert asked == [1, 2, 4, 8, 15]  # doubled each round, at most all but one of the 16 units
    st = res.report["passes"][0]["stats"]
    assert st["candidate_units"] == UNITS and len(st["kept_float"]) >= 15 and st["quantized_units"] <= 1


def test_a_round_that_does_not_raise_fidelity_ends_the_run_with_exit_3_and_the_figures(monkeypatch):
    scripted(monkeypatch, [0.90, 0.95, 0.95])
    with pytest.raises(AccuracyGateError) as e:
        compress(chain(), pipeline=Pipeline([Quantize(mode="int8")]), calib=_calib(), target=CPU1)
    msg = str(e.value)
    assert "not met after 2 back-off(s)" in msg and "the last back-off did not raise fidelity" in msg
    assert "pearson 0.9500" in msg and "-> pearson 0.9500" in msg


def test_when_every_unit_would_be_float_the_input_comes_back_with_the_reason(monkeypatch):
    dq = scripted(monkeypatch, [0.90, 0.91, 0.92, 0.93, 0.94, 0.95])  # rising, never enough; then real figures
    m = chain()
    res = compress(m, pipeline=Pipeline([Quantize(mode="int8")]), calib=_calib(), target=CPU1)
    nh = res.report["no_harm"]
    att = nh["attempts"]
    assert att[-2]["backed_off"][0].startswith("quantize dropped (the floor was not met with 15 of 16 units float")
    assert "quantize dropped" in nh["kept_input"]
    assert dq[:-1] and all(c > 0 for c in dq[:-1]) and dq[-1] == 0  # the last round is the input, no Q/DQ
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in res.model.graph.node)
    assert nh["measured"]["pearson"] == pytest.approx(1.0) and not att[-1]["shortfalls"]


def test_a_floor_never_met_never_writes_a_model_with_exit_0(monkeypatch, tmp_path, capsys):
    scripted(monkeypatch, [0.90 + 0.001 * k for k in range(50)])  # the input itself reads under the floor too
    p, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(chain(), str(p))
    np.savez(tmp_path / "c.npz", x=np.concatenate([f["x"] for f in _calib()]))
    code = main([str(a) for a in ["compress", p, "-o", out, "--quantize", "int8", "--calib", tmp_path / "c.npz",
                                  "--threads", "1"]])
    err = capsys.readouterr().err
    assert code == 3 and not out.exists()
    assert "nothing is left to back off" in err


def test_quantize_step_doubles_and_stops_short_of_all_float():
    assert guard.quantize_step({"candidate_units": 16}) == (1, 16)
    assert guard.quantize_step({"candidate_units": 16, "kept_float": ["a"] * 3}) == (6, 16)
    assert guard.quantize_step({"candidate_units": 16, "kept_float": ["a"] * 12}) == (15, 16)
    assert guard.quantize_step({"candidate_units": 16, "kept_float": ["a"] * 15}) == (None, 16)
    assert guard.quantize_step({"candidate_units": 1}) == (None, 1)
    f = guard.FidelityFloor.parse(None)
    def rep(p, r):
        return FidelityReport(per_output={"y": {"pearson": p, "rel_l2": r}}, samples=4, data="t")

    assert f.margin(rep(0.99, 0.0)) == pytest.approx(0.0) and f.margin(rep(0.98, 0.0)) == pytest.approx(-1.0)
    assert f.margin(rep(0.999, 0.30)) == pytest.approx(-1.0)  # rel_l2 twice its bound: the worse of the two
    assert f.improved(rep(0.95, 0.1), rep(0.96, 0.1)) and not f.improved(rep(0.95, 0.1), rep(0.95, 0.1))
    assert f.margin(rep(float("nan"), 0.1)) == -np.inf and f.improved(rep(float("nan"), 0.1), rep(0.5, 0.1))


def test_a_floor_looser_than_the_default_lowers_the_outlier_split_goal_to_its_bound():
    """quantize's outlier_goal (pearson 0.994) is the margin over the DEFAULT floor (pearson 0.99): kept
    under a floor of cosine=0.968 (ORT dynamic's fidelity on all-MiniLM-L6) it bought pearson 0.994 with
    16 split ops, ours / ORT dynamic 1.024; at the floor's own bound no split, 0.990 at cos 0.9937."""
    def goal(spec, **kw):
        pipe = guard.split_goal_within_floor(Pipeline([Quantize(mode="int8", **kw)]), guard.FidelityFloor.parse(spec))
        return pipe.passes[0].params.outlier_goal

    assert goal("cosine=0.968") == pytest.approx(0.968)
    assert goal("pearson=0.97,rel_l2=0.3") == pytest.approx(0.97)
    assert goal("cosine=0.98,pearson=0.95") == pytest.approx(0.95)  # the loosest bound the floor reads
    # the default floor, a stricter one, one with no pearson/cosine bound, none: unchanged
    for spec in (None, "pearson=0.99", "cosine=0.995", "sequence=0.25", "rel_l2=0.3", "none"):
        assert goal(spec) == pytest.approx(0.994), spec
    # a lower explicit outlier_goal stays; None (split every outlier) stays None
    assert goal("cosine=0.968", outlier_goal=0.95) == pytest.approx(0.95)
    assert goal("cosine=0.968", outlier_goal=None) is None


def test_compress_under_a_loose_floor_runs_quantize_with_the_lowered_split_goal(monkeypatch):
    seen = []
    real = Quantize.run

    def spy(self, model, ctx):
        seen.append(self.params.outlier_goal)
        return real(self, model, ctx)

    monkeypatch.setattr(Quantize, "run", spy)
    m = chain(4)
    calib = [{"x": random_input([1, 8, 6, 6], seed=i)} for i in range(4)]
    compress(m, pipeline=Pipeline([Quantize(mode="int8", speed_check=False)]), calib=calib, target=CPU1,
             min_fidelity="cosine=0.9")
    assert seen == [pytest.approx(0.9)]
