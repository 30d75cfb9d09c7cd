"""PruneChannels pass: ratio targeting, criteria, constraints, recovery, and the real models (slow)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import GraphBuilder, cbr_dead, conv_dead, random_input, ref_macs, run
from onnx import numpy_helper

import onnxslim_compress.passes.prune.recovery as rec_mod
from onnxslim_compress.errors import BadInputError, RecipeError
from onnxslim_compress.graph.io import load_model
from onnxslim_compress.graph.shapes import bind_input_shapes, elem_type_to_numpy, graph_inputs
from onnxslim_compress.passes import REGISTRY, PruneChannels
from onnxslim_compress.passes.context import Context
from onnxslim_compress.passes.prune.apply import MacModel
from onnxslim_compress.passes.prune.groups import analyze
from onnxslim_compress.passes.prune.select import select_units, unit_importance, weight_spaces


def _net(seed: int = 0, w: int = 32, blocks: int = 2, dead: tuple = ()) -> onnx.ModelProto:
    """Residual conv net with a 2w-wide tail; `dead` channels of the residual stream are zero."""
    b = GraphBuilder(seed)
    s = cbr_dead(b, "x", 3, w, dead=dead)
    for _ in range(blocks):
        y = cbr_dead(b, s, w, w)
        y = cbr_dead(b, y, w, w, dead=dead)
        s = b.node("Add", [y, s])
    t = cbr_dead(b, s, w, 2 * w)
    f = b.node("Flatten", [b.node("GlobalAveragePool", [t])])
    out = b.gemm(f, 2 * w, 10)
    return b.model([("x", [1, 3, 12, 12])], [(out, [1, 10])])


def _calib(n: int = 16, shape=(1, 3, 12, 12)) -> list[dict]:
    return [{"x": random_input(list(shape), seed=100 + k)} for k in range(n)]


def _conv_outs(m: onnx.ModelProto) -> list[int]:
    inits = {t.name: t for t in m.graph.initializer}
    return [int(inits[n.input[1]].dims[0]) for n in m.graph.node if n.op_type == "Conv"]


def test_registered_and_params_validated():
    assert REGISTRY["prune_channels"] is PruneChannels
    with pytest.raises(RecipeError):
        PruneChannels(ratio=1.5)
    with pytest.raises(RecipeError):
        PruneChannels(criterion="taylor")
    with pytest.raises(RecipeError):
        PruneChannels(overrides={"conv.*": {"speed": 2}})
    with pytest.raises(RecipeError):
        PruneChannels(exclude=["("])


@pytest.mark.parametrize("scope", ["global", "uniform"])
@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.5])
def test_ratio_hit_within_two_percent(scope, ratio):
    m = _net()
    # MAC targeting alone: no latency take-backs (the conftest table steps every 8 channels)
    res = PruneChannels(ratio=ratio, scope=scope, round_to=1, recover=False, latency_check=False)(m, Context())
    st = res.stats
    assert abs(st["ratio_achieved"] - ratio) <= 0.02
    # independent count: the MACs removed from the pruned graph equal what the stats claim
    before, after = ref_macs(m), ref_macs(res.model)
    assert before == st["macs_before"] and after == st["macs_after"]
    assert abs((before - after) / st["prunable_macs"] - st["ratio_achieved"]) < 1e-3
    onnx.checker.check_model(res.model)
    assert run(res.model, {"x": random_input([1, 3, 12, 12])})[0].shape == (1, 10)


def test_dead_channels_are_pruned_first_and_exactly():
    dead = (1, 4, 9, 17, 30)
    m = _net(dead=dead)
    an = analyze(m)
    pruned = np.zeros(an.n_units, dtype=bool)
    stream = [n.output[0] for n in m.graph.node if n.op_type == "Add"][-1]
    pruned[an.units_of((stream, 1))[list(dead)]] = True

    mm = MacModel(an)
    none = np.zeros_like(pruned)
    prunable = sum(v for i, v in mm.per_node(none).items() if i in mm.prunable_nodes())
    ratio = (mm.total(none) - mm.total(pruned)) / prunable
    # zero the consumer slices too, so every criterion sees zero importance
    # no latency take-backs: the conftest table steps both channel dims by 8, so 27 of 32 channels
    # save no time there and the group would be kept whole (what test_prune_latency checks)
    res = PruneChannels(ratio=ratio, criterion="l1", round_to=1, recover=False, latency_check=False)(m, Context())
    assert res.stats["units_pruned"] == len(dead)
    x = random_input([1, 3, 12, 12])
    ref = run(m, {"x": x})[0]
    # outputs reach ~1e3 in this unnormalized residual net: the bound is relative (float reassociation)
    assert np.abs(ref - run(res.model, {"x": x})[0]).max() < 1e-5 * np.abs(ref).max()


def test_round_to_aligns_channel_counts():
    m = _net(w=48)
    res = PruneChannels(ratio=0.3, round_to=8, recover=False)(m, Context())
    outs = _conv_outs(res.model)
    assert all(c % 8 == 0 for c in outs[1:]), outs  # the first conv reads the 3-channel input
    assert res.stats["units_pruned"] > 0


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.5])
def test_ratio_hit_with_round_to(ratio):
    m = _net(w=64, blocks=1)
    res = PruneChannels(ratio=ratio, round_to=8, recover=False)(m, Context())
    assert abs(res.stats["ratio_achieved"] - ratio) <= 0.02
    assert all(c % 8 == 0 for c in _conv_outs(res.model)[1:])


def test_min_channels_and_max_ratio():
    m = _net(w=16)
    res = PruneChannels(ratio=0.6, max_ratio=0.25, round_to=1, recover=False)(m, Context())
    assert min(_conv_outs(res.model)) >= 12  # at most a quarter of 16 removed per group
    res = PruneChannels(ratio=0.6, max_ratio=1.0, min_channels=5, round_to=1, recover=False)(m, Context())
    assert min(_conv_outs(res.model)) >= 5


def test_exclude_and_overrides():
    m = _net(w=16)
    convs = [n.name for n in m.graph.node if n.op_type == "Conv"]
    res = PruneChannels(ratio=0.3, exclude=[f"^{convs[-1]}$"], recover=False)(m, Context())
    assert _conv_outs(res.model)[-1] == 32  # the 2w tail group is untouched
    assert any(s.get("reason") == "excluded by a regex" for s in res.stats["skipped"])
    res = PruneChannels(ratio=0.3, overrides={f"^{convs[1]}$": {"ratio": 0.5, "round_to": 1}}, recover=False)(m, Context())
    assert _conv_outs(res.model)[1] == 8


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "activation"])
def test_criteria_run_and_differ_sensibly(criterion):
    m = _net(w=16)
    ctx = Context(calib=_calib(4))
    res = PruneChannels(ratio=0.3, criterion=criterion, round_to=1, recover=False, latency_check=False)(m, ctx)
    assert abs(res.stats["ratio_achieved"] - 0.3) <= 0.02
    run(res.model, {"x": random_input([1, 3, 12, 12])})


def test_bn_scale_removes_smallest_gammas():
    b = GraphBuilder(5)
    h = cbr_dead(b, "x", 3, 8)
    out = conv_dead(b, h, 8, 4)
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 4, 8, 8])])
    gamma = next(t for t in m.graph.initializer if t.name.startswith("gamma"))
    g = numpy_helper.to_array(gamma).copy()
    g[[2, 6]] = 1e-3
    gamma.CopyFrom(numpy_helper.from_array(g, gamma.name))
    res = PruneChannels(ratio=0.25, criterion="bn_scale", round_to=1, recover=False, latency_check=False)(m, Context())
    kept = numpy_helper.to_array(next(t for t in res.model.graph.initializer if t.name == gamma.name))
    assert len(kept) == 6 and np.all(kept > 1e-2)


def test_activation_needs_calibration():
    with pytest.raises(BadInputError):
        PruneChannels(criterion="activation")(_net(w=8), Context())


def test_recovery_improves_fidelity():
    m = _net(w=24)
    kw = dict(ratio=0.4, round_to=1, latency_check=False)  # the selection under test, not the stair table's
    res = PruneChannels(**kw, recover=True, calib_samples=24)(m, Context(calib=_calib(24)))
    rec = res.stats["recovery"]
    assert rec["refit"] > 0
    assert rec["fidelity_after"]["rel_l2"] < 0.5 * rec["fidelity_before"]["rel_l2"]
    # and on held-out inputs too
    plain = PruneChannels(**kw, recover=False)(m, Context()).model
    err = {"plain": 0.0, "rec": 0.0}
    for k in range(8):
        x = random_input([1, 3, 12, 12], seed=900 + k)
        ref = run(m, {"x": x})[0]
        err["plain"] += float(((run(plain, {"x": x})[0] - ref) ** 2).sum())
        err["rec"] += float(((run(res.model, {"x": x})[0] - ref) ** 2).sum())
    assert err["rec"] < err["plain"]


def test_recovery_default_follows_calibration():
    m = _net(w=8)
    assert "recovery" not in PruneChannels(ratio=0.3)(m, Context()).stats
    assert "recovery" in PruneChannels(ratio=0.3, calib_samples=4)(m, Context(calib=_calib(4))).stats


def test_nothing_prunable_returns_input_unmodified():
    b = GraphBuilder(6)
    out = conv_dead(b, "x", 3, 4)
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 4, 8, 8])])
    res = PruneChannels(ratio=0.3)(m, Context())
    assert not res.modified and res.stats["units_pruned"] == 0
    assert res.stats["skipped"]


# ------------------------------------------------------------------------------------- real models


def _fetch_names() -> list[str]:
    try:
        from models.fetch import MODELS  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the fetch script may not exist in this checkout
        return []
    return sorted(MODELS)


def _feeds(m: onnx.ModelProto) -> dict:
    """Inputs at the bound shapes: uniform floats, ones for integer inputs (ids, masks)."""
    bound = bind_input_shapes(m).inputs
    out = {}
    for vi in graph_inputs(m):
        dt = elem_type_to_numpy(vi.type.tensor_type.elem_type)
        shape = bound[vi.name]
        out[vi.name] = np.ones(shape, dt) if np.issubdtype(dt, np.integer) else np.random.default_rng(0).random(shape).astype(dt)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", _fetch_names() or ["none"])
def test_real_models_prune(name):
    if name == "none":
        pytest.skip("models/fetch.py not available")
    from models.fetch import fetch
    m = load_model(fetch(name))
    feeds = _real_feed(name)
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    # the oracle below repeats one-shot l1 selection at a fixed alignment: pin what the defaults
    # (probed round_to, auto criterion, latency check, per-group error cap) would decide otherwise
    params = dict(ratio=0.3, recover=False, criterion="l1", round_to=8, latency_check=False, max_group_error=None)
    res = PruneChannels(**params)(m, Context(input_shapes=shapes))
    onnx.checker.check_model(res.model)
    outs = run(res.model, feeds)
    assert all(np.isfinite(o).all() for o in outs if o.dtype.kind == "f")
    if res.modified:
        # never over budget; under it by at most a step: on MTCNN's PNet (groups of 10, 16, 32
        # channels) one step of 8 channels is ~7 % of the MACs, so 0.232 is the closest to 0.3 there
        assert 0.2 <= res.stats["ratio_achieved"] <= 0.3 + 0.02
        # oracle on the real graph: zeroing the consumer-side weight slices of the pruned units in
        # the original is the same function as removing them, if the groups are right
        masked = _masked_original(m, shapes, PruneChannels(**params))
        # (relative L2: kernels picked for other channel counts reorder sums, and deep attention
        # stacks amplify that to ~1e-4; a wrong group moves the output by O(1))
        for a, b in zip(run(masked, feeds), outs, strict=True):
            a, b = a.astype(np.float64), b.astype(np.float64)
            # (plus an RMS floor of 1e-5: PP-OCR's sigmoid map collapses to ~0 at this ratio)
            assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(a) + 1e-5 * np.sqrt(a.size)


def _masked_original(m: onnx.ModelProto, shapes: dict, p: PruneChannels) -> onnx.ModelProto:
    an = analyze(m, shapes)
    pol, excluded = p._policies(an, p.params.round_to)
    imp, _ = unit_importance(an, "l1")
    sel = select_units(an, imp, 0.3, "global", pol, excluded)
    out = onnx.ModelProto()
    out.CopyFrom(an.model)
    inits = {t.name: t for t in out.graph.initializer}
    for _i, w, ax, is_in in weight_spaces(an):
        if is_in:
            arr = numpy_helper.to_array(inits[w]).copy()
            idx = np.nonzero(sel.pruned[an.units_of((w, ax))])[0]
            sl = [slice(None)] * arr.ndim
            sl[ax] = idx
            arr[tuple(sl)] = 0
            inits[w].CopyFrom(numpy_helper.from_array(arr, w))
    return out


def _real_feed(name: str) -> dict:
    """The first calibration sample of models/datasets.py (real shapes; dynamic dims bound by it)."""
    from models.datasets import build, load

    data = load(build(name, "calib"))
    return {k: np.asarray(v[0]) for k, v in data.items()}  # a 0-d input (silero sr) stays an array


@pytest.mark.parametrize("stages", [1, 3])
def test_bias_only_recovery_for_wide_layers(monkeypatch, stages):
    """Layers too wide for a dense solve get W[:, removed] . E[x_removed] added to their bias."""
    monkeypatch.setattr(rec_mod, "MAX_FEATURES", 0)
    m = _net(w=16)
    res = PruneChannels(ratio=0.3, round_to=1, recover=True, recover_stages=stages, calib_samples=16)(
        m, Context(calib=_calib(16))
    )
    rec = res.stats["recovery"]
    assert rec["refit"] == 0 and rec["bias_only"] > 0
    onnx.checker.check_model(res.model)
    if rec["kept"] == "recovered":
        assert rec["fidelity_after"]["rel_l2"] <= rec["fidelity_before"]["rel_l2"]
