import json

import pytest

from onnxslim_compress.errors import ProviderError
from onnxslim_compress.runtime.latency_table import ConvSpec, LatencyTable, default_round_to
from onnxslim_compress.runtime.session import Target, make_session


def test_default_round_to_per_target():
    assert default_round_to(Target("cpu")) == 1
    assert default_round_to(Target("cuda"), "fp16") == 8
    assert default_round_to(Target("tensorrt"), "int8") == 32
    assert default_round_to(Target("cuda"), "int8") == 16


def test_table_measures_once_and_persists(tmp_path):
    spec = ConvSpec(cin=8, hw=(8, 8))
    t = LatencyTable(Target("cpu", threads=1), tmp_path / "t.json", runs=3, warmup=1)
    sweep = t.sweep(spec, [4, 8])
    assert set(sweep) == {4, 8} and all(v > 0 for v in sweep.values())
    assert t.measured == 2
    t.latency(spec, 8)
    assert t.measured == 2  # cached in memory
    t.save()
    t2 = LatencyTable(Target("cpu", threads=1), tmp_path / "t.json")
    assert t2.latency(spec, 4) == sweep[4] and t2.measured == 0  # cached on disk
    assert len(json.loads((tmp_path / "t.json").read_text())["entries"]) == 2


def test_best_count_prefers_faster_larger_count(tmp_path):
    spec = ConvSpec(cin=4, hw=(4, 4))
    t = LatencyTable(Target("cpu", threads=1), tmp_path / "t.json")
    # planted measurements: 13 channels is slow, 16 is fast, 14-15 in between
    for c, ms in {13: 1.0, 14: 0.99, 15: 0.9, 16: 0.5}.items():
        t.entries[spec.key(c)] = ms
    assert t.best_count(spec, 13, 16) == 16
    assert t.best_count(spec, 13, 14) == 13  # 1 % faster is within the noise margin


@pytest.mark.parametrize("kind", ["cuda", "tensorrt"])
def test_gpu_target_without_gpu_fails_loudly(kind):
    try:
        make_session(ConvSpec(cin=4, hw=(4, 4)).model(8), Target(kind))
    except ProviderError as e:
        assert f"target {kind}" in str(e)
        return
    pytest.skip("a GPU execution provider loaded on this machine")
