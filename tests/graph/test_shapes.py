import numpy as np
import pytest
from builders import GraphBuilder, resnet_like

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph.shapes import bind_input_shapes, infer_shapes, parse_input_shapes
from onnxslim_compress.runtime.session import shapes_from_run


def test_parse_input_shapes():
    assert parse_input_shapes(["a:1x3x8x8", "ids:2x128"]) == {"a": [1, 3, 8, 8], "ids": [2, 128]}
    assert parse_input_shapes(["ns::x:1x4"]) == {"ns::x": [1, 4]}  # the last colon separates
    for bad in ["nocolon", "a:1xbx3", "a:0x3", ":1x2"]:
        with pytest.raises(BadInputError):
            parse_input_shapes([bad])


def test_unbound_dynamic_dims_count_as_one_and_are_reported():
    b = bind_input_shapes(resnet_like(batch="N"))
    assert b.inputs == {"input": [1, 3, 16, 16]}
    assert b.assumed == ["input[0] (N) = 1"]
    b2 = bind_input_shapes(resnet_like(batch="N"), {"input": [4, 3, 16, 16]})
    assert b2.inputs["input"] == [4, 3, 16, 16] and b2.assumed == []
    with pytest.raises(BadInputError, match="where the model fixes 16"):
        bind_input_shapes(resnet_like(batch="N"), {"input": [4, 3, 16, 17]})


def test_onnx_inference_gives_every_shape():
    shapes, bound, method = infer_shapes(resnet_like(batch="N"), {"input": [2, 3, 16, 16]})
    assert method == "onnx" and shapes["logits"] == [2, 10]


def test_falls_back_to_onnxruntime_when_onnx_cannot_infer():
    # com.microsoft ops are unknown to onnx's shape inference but run in ORT
    b = GraphBuilder(3)
    y = b.conv("x", 3, 4)
    g = b.node("Gelu", [y], domain="com.microsoft")
    z = b.conv(g, 4, 2)
    m = b.model([("x", [1, 3, 5, 5])], [(z, [1, 2, 5, 5])], domains={"com.microsoft": 1})
    shapes, _, method = infer_shapes(m, runner=shapes_from_run)
    assert method == "onnxruntime"
    assert shapes[g] == [1, 4, 5, 5] and shapes[z] == [1, 2, 5, 5]
    assert np.prod(shapes[g]) == 100


def _dynamic_image_model(layout: str = "NCHW"):
    from onnx import helper

    b = GraphBuilder(0)
    if layout == "NCHW":
        b.conv("images", 3, 4)
        dims = [1, 3, "H", "W"]
    else:
        b.conv(b.node("Transpose", ["images"], perm=[0, 3, 1, 2]), 3, 4)
        dims = ["N", "H", "W", 3]
    b.nodes[-1].output[0] = "out"
    m = b.model([("images", dims)], [("out", None)])
    helper.set_model_props(m, {"imgsz": "[320, 256]", "stride": "32"})
    return m


def test_metadata_imgsz_binds_dynamic_image_dims():
    from onnxslim_compress.graph.shapes import shapes_from_metadata

    m = _dynamic_image_model()
    assert shapes_from_metadata(m) == {"images": [1, 3, 320, 256]}
    b = bind_input_shapes(m)
    assert b.inputs == {"images": [1, 3, 320, 256]} and b.assumed == []
    assert b.from_metadata == ["images[2] (H) = 320", "images[3] (W) = 256"]
    assert shapes_from_metadata(_dynamic_image_model("NHWC")) == {"images": [1, 320, 256, 3]}
    # the user's --input-shape wins over metadata
    assert bind_input_shapes(m, {"images": [1, 3, 64, 64]}).inputs["images"] == [1, 3, 64, 64]
    del m.metadata_props[:]
    assert shapes_from_metadata(m) == {} and bind_input_shapes(m).inputs["images"] == [1, 3, 1, 1]


def test_feed_shapes_bind_only_dynamic_inputs():
    from onnxslim_compress.graph.shapes import shapes_from_feed

    m = _dynamic_image_model()
    feed = {"images": np.zeros((2, 3, 40, 48), np.float32)}
    assert shapes_from_feed(m, feed) == {"images": [2, 3, 40, 48]}
    assert shapes_from_feed(resnet_like(), {"input": np.zeros((1, 3, 16, 16), np.float32)}) == {}
    assert shapes_from_feed(m, {"images": np.zeros((3, 40, 48), np.float32)}) == {}  # rank mismatch: no evidence
    assert shapes_from_feed(m, None) == {}


def test_unbound_dims_are_noted_once(caplog):
    m = resnet_like(batch="Nq")  # a symbol no other test uses: its note has not been said yet
    with caplog.at_level("WARNING", logger="onnxslim_compress"):
        for _ in range(3):
            bind_input_shapes(m)
        bind_input_shapes(m, quiet=True)
    notes = [r.getMessage() for r in caplog.records if "note:" in r.getMessage()]
    assert notes == ["onnxslim-compress: note: dynamic dims not bound by data, metadata or --input-shape count as 1: "
                     "input[0] (Nq) = 1; bind them with --input-shape input:NQx3x16x16"]


def test_the_note_names_a_usable_input_shape_for_odd_dims(caplog):
    b = GraphBuilder(0)
    b.conv("x", 3, 4)
    m = b.model([("x", [-1, 3, "p2o.DynamicDimension.1", "w"])], [(b.nodes[-1].output[0], None)])
    with caplog.at_level("WARNING", logger="onnxslim_compress"):
        bound = bind_input_shapes(m)
    assert bound.inputs == {"x": [1, 3, 1, 1]}
    assert "--input-shape x:Nx3xNxW" in caplog.text
