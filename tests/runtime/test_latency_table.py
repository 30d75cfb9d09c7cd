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
    # planted measurements with their repeats: 13 channels is slow, 16 is fast, 14-15 in between;
    # each entry's two fastest repeats are 0.03 ms apart (a burst-hit third one does not count)
    for c, ms in {13: 1.0, 14: 0.99, 15: 0.9, 16: 0.5}.items():
        t.entries[spec.key(c)], t.reps[spec.key(c)] = ms, [ms, ms + 0.03, ms + 0.5]
    assert t.best_count(spec, 13, 16) == 16
    assert t.best_count(spec, 13, 14) == 13  # 0.01 ms faster is inside the entries' noise (0.042 ms)
    assert t.measured == 0


def test_settle_keeps_each_round_as_a_repeat(tmp_path):
    spec = ConvSpec(cin=4, hw=(4, 4))
    t = LatencyTable(Target("cpu", threads=1), tmp_path / "t.json", runs=3, warmup=1)
    t.settle([(spec, 4), (spec, 8)], rounds=3)
    assert t.measured == 6  # 2 points x 3 rounds
    for c in (4, 8):
        rep = t.repeats(spec, c)
        assert len(rep) == 3 and t.latency(spec, c) == min(rep)
        assert t.noise(spec, c) == pytest.approx(sorted(rep)[1] - sorted(rep)[0])  # the two fastest
    t.settle([(spec, 4)], rounds=3)
    assert t.measured == 6  # settled: not measured again
    t.save()
    t2 = LatencyTable(Target("cpu", threads=1), tmp_path / "t.json")
    assert t2.repeats(spec, 8) == pytest.approx(t.repeats(spec, 8), abs=1e-6) and t2.measured == 0


def test_an_entry_without_repeats_is_measured_again(tmp_path):
    # a file of an older version: entries only, no measured noise
    spec = ConvSpec(cin=4, hw=(4, 4))
    (tmp_path / "t.json").write_text(json.dumps({"entries": {spec.key(4): 0.5}, "settled": [spec.key(4)]}))
    t = LatencyTable(Target("cpu", threads=1), tmp_path / "t.json", runs=3, warmup=1)
    assert t.entries == {} and t.settled == set()
    t.latency(spec, 4)
    assert t.measured == 1 and len(t.repeats(spec, 4)) == 3  # a single measurement: its 3 block minima


@pytest.mark.parametrize("kind", ["cuda", "tensorrt"])
def test_gpu_target_without_gpu_fails_loudly(kind):
    try:
        make_session(ConvSpec(cin=4, hw=(4, 4)).model(8), Target(kind))
    except ProviderError as e:
        assert f"target {kind}" in str(e)
        return
    pytest.skip("a GPU execution provider loaded on this machine")
