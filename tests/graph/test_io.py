import os

import numpy as np
import onnx
import pytest
from builders import random_input, resnet_like, run
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph import io as model_io
from onnxslim_compress.graph.io import (
    check_output_path,
    clamp_ir_version,
    load_model,
    max_ir_version,
    normalize,
    save_model,
    upgrade_opset,
)


def test_load_rejects_garbage(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_bytes(b"\x00\x01garbage that is not a protobuf\xff" * 10)
    with pytest.raises(BadInputError, match="not a valid ONNX model"):
        load_model(p)


def test_load_rejects_text_file(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_text("hello world\n")
    with pytest.raises(BadInputError):
        load_model(p)


def test_load_rejects_truncated(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(resnet_like(), str(p))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="not a valid ONNX model"):
        load_model(p)


def test_load_missing_file_and_directory(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(BadInputError, match="directory"):
        load_model(tmp_path)


def test_missing_external_data(tmp_path):
    p = tmp_path / "m.onnx"
    save_model(resnet_like(), p, external_data=True)
    assert (tmp_path / "m.onnx.data").exists()
    os.remove(tmp_path / "m.onnx.data")
    with pytest.raises(BadInputError, match="external data file missing: m.onnx.data"):
        load_model(p)


def test_external_data_roundtrip_keeps_weights_in_memory(tmp_path):
    m = resnet_like()
    x = random_input([1, 3, 16, 16])
    ref = run(m, {"input": x})[0]
    p = tmp_path / "m.onnx"
    save_model(m, p, external_data=True)
    # the caller's proto still holds the weights after an external-data save
    assert all(t.data_location == TensorProto.DEFAULT for t in m.graph.initializer)
    np.testing.assert_allclose(run(m, {"input": x})[0], ref, rtol=0, atol=0)
    back = load_model(p)
    np.testing.assert_allclose(run(back, {"input": x})[0], ref, rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]


def test_large_model_goes_external_automatically(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 10_000)
    p = tmp_path / "m.onnx"
    save_model(resnet_like(), p)
    assert (tmp_path / "m.onnx.data").stat().st_size > 10_000
    assert p.stat().st_size < 10_000


def test_save_is_atomic_no_temp_left(tmp_path, monkeypatch):
    p = tmp_path / "out.onnx"

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", boom)
    with pytest.raises(BadInputError, match="No space left"):
        save_model(resnet_like(), p)
    assert os.listdir(tmp_path) == []


def test_ir_version_clamped_on_save(tmp_path):
    m = resnet_like()
    m.ir_version = onnx.IR_VERSION
    p = tmp_path / "m.onnx"
    save_model(m, p)
    assert onnx.load(str(p)).ir_version == max_ir_version() <= onnx.IR_VERSION
    import onnxruntime as ort

    ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])


def test_clamp_keeps_lower_versions():
    m = resnet_like()
    m.ir_version = 7
    assert clamp_ir_version(m).ir_version == 7


def test_normalize_removes_initializers_listed_as_inputs():
    m = resnet_like()
    x = random_input([1, 3, 16, 16])
    ref = run(m, {"input": x})[0]
    for t in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    m.ir_version = 3  # the IR 3 convention: every initializer listed as an input (IR >= 4: defaults, kept)
    rep = normalize(m)
    assert len(rep.initializers_removed_from_inputs) == len(m.graph.initializer)
    assert [i.name for i in m.graph.input] == ["input"]
    np.testing.assert_allclose(run(m, {"input": x})[0], ref, atol=0)


def test_upgrade_opset_records_and_keeps_outputs():
    m = resnet_like(opset=9)
    x = random_input([1, 3, 16, 16])
    ref = run(m, {"input": x})[0]
    up, changed = upgrade_opset(m, 13)
    assert changed and model_io.main_opset(up) == 13
    np.testing.assert_allclose(run(up, {"input": x})[0], ref, atol=1e-5)
    same, changed = upgrade_opset(up, 11)
    assert not changed and same is up


def test_check_output_path(tmp_path):
    src = tmp_path / "a.onnx"
    src.write_bytes(b"x")
    with pytest.raises(BadInputError, match="is the input"):
        check_output_path(src, [src])
    with pytest.raises(BadInputError, match="does not exist"):
        check_output_path(tmp_path / "nodir" / "b.onnx", [src])
    assert check_output_path(tmp_path / "b.onnx", [src]) == tmp_path / "b.onnx"


def test_unwritable_folder(unwritable_dir):
    with pytest.raises(BadInputError, match="not writable"):
        check_output_path(os.path.join(unwritable_dir, "b.onnx"), [])


def test_subgraph_initializers_are_seen():
    then_g = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "c")],
    )
    assert [t.name for t in model_io.all_initializers(
        helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=then_g)], "g", [], [])
    )] == ["c", "c"]
