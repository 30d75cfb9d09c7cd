"""Data layer: every layout round-trips, memory mapping is real, generation follows the graph,
and every validation error names the input."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress import data as D
from onnxslim_compress.data import (
    DataSource,
    ImageOptions,
    input_specs,
    load_labels,
    open_data,
    preprocess_image,
)
from onnxslim_compress.data.images import plan_images
from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph.io import load_model
from onnxslim_compress.runtime.session import make_session


def _model(inputs, nodes=(), inits=(), outputs=None):
    outputs = outputs or [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    g = helper.make_graph(list(nodes), "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def two_input_model():
    """x: float [batch, 3, 4]; ids: int64 [1, 5] (static batch)."""
    return _model(
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5]),
        ],
        [helper.make_node("Identity", ["x"], ["out"])],
    )


@pytest.fixture
def one_input_model():
    return _model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_node("Identity", ["x"], ["out"])],
    )


@pytest.fixture
def gather_model():
    """ids -> Cast -> Gather(emb[50, 8]); tok -> Unsqueeze -> Gather(type_emb[2, 8]) through a
    DequantizeLinear; attention_mask -> Cast -> Unsqueeze -> Mul; x float; flag int64 -> Shape only."""
    emb = numpy_helper.from_array(np.zeros((50, 8), np.float32), "emb")
    temb_q = numpy_helper.from_array(np.zeros((2, 8), np.int8), "temb_q")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    ax = numpy_helper.from_array(np.array([0], np.int64), "ax")
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Gather", ["emb", "ids32"], ["e"]),
        helper.make_node("DequantizeLinear", ["temb_q", "scale"], ["temb"]),
        helper.make_node("Unsqueeze", ["tok", "ax"], ["tok_u"]),
        helper.make_node("Gather", ["temb", "tok_u"], ["t"]),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "ax"], ["mu"]),
        helper.make_node("Mul", ["e", "mu"], ["out"]),
        helper.make_node("Shape", ["my_mask"], ["shp"]),
        helper.make_node("Shape", ["other"], ["shp2"]),
    ]
    return _model(
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"]),
            helper.make_tensor_value_info("tok", TensorProto.INT64, [1, "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "seq"]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("my_mask", TensorProto.INT32, [1, 3]),
            helper.make_tensor_value_info("other", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("img", TensorProto.UINT8, [1, 2, 2, 3]),
        ],
        nodes,
        [emb, temb_q, scale, ax],
    )


def _feeds(src: DataSource):
    return [{k: np.array(v) for k, v in f.items()} for f in src]


# ---------------------------------------------------------------- single .npz / .npy


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_sample_axis_round_trips(tmp_path, two_input_model, compressed):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 3, 4)).astype(np.float32)  # 6 samples of batch 2
    ids = rng.integers(0, 9, (6, 1, 5)).astype(np.int64)
    p = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(p, x=x, ids=ids, extra=np.zeros(3))
    src = open_data(p, two_input_model)
    assert len(src) == 6 and src.names == ["x", "ids"]
    for _ in range(2):  # re-iterable: each pass starts over
        got = _feeds(src)
        assert len(got) == 6
        for i, f in enumerate(got):
            np.testing.assert_array_equal(f["x"], x[i])
            np.testing.assert_array_equal(f["ids"], ids[i])
    assert src.memory_mapped == {"x": not compressed, "ids": not compressed}


def test_npz_rows_get_batch_dim(tmp_path, two_input_model):
    x = np.arange(4 * 3 * 4, dtype=np.float32).reshape(4, 3, 4)  # rank == input rank: rows are samples
    ids = np.arange(4 * 5, dtype=np.int64).reshape(4, 5)[:, None, :]  # rank + 1
    p = tmp_path / "d.npz"
    np.savez(p, x=x, ids=ids)
    got = _feeds(open_data(p, two_input_model))
    assert [f["x"].shape for f in got] == [(1, 3, 4)] * 4
    np.testing.assert_array_equal(got[2]["x"][0], x[2])
    np.testing.assert_array_equal(got[3]["ids"], ids[3])


def test_stored_npz_is_memory_mapped(tmp_path, one_input_model):
    x = np.random.default_rng(1).standard_normal((5, 1, 2, 3)).astype(np.float32)
    p = tmp_path / "big.npz"
    np.savez(p, x=x)
    src = open_data(p, one_input_model)
    feeds = list(src)
    assert all(isinstance(f["x"], np.memmap) for f in feeds)
    assert isinstance(src.members["x"].array, np.memmap)
    assert str(src.members["x"].array.filename) == str(p.resolve())
    np.testing.assert_array_equal(np.stack([np.asarray(f["x"]) for f in feeds]), x)
    assert "memory-mapped" in src.describe()


def test_compressed_npz_is_decompressed_once(tmp_path, two_input_model, monkeypatch):
    p = tmp_path / "c.npz"
    np.savez_compressed(p, x=np.ones((3, 1, 3, 4), np.float32), ids=np.ones((3, 1, 5), np.int64))
    src = open_data(p, two_input_model)
    calls = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(3):
        assert len(list(src)) == 3
    assert len(calls) == 2  # one per array, over three full passes


def test_single_npy_for_single_input(tmp_path, one_input_model):
    x = np.random.default_rng(2).standard_normal((3, 1, 2, 3)).astype(np.float32)
    p = tmp_path / "x.npy"
    np.save(p, x)
    src = open_data(p, one_input_model)
    got = _feeds(src)
    np.testing.assert_array_equal(np.stack([f["x"] for f in got]), x)
    assert isinstance(next(iter(src))["x"], np.memmap)


def test_limit_keeps_first_samples(tmp_path, one_input_model):
    x = np.arange(10 * 6, dtype=np.float32).reshape(10, 1, 2, 3)
    p = tmp_path / "x.npz"
    np.savez(p, x=x)
    src = open_data(p, one_input_model, limit=3)
    assert len(src) == 3
    np.testing.assert_array_equal(np.stack([f["x"] for f in _feeds(src)]), x[:3])


# ---------------------------------------------------------------- folders


def test_npz_folder_round_trips_in_natural_order(tmp_path, two_input_model):
    rng = np.random.default_rng(3)
    samples = []
    for i in range(12):  # sample_2 must come before sample_10
        s = {"x": rng.standard_normal((1, 3, 4)).astype(np.float32), "ids": np.full((1, 5), i, np.int64)}
        np.savez(tmp_path / f"sample_{i}.npz", **s, label=np.array(i))
        samples.append(s)
    (tmp_path / "README.txt").write_text("ignored")
    src = open_data(tmp_path, two_input_model)
    assert len(src) == 12
    got = _feeds(src)
    for s, f in zip(samples, got, strict=True):
        np.testing.assert_array_equal(f["x"], s["x"])
        np.testing.assert_array_equal(f["ids"], s["ids"])
    assert _feeds(src)[11]["ids"][0, 0] == 11  # second pass, same order


def test_npy_folder_and_missing_batch_dim(tmp_path, one_input_model):
    xs = [np.full((2, 3), i, np.float32) for i in range(3)]  # saved without the batch dim
    for i, x in enumerate(xs):
        np.save(tmp_path / f"{i:03d}.npy", x)
    got = _feeds(open_data(tmp_path, one_input_model))
    assert [f["x"].shape for f in got] == [(1, 2, 3)] * 3
    assert [float(f["x"][0, 0, 0]) for f in got] == [0.0, 1.0, 2.0]


def test_list_source(two_input_model):
    feeds = [{"x": np.zeros((2, 3, 4)), "ids": np.ones((1, 5), np.int32)}]  # float64, int32: cast silently
    got = list(open_data(feeds, two_input_model))
    assert got[0]["x"].dtype == np.float32 and got[0]["ids"].dtype == np.int64
    src = open_data((dict(f) for f in feeds * 3), two_input_model)  # a generator is materialized
    assert len(src) == 3 and len(list(src)) == len(list(src)) == 3
    with pytest.raises(BadInputError, match="one dict"):
        open_data(feeds[0], two_input_model)


def test_silent_casts_within_kind(tmp_path, two_input_model):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.ones((2, 1, 3, 4), np.float64), ids=np.ones((2, 1, 5), np.int32))
    f = next(iter(open_data(p, two_input_model)))
    assert f["x"].dtype == np.float32 and f["ids"].dtype == np.int64


# ---------------------------------------------------------------- images


def test_preprocess_image_numbers():
    spec = D.InputSpec("img", (1, 3, 2, 2), np.dtype(np.float32))
    opts = ImageOptions(channel_order="BGR", scale=0.5, mean=(1, 2, 3), std=(2, 4, 8))
    plan = plan_images([spec], opts)
    assert plan.layout == "NCHW" and plan.size == (2, 2) and plan.channels == 3
    px = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)  # RGB
    x = preprocess_image(px, plan)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    # BGR: output channel 0 is the blue channel (index 2), normalized with mean[0], std[0]
    np.testing.assert_allclose(x[0, 0], (px[:, :, 2] * 0.5 - 1) / 2)
    np.testing.assert_allclose(x[0, 2], (px[:, :, 0] * 0.5 - 3) / 8)


def test_image_layout_guess_and_integer_inputs():
    nhwc = D.InputSpec("img", (1, 4, 5, 3), np.dtype(np.uint8))
    plan = plan_images([nhwc], ImageOptions())
    assert (plan.layout, plan.size, plan.normalize) == ("NHWC", (4, 5), False)
    px = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    x = preprocess_image(px, plan)
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x[0], px)  # raw pixels: scale/mean/std not applied


def test_image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    model = _model(
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 4, 6])],
        [helper.make_node("Identity", ["img"], ["out"])],
    )
    rng = np.random.default_rng(4)
    pixels = [rng.integers(0, 256, (4, 6, 3), dtype=np.uint8) for _ in range(3)]
    for i, px in enumerate(pixels):
        Image.fromarray(px).save(tmp_path / f"im{i}.png")
    src = open_data(tmp_path, model, image=ImageOptions(scale=1 / 255, mean=(0.5,), std=(0.25,)))
    got = _feeds(src)
    assert len(got) == 3
    for px, f in zip(pixels, got, strict=True):
        np.testing.assert_allclose(f["img"][0], (px.transpose(2, 0, 1) / 255 - 0.5) / 0.25, atol=1e-6)
    # resize: an 8x12 image comes out at the model's 4x6
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(tmp_path / "im9.png")
    assert next(iter(open_data(tmp_path, model, limit=4)))["img"].shape == (1, 3, 4, 6)


def test_image_errors_name_the_input(tmp_path):
    spec = D.InputSpec("pic", (1, 3, "h", "w"), np.dtype(np.float32))
    with pytest.raises(BadInputError, match="'pic'.*size"):
        plan_images([spec], ImageOptions())
    with pytest.raises(BadInputError, match="'pic'.*mean has 2 values"):
        plan_images([spec], ImageOptions(size=(4, 4), mean=(1.0, 2.0)))
    with pytest.raises(BadInputError, match="layout"):
        ImageOptions(layout="CHW")


# ---------------------------------------------------------------- generated


def test_generated_respects_tables_and_masks(gather_model):
    src = open_data(None, gather_model, input_shapes={"ids": [1, 64], "tok": [1, 64], "attention_mask": [1, 64]},
                    limit=20, seed=7)
    rules = src.rules
    assert (rules["ids"].kind, rules["ids"].high) == ("index", 50)
    assert (rules["tok"].kind, rules["tok"].high) == ("index", 2)  # through DequantizeLinear
    assert rules["attention_mask"].kind == "ones" and "Mul" in rules["attention_mask"].reason
    assert rules["my_mask"].kind == "ones" and "named" in rules["my_mask"].reason
    assert rules["other"].kind == "ones" and "unknown" in rules["other"].reason
    assert rules["img"].kind == "uniform"
    feeds = _feeds(src)
    assert len(feeds) == 20
    ids = np.stack([f["ids"] for f in feeds])
    assert ids.shape == (20, 1, 64) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() <= 49 and ids.max() >= 40  # 1280 draws cover the range
    tok = np.stack([f["tok"] for f in feeds])
    assert set(np.unique(tok)) == {0, 1}
    assert all((f["attention_mask"] == 1).all() for f in feeds)
    assert feeds[0]["x"].dtype == np.float32 and feeds[0]["x"].shape == (1, 4)
    xs = np.stack([f["x"] for f in feeds])
    assert abs(xs.mean()) < 0.5 and 0.6 < xs.std() < 1.4
    # deterministic per seed, identical on every pass, different for another seed
    again = _feeds(src)
    np.testing.assert_array_equal(again[5]["ids"], feeds[5]["ids"])
    other = _feeds(open_data(None, gather_model, limit=20, seed=8))
    assert not np.array_equal(other[0]["x"], feeds[0]["x"])
    assert "weak fallback" in src.describe()


def test_generated_dynamic_dims_default_to_one(gather_model):
    src = open_data(None, gather_model)
    f = next(iter(src))
    assert f["ids"].shape == (1, 1) and len(src) == D.DEFAULT_GENERATED_SAMPLES
    assert any("seq" in a for a in src.assumed)


def test_generated_data_runs_in_ort():
    """The generated ids must be valid Gather indices for onnxruntime (it fails on out-of-range)."""
    emb = numpy_helper.from_array(np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32), "emb")
    m = _model(
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 16])],
        [helper.make_node("Gather", ["emb", "ids"], ["out"])],
        [emb],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, 3])],
    )
    sess = make_session(m)
    for feed in open_data(None, m, limit=5):
        (out,) = sess.run(None, feed)
        assert out.shape == (1, 16, 3)


# ---------------------------------------------------------------- validation


def _npz(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


def test_errors_name_the_input(tmp_path, two_input_model):
    x = np.zeros((2, 1, 3, 4), np.float32)
    ids = np.zeros((2, 1, 5), np.int64)
    cases = [
        ({"x": x}, "input 'ids' is missing"),
        ({"a": x, "b": ids}, r"none of which is a model input.*\['x', 'ids'\]"),
        ({"x": np.zeros((2, 3), np.float32), "ids": ids}, "input 'x'.*rank 2"),
        ({"x": np.zeros((2, 1, 3, 5), np.float32), "ids": ids}, r"input 'x'.*dim 2 is 5, the model fixes 4"),
        ({"x": x, "ids": np.zeros((2, 2, 5), np.int64)}, r"input 'ids'.*dim 0 is 2, the model fixes 1"),
        ({"x": x.astype(np.int64), "ids": ids}, "input 'x'.*dtype int64 given, the model expects float32"),
        ({"x": x, "ids": ids.astype(np.float32)}, "input 'ids'.*dtype float32 given, the model expects int64"),
        ({"x": x, "ids": np.zeros((3, 1, 5), np.int64)}, "input 'x'.*2 samples but 'ids' has 3"),
    ]
    for arrays, pattern in cases:
        with pytest.raises(BadInputError, match=pattern):
            open_data(_npz(tmp_path, **arrays), two_input_model)


def test_folder_errors_name_input_and_file(tmp_path, two_input_model):
    np.savez(tmp_path / "s0.npz", x=np.zeros((1, 3, 4), np.float32), ids=np.zeros((1, 5), np.int64))
    np.savez(tmp_path / "s1.npz", x=np.zeros((1, 3, 4), np.float32), ids=np.zeros((1, 6), np.int64))
    src = open_data(tmp_path, two_input_model)  # the first sample is fine
    with pytest.raises(BadInputError, match=r"input 'ids' in s1.npz.*dim 1 is 6"):
        list(src)
    (tmp_path / "s1.npz").unlink()
    np.savez(tmp_path / "s2.npz", x=np.zeros((1, 3, 4), np.float32))
    with pytest.raises(BadInputError, match="input 'ids' is missing from the data in s2.npz"):
        list(open_data(tmp_path, two_input_model))


def test_int_narrowing_must_fit(tmp_path):
    m = _model([helper.make_tensor_value_info("ids", TensorProto.INT32, [1, 2])])
    ok = list(open_data(_npz(tmp_path, ids=np.array([[[1, 2]]], np.int64)), m))
    assert ok[0]["ids"].dtype == np.int32
    with pytest.raises(BadInputError, match="input 'ids'.*do not fit the model's int32"):
        list(open_data(_npz(tmp_path, ids=np.array([[[1, 2**40]]], np.int64)), m))


def test_file_and_folder_errors(tmp_path, one_input_model, two_input_model):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match="empty folder"):
        open_data(empty, one_input_model)
    (empty / "class_a").mkdir()
    with pytest.raises(BadInputError, match="only subfolders"):
        open_data(empty, one_input_model)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(BadInputError, match="bad.npz: cannot read"):
        open_data(bad, one_input_model)
    with pytest.raises(BadInputError, match="no such file"):
        open_data(tmp_path / "missing.npz", one_input_model)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "0.npy").write_bytes(b"garbage")
    with pytest.raises(BadInputError, match="0.npy: cannot read"):
        open_data(folder, one_input_model)
    npys = tmp_path / "npys"
    npys.mkdir()
    np.save(npys / "0.npy", np.zeros((1, 3, 4), np.float32))
    with pytest.raises(BadInputError, match=r"single input.*\['x', 'ids'\]"):
        open_data(npys, two_input_model)
    with pytest.raises(BadInputError, match=">= 1"):
        open_data(None, one_input_model, limit=0)


def test_input_specs_skip_initializer_inputs():
    w = numpy_helper.from_array(np.zeros(3, np.float32), "w")
    m = _model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]), helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])],
        [helper.make_node("Add", ["x", "w"], ["out"])],
        [w],
    )
    assert [s.name for s in input_specs(m)] == ["x"]


# ---------------------------------------------------------------- labels


def test_load_labels(tmp_path):
    np.save(tmp_path / "l.npy", np.array([3, 1, 2]))
    np.testing.assert_array_equal(load_labels(tmp_path / "l.npy"), [3, 1, 2])
    (tmp_path / "l.txt").write_text("4\n5\n\n6\n")
    got = load_labels(tmp_path / "l.txt")
    assert got.dtype == np.int64 and got.tolist() == [4, 5, 6]
    (tmp_path / "l.csv").write_text("label\n7\n8.0\n")
    assert load_labels(tmp_path / "l.csv").tolist() == [7, 8]
    (tmp_path / "bad.txt").write_text("1\ncat\n")
    with pytest.raises(BadInputError, match="line 2"):
        load_labels(tmp_path / "bad.txt")
    (tmp_path / "multi.csv").write_text("1,2\n")
    with pytest.raises(BadInputError, match="several fields"):
        load_labels(tmp_path / "multi.csv")


def test_model_path_accepted(tmp_path, one_input_model):
    p = tmp_path / "m.onnx"
    onnx.save(one_input_model, p)
    assert open_data(None, str(p)).names == ["x"]


# ---------------------------------------------------------------- real models (slow)


@pytest.mark.slow
def test_generated_inputs_for_minilm_follow_the_graph():
    """MiniLM's input_ids index a 30522-row word embedding; its attention_mask multiplies scores."""
    fetch = pytest.importorskip("models.fetch")
    model = load_model(fetch.fetch("minilm"))
    src = open_data(None, model, input_shapes={"input_ids": [1, 32], "attention_mask": [1, 32]}, limit=3)
    assert (src.rules["input_ids"].kind, src.rules["input_ids"].high) == ("index", 30522)
    assert src.rules["attention_mask"].kind == "ones"
    assert "used by" in src.rules["attention_mask"].reason  # decided from the graph, not the name
    sess = make_session(model)
    for feed in src:
        assert feed["input_ids"].shape == (1, 32) and feed["input_ids"].min() >= 0 and feed["input_ids"].max() < 30522
        outs = sess.run(None, feed)
        assert all(np.isfinite(o).all() for o in outs)


def test_image_folder_without_pillow_says_so(tmp_path, one_input_model, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    with pytest.raises(BadInputError, match="needs Pillow"):
        open_data(tmp_path, one_input_model)
