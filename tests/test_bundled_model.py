"""The committed digits model, its data files and its recorded accuracy agree with each other.

Why: other tests and the benchmarks use models/digits_cnn.onnx as the one real trained model; if
someone retrains it and forgets to commit one of the files, or the data layout drifts, the accuracy
numbers every compression result is compared against silently become wrong. This catches it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxslim_compress.runtime.session import Target, make_session

MODELS = Path(__file__).resolve().parents[1] / "models"
MODEL = MODELS / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def facts() -> dict:
    return json.loads((MODELS / "digits_cnn.json").read_text())


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(str(MODEL))


def test_model_passes_checker_and_has_the_signature(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "input" and dims == ["batch", 1, 32, 32]
    assert out.name == "logits" and [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == [
        "batch",
        10,
    ]
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) == 13


def test_structure_other_tests_rely_on(model: onnx.ModelProto, facts: dict) -> None:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    for op in ("BatchNormalization", "Add", "Concat", "Gemm", "Conv"):
        assert counts.get(op, 0) >= 1, f"{op} missing from the bundled model"
    # BN is kept, not folded: one BN per Conv.
    assert counts["BatchNormalization"] == counts["Conv"]
    assert any(
        n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute) for n in model.graph.node
    ), "depthwise Conv missing"
    assert counts == facts["op_counts"]


def test_data_files_have_the_project_layout() -> None:
    for name in ("digits_calib.npz", "digits_test.npz"):
        with np.load(MODELS / name) as z:
            assert list(z.files) == ["input"]
            x = z["input"]
        assert x.dtype == np.float32 and x.ndim == 5 and x.shape[1:] == (1, 1, 32, 32)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 + 1e-6  # pixel/16 scaling
    with np.load(MODELS / "digits_calib.npz") as z:
        assert z["input"].shape[0] == 256


def test_test_accuracy_matches_recorded_value(facts: dict) -> None:
    with np.load(MODELS / "digits_test.npz") as z:
        x = z["input"]
    labels = np.load(MODELS / "digits_test_labels.npy")
    assert labels.dtype == np.int64 and labels.shape == (x.shape[0],)
    assert x.shape[0] == facts["test_samples"]
    sess = make_session(onnx.load(str(MODEL)), Target(kind="cpu", threads=1))
    logits = sess.run(["logits"], {"input": x.reshape(-1, 1, 32, 32)})[0]
    assert logits.shape == (x.shape[0], 10)
    acc = float((logits.argmax(1) == labels).mean())
    assert abs(acc - facts["test_accuracy"]) <= 1e-6
    assert acc >= 0.97
    # One sample at a time (batch 1, the layout calibration feeds use) gives the same logits.
    one = sess.run(["logits"], {"input": x[0]})[0]
    np.testing.assert_allclose(one, logits[:1], atol=1e-4)


def test_committed_files_stay_small() -> None:
    """The repository carries these files; keep them under 3 MB together."""
    names = ("digits_cnn.onnx", "digits_calib.npz", "digits_test.npz", "digits_test_labels.npy", "digits_cnn.json")
    assert sum((MODELS / n).stat().st_size for n in names) < 3_000_000
