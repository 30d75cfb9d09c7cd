"""Fidelity metrics: exact numbers on hand-made arrays, streaming == one-shot, and compare_models
on small ORT graphs against numbers computed by hand with numpy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.runtime.metrics import (
    FidelityAccumulator,
    FidelityReport,
    accuracy,
    compare_models,
    fidelity,
    load_metric,
)

# ---------------------------------------------------------------- metric values


def test_scaled_copy():
    eps = 1e-3
    a = np.array([[3.0, -4.0, 1.0], [0.5, 2.0, -1.0]], np.float64)
    m = fidelity(a, a * (1 + eps))
    assert m["rel_l2"] == pytest.approx(eps, rel=1e-9)
    assert m["snr_db"] == pytest.approx(-20 * math.log10(eps), rel=1e-9)  # 60 dB
    assert m["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert m["max_abs"] == pytest.approx(4.0 * eps, rel=1e-9)
    assert m["mean_abs"] == pytest.approx(eps * np.abs(a).mean(), rel=1e-9)
    assert m["top1"] == 1.0
    assert m["nonfinite"] == 0.0


def test_identical_negated_orthogonal():
    a = np.array([1.0, 2.0, 2.0], np.float32)
    same = fidelity(a, a.copy())
    assert same["snr_db"] == math.inf and same["rel_l2"] == 0.0 and same["max_abs"] == 0.0 and same["cosine"] == 1.0
    neg = fidelity(a, -a)
    assert neg["cosine"] == pytest.approx(-1.0)
    assert neg["rel_l2"] == pytest.approx(2.0)
    assert neg["snr_db"] == pytest.approx(10 * math.log10(1 / 4))
    assert neg["max_abs"] == pytest.approx(4.0)
    orth = fidelity(np.array([1.0, 0.0]), np.array([0.0, 3.0]))
    assert orth["cosine"] == 0.0
    assert orth["rel_l2"] == pytest.approx(math.sqrt(10))  # ||(-1, 3)|| / ||(1, 0)||
    zeros = fidelity(np.zeros(3), np.zeros(3))
    assert (zeros["rel_l2"], zeros["cosine"], zeros["snr_db"]) == (0.0, 1.0, math.inf)
    assert fidelity(np.zeros(3), np.ones(3))["rel_l2"] == math.inf


def test_top1_agreement_counts_rows():
    a = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]], np.float32)
    b = np.array([[0.1, 0.8, 0.0], [0.1, 0.8, 0.1], [0.2, 0.3, 0.6], [0.9, 0.0, 0.1]], np.float32)
    assert fidelity(a, b)["top1"] == pytest.approx(2 / 4)
    assert fidelity(a[None], b[None])["top1"] == pytest.approx(2 / 4)  # rows along the last axis
    assert "top1" not in fidelity(a[:, 0], b[:, 0])  # rank 1: not meaningful


def test_integer_outputs_get_exact_match():
    a = np.array([1, 2, 3, 4], np.int64)
    b = np.array([1, 2, 0, 4], np.int64)
    m = fidelity(a, b)
    assert m["exact"] == 0.75 and m["max_abs"] == 3.0 and "top1" not in m


def test_nan_in_b_is_visible():
    a = np.ones((2, 3), np.float32)
    b = a.copy()
    b[1, 2] = np.nan
    m = fidelity(a, b)
    assert math.isnan(m["max_abs"]) and math.isnan(m["rel_l2"]) and m["nonfinite"] == 1.0


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(0)
    chunks_a = [rng.standard_normal((1, 10)) * s for s in (0.01, 1.0, 100.0, 3.0)]
    chunks_b = [a + rng.standard_normal(a.shape) * 0.1 for a in chunks_a]
    acc = FidelityAccumulator()
    for a, b in zip(chunks_a, chunks_b, strict=True):
        acc.update({"y": a}, {"y": b})
    streamed = acc.result()["y"]
    whole = fidelity(np.concatenate(chunks_a), np.concatenate(chunks_b))
    assert acc.samples == 4
    for k, v in whole.items():
        assert streamed[k] == pytest.approx(v, rel=1e-12), k


def test_global_not_mean_of_ratios():
    acc = FidelityAccumulator()
    acc.update({"y": np.array([1.0])}, {"y": np.array([2.0])})  # per-sample rel L2 = 1
    acc.update({"y": np.array([100.0])}, {"y": np.array([100.0])})  # per-sample rel L2 = 0
    r = acc.result()["y"]
    assert r["rel_l2"] == pytest.approx(1 / math.sqrt(10001))  # not 0.5
    assert r["snr_db"] == pytest.approx(10 * math.log10(10001))


def test_accumulator_errors_name_the_output():
    acc = FidelityAccumulator(["y", "z"])
    with pytest.raises(BadInputError, match="'z' of A is missing from B"):
        acc.update({"y": np.ones(2), "z": np.ones(2)}, {"y": np.ones(2)})
    with pytest.raises(BadInputError, match=r"'y': shape \[3\] in B but \[2\] in A"):
        FidelityAccumulator().update({"y": np.ones(2)}, {"y": np.ones(3)})


# ---------------------------------------------------------------- accuracy and custom metrics


def test_accuracy_forms():
    logits = np.array([[0.1, 0.9], [0.7, 0.3], [0.2, 0.8], [0.6, 0.4]], np.float32)
    labels = np.array([1, 0, 0, 0])
    assert accuracy(logits, labels) == 0.75
    assert accuracy(np.array([1, 0, 1, 0]), labels) == 0.75
    assert accuracy(logits, np.eye(2, dtype=np.float32)[labels]) == 0.75  # one-hot labels
    assert accuracy(logits[:, None, :], labels) == 0.75  # [N, 1, C] scores
    with pytest.raises(BadInputError, match="3 labels"):
        accuracy(logits, labels[:3])


@pytest.fixture
def metric_module(tmp_path, monkeypatch):
    """An importable module `oc_test_metric` with diff(a, b) = sum |b["y"] - a["y"]|."""
    (tmp_path / "oc_test_metric.py").write_text(
        "import numpy as np\n\ndef diff(a, b):\n    return float(np.abs(a['y'] - b['y']).sum())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "oc_test_metric:diff"


def test_load_metric(tmp_path, metric_module):
    fn = load_metric(metric_module)
    assert fn({"y": np.array([1.0, 2.0])}, {"y": np.array([1.5, 1.0])}) == 1.5
    f = tmp_path / "mymetric.py"
    f.write_text("def score(a, b):\n    return 42.0\n")
    assert load_metric(f"{f}:score")({}, {}) == 42.0
    bad = [
        ("no_colon", "expected 'package.module:function'"),
        ("no.such.module:fn", "cannot import no.such.module"),
        ("math:nope", "has no attribute 'nope'"),
        ("math:pi", "not callable"),
        (f"{tmp_path}/missing.py:fn", "no such file"),
    ]
    for spec, pattern in bad:
        with pytest.raises(BadInputError, match=pattern):
            load_metric(spec)


# ---------------------------------------------------------------- report


def _report():
    return FidelityReport(
        per_output={
            "logits": {"max_abs": 0.5, "rel_l2": 0.01, "cosine": 0.999, "snr_db": 40.0, "top1": 0.98},
            "boxes": {"max_abs": 2.0, "rel_l2": 0.002, "cosine": 0.9999, "snr_db": math.inf},
        },
        samples=10,
        accuracy_a=0.9,
        accuracy_b=0.85,
    )


def test_report_worst_and_json():
    r = _report()
    assert r.worst("max_abs") == 2.0 and r.worst_output("max_abs") == "boxes"
    assert r.worst("rel_l2") == 0.01 and r.worst("cosine") == 0.999 and r.worst("snr_db") == 40.0
    assert r.worst("top1") == 0.98  # only outputs that have it
    assert r.accuracy_drop == pytest.approx(0.05)
    with pytest.raises(BadInputError, match="unknown metric"):
        r.worst("psnr")
    with pytest.raises(BadInputError, match="applies to no output"):
        r.worst("exact")
    d = json.loads(json.dumps(r.as_dict(), allow_nan=False))
    assert d["per_output"]["boxes"]["snr_db"] == "inf" and d["samples"] == 10
    back = FidelityReport.from_dict(d)
    assert back.per_output == r.per_output and back.accuracy_b == 0.85


def test_report_table_is_aligned():
    lines = _report().table().splitlines()
    assert lines[0].split() == ["output", "max_abs", "mean_abs", "rel_l2", "cosine", "snr_db", "top1"]
    assert lines[2].split() == ["logits", "0.5", "-", "0.01", "0.999", "40", "0.98"]
    assert lines[3].split() == ["boxes", "2", "-", "0.002", "0.9999", "inf", "-"]
    assert len({len(x) for x in lines[:4]}) == 1  # header, rule and rows have one width
    assert "accuracy: A 0.9000  B 0.8500  drop +0.0500" in lines


# ---------------------------------------------------------------- compare_models on ORT


def _linear(w: np.ndarray, out_names=("y", "z")):
    """x[batch, 4] -> y = x @ w, z = Relu(y)."""
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], [out_names[0]]), helper.make_node("Relu", [out_names[0]], [out_names[1]])],
        "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in out_names],
        initializer=[numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    wb = (w + rng.standard_normal((4, 3)) * 0.05).astype(np.float32)
    x = rng.standard_normal((20, 2, 4)).astype(np.float32)  # 20 samples of batch 2
    p = tmp_path / "d.npz"
    np.savez(p, x=x)
    return w, wb, x, p


def test_compare_matches_numpy(setup):
    w, wb, x, p = setup
    r = compare_models(_linear(w), _linear(wb), p)
    assert r.samples == 20 and set(r.per_output) == {"y", "z"}
    ya, yb = x.astype(np.float64) @ w, x.astype(np.float64) @ wb
    d = yb - ya
    got = r.per_output["y"]
    assert got["rel_l2"] == pytest.approx(np.linalg.norm(d) / np.linalg.norm(ya), rel=1e-5)
    assert got["snr_db"] == pytest.approx(10 * np.log10((ya**2).sum() / (d**2).sum()), rel=1e-5)
    assert got["max_abs"] == pytest.approx(np.abs(d).max(), rel=1e-4)
    cos = (ya * yb).sum() / np.linalg.norm(ya) / np.linalg.norm(yb)
    assert got["cosine"] == pytest.approx(cos, rel=1e-6)
    assert got["top1"] == pytest.approx(np.mean(ya.argmax(-1) == yb.argmax(-1)))
    assert r.per_output["z"]["max_abs"] <= got["max_abs"] + 1e-6  # relu cannot increase the gap


def test_compare_identical_and_limit(setup):
    w, _, _, p = setup
    r = compare_models(_linear(w), _linear(w), p, limit=5)
    assert r.samples == 5
    assert r.worst("snr_db") == math.inf and r.worst("max_abs") == 0.0


def test_compare_renamed_output_is_an_error(setup):
    w, _, _, p = setup
    with pytest.raises(BadInputError, match=r"lacks output\(s\) \['z'\]"):
        compare_models(_linear(w), _linear(w, out_names=("y", "z2")), p)


def test_compare_labels_and_custom_metric(setup, metric_module):
    w, wb, x, p = setup
    labels = np.random.default_rng(1).integers(0, 3, 40)  # one per row: 20 samples x batch 2
    r = compare_models(_linear(w), _linear(wb), p, labels=labels, metrics=[metric_module])
    ya, yb = (x.reshape(-1, 4) @ w), (x.reshape(-1, 4) @ wb)
    assert r.accuracy_a == pytest.approx(np.mean(ya.argmax(-1) == labels))
    assert r.accuracy_b == pytest.approx(np.mean(yb.argmax(-1) == labels))
    per_sample = np.abs((x @ wb) - (x @ w)).sum(axis=(1, 2))
    assert r.custom[metric_module] == pytest.approx(per_sample.mean(), rel=1e-4)
    one = compare_models(_linear(w), _linear(wb), p, metric=load_metric(metric_module))
    assert one.custom["diff"] == pytest.approx(r.custom[metric_module])
    with pytest.raises(BadInputError, match="10 labels for 40 predictions"):
        compare_models(_linear(w), _linear(wb), p, labels=labels[:10])


def test_compare_on_paths_and_generated_data(setup, tmp_path):
    import onnx

    w, wb, _, _ = setup
    pa, pb = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(_linear(w), pa)
    onnx.save(_linear(wb), pb)
    r = compare_models(str(pa), str(pb), None, limit=4)
    assert r.samples == 4 and "weak fallback" in r.data
    assert 0 < r.per_output["y"]["rel_l2"] < 0.5


# ---------------------------------------------------------------- bundled model (slow)


@pytest.mark.slow
def test_bundled_digits_compare_with_labels():
    """The bundled model against itself on its own test set: perfect fidelity, accuracy as recorded."""
    from pathlib import Path

    models = Path(__file__).resolve().parents[2] / "models"
    model, data, labels = models / "digits_cnn.onnx", models / "digits_test.npz", models / "digits_test_labels.npy"
    if not (model.exists() and data.exists() and labels.exists()):
        pytest.skip("bundled digits model not built yet")
    r = compare_models(model, model, data, labels=labels)
    assert r.worst("snr_db") == math.inf and r.worst("top1") == 1.0
    assert r.accuracy_a == r.accuracy_b and r.accuracy_a > 0.9


def test_pearson_sees_destruction_that_cosine_hides_on_a_large_mean():
    rng = np.random.default_rng(0)
    heat = rng.random((4, 32, 32)).astype(np.float32)
    a = 10.0 + heat  # a heatmap on a large offset
    b = 10.0 + rng.random((4, 32, 32)).astype(np.float32)  # same offset, unrelated pattern
    m = fidelity(a, b)
    assert m["cosine"] > 0.99
    assert abs(m["pearson"]) < 0.05
    ref = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert m["pearson"] == pytest.approx(ref, abs=1e-6)
    same = fidelity(a, a * 2 + 1)  # affine: perfectly correlated
    assert same["pearson"] == pytest.approx(1.0, abs=1e-9)
    const = fidelity(np.full(8, 3.0), np.full(8, 3.0))
    assert const["pearson"] == 1.0 and fidelity(np.full(8, 3.0), np.arange(8.0))["pearson"] == 0.0


# ---------------------------------------------------------------- sequence (CTC) agreement


def _ctc_logits(frames: list[list[int]], classes: int = 4) -> np.ndarray:
    """[N, T, C] scores whose per-frame argmax is `frames` (the winner 5.0 above a deterministic
    background in [0, 1), so argmax is unambiguous)."""
    rng = np.random.default_rng(0)
    x = rng.random((len(frames), len(frames[0]), classes)).astype(np.float32)
    for n, row in enumerate(frames):
        for t, c in enumerate(row):
            x[n, t, c] = 5.0
    return x


def test_ctc_collapse_merges_repeats_before_dropping_blanks():
    from onnxslim_compress.runtime.metrics import ctc_collapse

    assert ctc_collapse([1, 1, 0, 2, 2, 0, 0]) == (1, 2)
    assert ctc_collapse([1, 0, 1]) == (1, 1)  # a blank between repeats keeps both
    assert ctc_collapse([1, 1, 1]) == (1,)
    assert ctc_collapse([0, 0]) == ()
    assert ctc_collapse([3, 0, 3], blank=3) == (0,)


def test_sequence_metric_counts_decoded_sequences_not_frames():
    """Sample 0: frames differ (a a _ b vs a _ _ b, top-1 3/4) but both read "ab". Sample 1: frames
    differ in one place too (a _ a b vs a a a b, top-1 3/4) and the text changes ("aab" vs "ab")."""
    from onnxslim_compress.runtime.metrics import MetricSpec, sequence_agreement

    a = _ctc_logits([[1, 1, 0, 2], [1, 0, 1, 2]])
    b = _ctc_logits([[1, 0, 0, 2], [1, 1, 1, 2]])
    m = fidelity(a, b)
    assert m["top1"] == pytest.approx(6 / 8)
    assert m["sequence"] == pytest.approx(1 / 2)
    assert sequence_agreement(a[:1], b[:1]) == 1.0 and fidelity(a[:1], b[:1])["top1"] == pytest.approx(3 / 4)
    assert sequence_agreement(a[1:], b[1:]) == 0.0
    # streamed per sample equals the one-shot figure, and --metric sequence reads it from a report
    acc = FidelityAccumulator(["y"])
    for k in range(2):
        acc.update({"y": a[k : k + 1]}, {"y": b[k : k + 1]})
    rep = FidelityReport(per_output=acc.result(), samples=2)
    assert MetricSpec.parse("sequence").value(rep) == pytest.approx(0.5)


def test_sequence_metric_on_integer_ids_like_ddddocr():
    """ddddocr argmaxes inside the graph: its output is int64 ids [1, T]."""
    a = np.array([[5, 5, 0, 7, 0]], dtype=np.int64)
    same_text = np.array([[5, 0, 0, 7, 7]], dtype=np.int64)
    other = np.array([[5, 5, 0, 5, 0]], dtype=np.int64)  # one frame: "57" -> "55"
    assert fidelity(a, same_text)["sequence"] == 1.0 and fidelity(a, same_text)["exact"] == pytest.approx(3 / 5)
    assert fidelity(a, other)["sequence"] == 0.0 and fidelity(a, other)["exact"] == pytest.approx(4 / 5)


def test_mean_fidelity_sequence_is_the_share_of_equal_decoded_sequences():
    """The quantizer's mixed-precision goal for a CTC recognizer (search --metric sequence): per
    sample, the decoded texts of output 0 compared, not its frames. Sample 0 reads "ab" both ways
    (top-1 3/4), sample 1 changes text, sample 2 is identical: 2 of 3, where top-1 says 10/12."""
    from onnxslim_compress.runtime.metrics import mean_fidelity

    a = _ctc_logits([[1, 1, 0, 2], [1, 0, 1, 2], [2, 2, 0, 1]])
    b = _ctc_logits([[1, 0, 0, 2], [1, 1, 1, 2], [2, 2, 0, 1]])
    ref = [[a[k : k + 1]] for k in range(3)]
    got = [[b[k : k + 1]] for k in range(3)]
    assert mean_fidelity(ref, got, "sequence") == pytest.approx(2 / 3)
    assert mean_fidelity(ref, got, "top1") == pytest.approx((3 / 4 + 3 / 4 + 1) / 3)
    assert mean_fidelity(ref[:1], got[:1], "sequence") == 1.0
