"""make_session builds a session from the caller's model without changing it, and lowers a too-new IR
version once, on a copy (in memory, through a file for >2 GB, or from an offloaded workspace)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import resnet_like
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.graph import io as model_io
from onnxslim_compress.graph import weights
from onnxslim_compress.runtime.session import Target, make_session, shapes_from_run


def _reference(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The model run by onnxruntime directly, at the highest IR version it reads."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.ir_version = model_io.max_ir_version()
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _too_new(model: onnx.ModelProto) -> onnx.ModelProto:
    model.ir_version = model_io.max_ir_version() + 1
    return model


@pytest.fixture
def count_clamps(monkeypatch):
    calls: list[int] = []
    real = model_io.clamp_ir_version

    def counting(m: onnx.ModelProto) -> onnx.ModelProto:
        calls.append(m.ir_version)
        return real(m)

    monkeypatch.setattr(model_io, "clamp_ir_version", counting)
    return calls


def test_the_callers_model_is_unchanged_and_the_version_lowered_once(count_clamps):
    m = _too_new(resnet_like())
    before = m.SerializeToString()
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    sess = make_session(m, Target(kind="cpu", threads=1))
    got = sess.run(None, {"input": x})[0]
    assert m.SerializeToString() == before and m.ir_version == model_io.max_ir_version() + 1
    assert count_clamps == [model_io.max_ir_version() + 1]
    np.testing.assert_allclose(got, _reference(resnet_like(), {"input": x}), rtol=1e-5, atol=1e-6)


def test_a_model_the_runtime_reads_is_neither_copied_nor_clamped(count_clamps):
    m = resnet_like()
    assert m.ir_version <= model_io.max_ir_version()
    assert model_io.for_runtime(m) is m
    make_session(m, Target(kind="cpu", threads=1))
    assert count_clamps == []


def test_big_models_go_through_a_file_and_stay_unchanged(monkeypatch, count_clamps):
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1000)  # every model counts as >2 GB
    m = _too_new(resnet_like())
    before = m.SerializeToString()
    x = np.ones((1, 3, 16, 16), np.float32)
    got = make_session(m, Target(kind="cpu", threads=1)).run(None, {"input": x})[0]
    assert m.SerializeToString() == before
    # lowered once on the copy; save_model (every file it writes must load) then finds it done
    assert count_clamps == [model_io.max_ir_version() + 1, model_io.max_ir_version()]
    np.testing.assert_allclose(got, _reference(resnet_like(), {"input": x}), rtol=1e-5, atol=1e-6)


def test_offloaded_models_stay_unchanged(tmp_path, monkeypatch, count_clamps):
    monkeypatch.setattr(weights, "OFFLOAD_MIN_BYTES", 1024)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
                          [numpy_helper.from_array(w, "W")])
    m = _too_new(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    with weights.Workspace.create(tmp_path) as ws:
        assert ws.adopt(m, None) == 1 and weights.has_offloaded(m)
        before = m.SerializeToString()
        x = rng.standard_normal((1, 64)).astype(np.float32)
        got = make_session(m, Target(kind="cpu", threads=1)).run(None, {"x": x})[0]
        assert m.SerializeToString() == before
        assert count_clamps == [model_io.max_ir_version() + 1]
    np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5)


def test_shapes_from_run_reads_the_shapes_of_inner_tensors():
    m = resnet_like(batch="N")
    names = [n.output[0] for n in m.graph.node[:2]]
    shapes = shapes_from_run(m, {"input": [2, 3, 16, 16]}, names)
    assert set(shapes) == set(names) and all(s[0] == 2 for s in shapes.values())
