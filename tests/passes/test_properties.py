"""Property-based tests (issue 8): every pass on random valid graphs gives a valid, runnable model;
exact transformations keep outputs equal."""

import numpy as np
import onnx
from builders import random_input, run
from grammar import cnn_graphs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxslim_compress.jobs.compress import lossless_pipeline
from onnxslim_compress.passes import FoldBatchNorm, LowRank, PruneChannels, Quantize
from onnxslim_compress.passes.context import Context

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))


@SETTINGS
@given(cnn_graphs())
def test_fold_batchnorm_is_exact(g):
    model, shape = g
    res = FoldBatchNorm()(model)
    onnx.checker.check_model(res.model)
    x = random_input(shape)
    assert rel_err(run(model, {"x": x})[0], run(res.model, {"x": x})[0]) < 1e-5


@SETTINGS
@given(cnn_graphs())
def test_lossless_pipeline_is_exact_and_never_grows(g):
    model, shape = g
    res = lossless_pipeline().run(model)
    onnx.checker.check_model(res.model)
    assert len(res.model.graph.node) <= len(model.graph.node)
    x = random_input(shape)
    assert rel_err(run(model, {"x": x})[0], run(res.model, {"x": x})[0]) < 1e-5


@SETTINGS
@given(cnn_graphs(), st.sampled_from([0.2, 0.5]))
def test_prune_gives_valid_runnable_model(g, ratio):
    model, shape = g
    res = PruneChannels(ratio=ratio, round_to=1)(model)
    onnx.checker.check_model(res.model)
    x = random_input(shape)
    out = run(res.model, {"x": x})[0]
    assert out.shape == run(model, {"x": x})[0].shape and np.isfinite(out).all()


@SETTINGS
@given(cnn_graphs())
def test_low_rank_keeps_outputs_at_ratio_one_and_runs_at_any_ratio(g):
    model, shape = g
    x = random_input(shape)
    ref = run(model, {"x": x})[0]
    full = LowRank(mode="ratio", value=1.0, min_params=0)(model)
    onnx.checker.check_model(full.model)
    assert rel_err(ref, run(full.model, {"x": x})[0]) < 1e-4
    half = LowRank(mode="ratio", value=0.3, min_params=0)(model)
    onnx.checker.check_model(half.model)
    assert run(half.model, {"x": x})[0].shape == ref.shape


QUANT_SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@QUANT_SETTINGS
@given(cnn_graphs(max_steps=4), st.sampled_from(["int8", "fp16"]))
def test_quantize_gives_valid_runnable_model(g, mode):
    model, shape = g
    calib = [{"x": random_input(shape, seed=s)} for s in range(3)]
    res = Quantize(mode=mode, calib_samples=3)(model, Context(calib=calib))
    onnx.checker.check_model(res.model)
    x = random_input(shape)
    ref = run(model, {"x": x})[0]
    out = run(res.model, {"x": x})[0]
    assert out.shape == ref.shape and np.isfinite(out).all()
    if mode == "fp16":  # half precision keeps outputs close on these small, well-scaled graphs
        assert rel_err(ref, out) < 2e-2
