"""The API takes paths, ModelProto, numpy dicts or open_data sources for data, and converts or clearly
refuses a graphsurgeon graph or an onnx-ir model (issue 19)."""

import sys

import numpy as np
import onnx
import pytest
from builders import random_input, resnet_like, run

from onnxslim_compress import BadInputError, Pipeline
from onnxslim_compress.data import open_data
from onnxslim_compress.jobs.compress import compress, flags_pipeline


@pytest.fixture
def files(tmp_path):
    m = tmp_path / "m.onnx"
    onnx.save(resnet_like(), str(m))
    arrays = {"input": np.stack([random_input((1, 3, 16, 16), seed=s) for s in range(8)])}
    calib = tmp_path / "calib.npz"
    np.savez(calib, **arrays)
    return m, calib, arrays


def _outputs(path_or_model, x):
    m = onnx.load(str(path_or_model)) if not isinstance(path_or_model, onnx.ModelProto) else path_or_model
    return run(m, {"input": x})[0]


def test_calib_as_path_dict_source_and_feed_list_give_the_same_model(files, tmp_path):
    m, calib, arrays = files
    pipe = lambda: flags_pipeline(prune={"ratio": 0.3})  # noqa: E731 - a fresh pipeline per call
    x = random_input((1, 3, 16, 16), seed=99)
    ref = compress(str(m), str(tmp_path / "a.onnx"), pipeline=pipe(), calib=str(calib), eval_data=str(calib))
    assert ref.report["passes"][1]["stats"]["recovery"]["samples_fit"] == 6  # the calib file was read: 8 samples, 2 held out
    y_ref = _outputs(tmp_path / "a.onnx", x)
    feeds = [{"input": arrays["input"][i]} for i in range(8)]
    for k, data in enumerate([arrays, open_data(str(calib), str(m)), feeds, calib]):
        out = tmp_path / f"o{k}.onnx"
        res = compress(onnx.load(str(m)), str(out), pipeline=pipe(), calib=data, eval_data=data)
        np.testing.assert_allclose(_outputs(out, x), y_ref, rtol=1e-5, atol=1e-5)
        assert res.report["fidelity"]["samples"] == 8


def test_a_bad_data_dict_is_bad_input(files):
    m, _, _ = files
    with pytest.raises(BadInputError, match="input name: array of samples"):
        compress(str(m), pipeline=flags_pipeline(prune={"ratio": 0.3}), calib={"input": [1, 2, 3]})


def test_graphsurgeon_graph_is_converted_or_refused(files, tmp_path, monkeypatch):
    import onnx_graphsurgeon as gs  # a test extra (pyproject), never skipped

    m, calib, _ = files
    graph = gs.import_onnx(onnx.load(str(m)))
    res = compress(graph, str(tmp_path / "g.onnx"), calib=str(calib))
    x = random_input((1, 3, 16, 16), seed=3)
    np.testing.assert_allclose(_outputs(tmp_path / "g.onnx", x), _outputs(m, x), rtol=1e-4, atol=1e-4)
    assert res.report["input"] is None
    assert Pipeline([]).run(gs.import_onnx(onnx.load(str(m)))).model.graph.node  # no RecursionError
    monkeypatch.setitem(sys.modules, "onnx_graphsurgeon", None)  # as if uninstalled
    with pytest.raises(BadInputError, match="needs onnx_graphsurgeon to convert it; export it first"):
        compress(graph, str(tmp_path / "g2.onnx"))


def test_onnx_ir_model_is_converted(files, tmp_path):
    import onnx_ir  # a test extra: the conversion needs the real package

    m, calib, _ = files
    ir_model = onnx_ir.serde.deserialize_model(onnx.load(str(m)))
    compress(ir_model, str(tmp_path / "i.onnx"), calib=str(calib))
    x = random_input((1, 3, 16, 16), seed=4)
    np.testing.assert_allclose(_outputs(tmp_path / "i.onnx", x), _outputs(m, x), rtol=1e-4, atol=1e-4)


def test_other_objects_are_refused_naming_what_is_accepted(files, monkeypatch):
    class Graph:  # looks like an onnx-ir object, but is no onnx_ir.Model
        pass

    Graph.__module__ = "onnx_ir._core"
    with pytest.raises(BadInputError, match="an onnx_ir Graph is not a Model"):
        compress(Graph())
    monkeypatch.setitem(sys.modules, "onnx_ir", None)  # as if uninstalled
    with pytest.raises(BadInputError, match="needs onnx_ir to convert it"):
        compress(Graph())
    with pytest.raises(BadInputError, match="expected a path to an .onnx file, an onnx.ModelProto"):
        compress(42)


def test_readme_pipeline_step(files, tmp_path):
    import onnxslim_compress as osc

    m, calib, _ = files
    res = osc.compress(str(m), str(tmp_path / "out.onnx"), pipeline=osc.flags_pipeline(prune={"ratio": 0.3},
                       quantize={"mode": "int8"}), calib=str(calib), eval_data=str(calib), max_drop={"cosine": 0.5})
    assert res.output == tmp_path / "out.onnx" and res.report["fidelity"]["per_output"]["logits"]["cosine"] > 0.5
    assert osc.open_data is open_data
