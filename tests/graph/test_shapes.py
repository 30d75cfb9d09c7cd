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
