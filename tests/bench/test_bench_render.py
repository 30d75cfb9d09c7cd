"""benchmarks/render.py and run_all.py's pure parts: tables from small fake results, prose kept intact.

No benchmark runs here: the inputs are hand-written JSON shaped like each script's output, so every
expected cell below is computed by hand from them.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


render = _load("render")
run_all = _load("run_all")

LOSSLESS = [
    {"model": "digits_cnn", "nodes": 38, "bn": 11,
     "onnxslim": {"nodes": 27, "bn": 0, "rel_err": 0.0, "seconds": 0.08, "latency_ratio": 1.044, "ratio_p10_p90": [0.537, 1.859]},
     "ours": {"nodes": 27, "bn": 0, "rel_err": 2.6e-07, "seconds": 0.14, "latency_ratio": 0.588, "ratio_p10_p90": [0.536, 1.849]}},
    {"model": "yolov8n", "nodes": 323, "bn": 0,
     "onnxslim": {"nodes": 323, "bn": 0, "rel_err": 0.0, "seconds": 0.99, "latency_ratio": 1.012, "ratio_p10_p90": [0.5, 1.9]},
     "ours": {"nodes": 320, "bn": 0, "rel_err": 0.0, "seconds": 1.19, "latency_ratio": 1.007, "ratio_p10_p90": [0.55, 1.66]}},
    {"model": "minilm_l6", "nodes": 720, "bn": 0,
     "onnxslim": {"nodes": 381, "bn": 0, "rel_err": 0.0, "seconds": 3.1, "latency_ratio": 1.0, "ratio_p10_p90": [0.9, 1.1]},
     "ours": {"nodes": 188, "bn": 0, "rel_err": 1e-06, "seconds": 4.0, "latency_ratio": 0.95, "ratio_p10_p90": [0.9, 1.0],
              "ops": {"MultiHeadAttention": 6}},
     "ours_over_onnxslim": {"ratio": 0.951, "ci95": [0.94, 0.962]}},
]
QUANT = {
    "yolov8n": {
        "fp32": {"output_cosine": 1.0},
        "ours": {"wall_s": 14.36, "peak_rss_mb": 402.7, "fidelity": {"output_cosine": 0.99976}, "latency_ratio": 0.63,
                 "latency_p10_p90": [0.494, 0.866]},
        "ort_static": {"wall_s": 17.92, "peak_rss_mb": 290.4, "fidelity": {"output_cosine": 0.99851}, "latency_ratio": 0.731,
                       "latency_p10_p90": [0.543, 0.949]},
        "ort_dynamic": {"wall_s": 2.64, "peak_rss_mb": 152.6, "fidelity": {"output_cosine": 0.99952}, "latency_ratio": 2.786,
                        "latency_p10_p90": [2.042, 3.789]},
    },
    "minilm": {  # ours is slower than ORT static here: its latency must not be bold
        "fp32": {"embedding_cosine": 1.0},
        "ours": {"wall_s": 4.1, "peak_rss_mb": 709.9, "fidelity": {"embedding_cosine": 0.9951}, "latency_ratio": 0.558,
                 "latency_p10_p90": [0.41, 1.098]},
        "ort_static": {"wall_s": 3.3, "peak_rss_mb": 375.2, "fidelity": {"embedding_cosine": 0.6356}, "latency_ratio": 0.547,
                       "latency_p10_p90": [0.415, 0.861]},
        "ort_dynamic": {"error": "RuntimeError: boom"},
    },
    "_meta": {"total_s": 333.5, "threads": 2, "runs": 40, "command": "python benchmarks/bench_quantize.py --runs 40"},
}
PRUNE = {"args": {"threads": 1}, "results": [
    {"model": "yolov8n", "ratio": 0.3, "achieved": 0.3014, "macs_removed_total": 0.3014, "latency_ratio": 0.7867,
     "latency_p10_p90": [0.612, 0.919], "fidelity_plain": {"rel_l2": 0.158, "cosine": 0.9878},
     "fidelity_recovered": {"rel_l2": 0.131, "cosine": 0.9914}, "prune_recover_s": 33.4},
    {"model": "yolov8n", "ratio": 0.3, "round_to": 8, "achieved": 0.3014, "latency_ratio": 0.7456,
     "latency_p10_p90": [0.633, 0.856]},
]}
SEARCH = {
    "note": "fake",
    "yolov8n": {
        "metric": "cosine", "max_drop": 0.01, "baseline_metric": 1.0,
        "ort_quantize_static": {"latency_ratio": 0.66, "drop": 0.0016, "feasible": True},
        "search": {"evaluated": 10, "best_trial": 6, "trials_to_feasible": 1, "trials_to_best": 7, "best_drop": 0.00995,
                   "wall_seconds": 1566.1, "picked": "trial",
                   "claim": {"latency_ratio": 0.505, "speedup": 1.98, "ci95": [0.488, 0.526], "speedup_ci95": [1.90, 2.05]},
                   "best_params": {"prune_channels.enabled": False, "low_rank.enabled": True, "low_rank.value": 0.81159,
                                   "quantize.enabled": True, "quantize.calibration": "percentile"}},
        "final": {"best_preset": "lowrank energy 0.9",
                  "search best": {"latency_ratio": 0.501, "speedup": 1.995, "p10_p90": [0.384, 0.66]},
                  "lowrank energy 0.9": {"latency_ratio": 0.574, "speedup": 1.741, "p10_p90": [0.45, 0.77]},
                  "ort quantize_static": {"latency_ratio": 0.645, "speedup": 1.55, "p10_p90": [0.484, 0.91]}},
        "profile_ab": {"ratio": 0.513, "claim_over_profile": 0.984, "agrees": True},
        "cache_bench": {"with_cache": {"mean_s": 10.79, "per_trial_s": [17.83, 3.78]},
                        "without_cache": {"mean_s": 20.08, "per_trial_s": [13.34, 15.71]}},
    },
}

FOOTPRINT = {
    "yolov8n": {
        "original": {"size_bytes": 12_000_000, "macs": 1_012_627_200, "params": 3_009_158, "nodes": 323},
        "onnxslim": {"wall_s": 2.56, "peak_rss_mb": 199.3, "size_bytes": 12_000_000, "macs": 1_012_627_200,
                     "params": 3_009_158, "nodes": 323},
        "ours": {"wall_s": 14.0, "peak_rss_mb": 400.0, "size_bytes": 3_000_000, "macs": 1_012_627_200,
                 "params": 3_009_158, "nodes": 700},
        "ort_dynamic": {"error": "RuntimeError: no"},
    },
    "_meta": {"total_s": 1.0},
}

PROSE_A = "# Benchmarks\n\nHand-written intro with | pipes | and `code`.\n\n"
PROSE_B = "\n\nAnalysis: ours 0.63 vs ORT 0.73 -- written by a human, must survive.\n\n"
PROSE_C = "\n\n## Tail\n\nMore prose.\n"
STALE = "| old | table |\n|---|---|\n| 1 | 2 |\n"


def _doc(*names: str, body: str = STALE) -> str:
    blocks = [f"<!-- generated:{n} -->\n{body}<!-- /generated -->" for n in names]
    return PROSE_A + blocks[0] + PROSE_B + PROSE_C.join(blocks[1:]) + PROSE_C


def _res(**data) -> render.Results:
    return render.Results(data={k: data.get(k) for k in render.RESULT_FILES})


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_lossless_table_cells():
    rows = _rows(render.t_lossless(_res(lossless=LOSSLESS)))
    assert rows[0] == ["digits_cnn", "38 (BN 11)", "27 / 1.04 (0.54-1.86) / 0.0e+00 / 0.1",
                       "27 / 0.59 (0.54-1.85) / 2.6e-07 / 0.1", "-", "-"]  # rows of older runs: no direct A/B
    assert rows[1][3] == "320 / 1.01 (0.55-1.66) / 0.0e+00 / 1.2"
    assert rows[2][4:] == ["0.95 [0.94-0.96]", "6 attention fused"]


def test_quantize_table_bold_only_where_ours_is_best_and_errors_shown():
    rows = _rows(render.t_quantize(_res(quantize=QUANT)))
    assert len(rows) == 6  # 3 tools x 2 models
    assert rows[0] == ["YOLOv8n", "cos 1", "**ours**", "**0.63 [0.49-0.87]**", "**cos 0.99976**", "14.4", "403"]
    assert rows[1] == ["", "", "ORT static", "0.73 [0.54-0.95]", "cos 0.99851", "17.9", "290"]
    # MiniLM: 0.558 > 0.547, so ours' latency is plain; its cosine is the best, so bold
    assert rows[3][3] == "0.56 [0.41-1.10]" and rows[3][4] == "**cos 0.99510**"
    assert rows[5][2:4] == ["ORT dynamic", "failed"] and "boom" in rows[5][4]


def test_prune_and_round_to_tables_split_rows():
    main = _rows(render.t_prune(_res(prune=PRUNE)))
    sweep = _rows(render.t_prune_round_to(_res(prune=PRUNE)))
    assert len(main) == 1 and len(sweep) == 1
    assert main[0][:5] == ["yolov8n", "0.3", "0.301", "0.301", "0.79 (0.61-0.92)"]
    assert main[0][7:] == ["0.9878", "0.9914", "-"]
    assert sweep[0] == ["yolov8n", "8", "0.301", "0.75 (0.63-0.86)"]


def test_search_tables():
    rows = _rows(render.t_search(_res(search=SEARCH)))
    assert rows == [["YOLOv8n", "cos drop <= 0.01", "low rank 0.812 + int8 percentile (6)", "0.00995", "1 / 7 (of 10)",
                     "1.98x (1.90-2.05)", "1.95x (agrees: 2%)", "**2.00x**", "1.74x (lowrank energy 0.9)", "-", "1.55x"]]
    # the pick timed against the preset directly: the verdict reads the interval, not the median
    row = json.loads(json.dumps(SEARCH["yolov8n"]))
    row["search"]["best_params"]["quantize.float_share"] = 0.25
    verdicts = {}
    for ci, want in (([0.93, 0.97], "faster"), ([0.97, 1.02], "tie"), ([1.01, 1.05], "slower")):
        row["final"]["pick_over_preset"] = {"ratio": sum(ci) / 2, "ci95": ci}
        got = _rows(render.t_search(_res(search={"yolov8n": row})))[0]
        verdicts[want] = got[9].endswith(f": {want}")
        assert got[2] == "low rank 0.812 + int8 percentile, 0.25 of units float (6)"
    assert verdicts == {"faster": True, "tie": True, "slower": True}
    row["search"]["best_preset"] = {"preset": "lowrank energy 0.9", "params": row["search"]["best_params"]}
    got = _rows(render.t_search(_res(search={"yolov8n": row})))[0]
    assert got[9] == "1.030 (1.010-1.050): the preset itself (same configuration rebuilt)"
    cache = _rows(render.t_search_cache(_res(search=SEARCH)))
    assert cache == [["YOLOv8n", "10.8 (17.8, 3.8)", "20.1 (13.3, 15.7)"]]


def test_search_table_says_why_the_original_is_the_pick():
    """Two ways to the original: no candidate met the constraint, or none was faster for sure."""
    row = json.loads(json.dumps(SEARCH["yolov8n"]))
    row["search"].update(picked="original", best_trial=None, best_drop=None,
                         claim={"latency_ratio": 1.0, "speedup": 1.0, "source": "original"})
    infeasible = json.loads(json.dumps(row))
    infeasible["search"]["picked_reason"] = "no candidate met the constraint (max drop 0.01 on cosine) in 10 trials"
    rows = _rows(render.t_search(_res(search={"slow": row, "infeasible": infeasible})))
    assert [r[2] for r in rows] == ["the original (no candidate faster for sure)", "the original (no candidate met the constraint)"]
    assert rows[0][5] == rows[1][5] == "1.00x (the original)"


def test_search_pick_names_the_float_goal_and_the_metric():
    """A pick that keeps the sensitive layers float says until what; the anchors row names the
    constraint's own metric (seq), not cosine."""
    row = json.loads(json.dumps(SEARCH["yolov8n"]))
    row["metric"] = "sequence"
    row["search"].update(best_drop=0.0, best_params={"prune_channels.enabled": False, "low_rank.enabled": False,
                                                     "quantize.enabled": True, "quantize.calibration": "auto",
                                                     "quantize.min_fidelity": "sequence=0.975"})
    rows = _rows(render.t_search(_res(search={"ppocr_rec": row})))
    assert rows[0][1:4] == ["seq drop <= 0.01", "int8 auto, float until sequence=0.975 (6)", "0"]
    out = render.t_anchors(_res(search={"ppocr_rec": row}))
    assert "| ours `search` (int8 auto, float until sequence=0.975) | 0.50 (0.38-0.66) | seq drop 0 |" in out


def test_anchors_table_collects_every_tool_per_model():
    out = render.t_anchors(_res(lossless=LOSSLESS, quantize=QUANT, prune=PRUNE, search=SEARCH))
    yolo = out.split("**YOLOv8n**")[1].split("**")[0]
    tools = [r[0] for r in _rows(yolo.strip())]
    assert tools == ["ours `--quantize int8`", "ORT `quantize_static` (QDQ, per-channel, U8S8)", "ORT `quantize_dynamic`",
                     "ours `search` (low rank 0.812 + int8 percentile)", "ours `--prune 0.3 --calib`",
                     "ours lossless `compress`", "onnxslim"]
    rows = {r[0]: r for r in _rows(yolo.strip())}
    assert rows["ours `--prune 0.3 --calib`"][4] == "-30.1 %"
    assert rows["ORT `quantize_static` (QDQ, per-channel, U8S8)"][5:7] == ["17.9", "290"]
    assert "**digits CNN**" in out  # digits_cnn of the lossless JSON is the same model as digits elsewhere


def test_headline_one_row_per_model_with_each_anchor():
    rows = _rows(render.t_headline(_res(lossless=LOSSLESS, quantize=QUANT, search=SEARCH)))
    by = {r[0]: r for r in rows}
    assert by["YOLOv8n"] == ["YOLOv8n", "0.63 / cos 0.99976", "0.73 / cos 0.99851", "2.79 / cos 0.99952",
                             "0.50 / cos drop 0.00995", "1.01 / 1.01, 320 / 323 nodes"]
    assert by["MiniLM-L3"][3] == "failed"
    assert by["digits CNN"][1:4] == ["-", "-", "-"]  # lossless only
    sized = {r[0]: r for r in _rows(render.t_headline(_res(lossless=LOSSLESS, quantize=QUANT, footprint=FOOTPRINT)))}
    assert sized["YOLOv8n (12.0 MB)"][1] == "0.63 / cos 0.99976 / 3.0 MB"
    assert sized["YOLOv8n (12.0 MB)"][3] == "2.79 / cos 0.99952"  # its footprint build failed: no size


def test_replace_blocks_keeps_prose_byte_for_byte_and_is_idempotent():
    doc = _doc("lossless", "quantize")
    res = _res(lossless=LOSSLESS, quantize=QUANT)
    new, done, kept = render.replace_blocks(doc, res)
    assert done == ["lossless", "quantize"] and kept == []
    assert STALE not in new
    assert new.startswith(PROSE_A) and PROSE_B in new and new.endswith(PROSE_C)
    # everything outside the blocks is unchanged: strip the bodies and compare
    strip = render.MARKER.sub(lambda m: f"[{m.group('name')}]", new)
    assert strip == render.MARKER.sub(lambda m: f"[{m.group('name')}]", doc)
    assert "0.59 (0.54-1.85)" in new and "**cos 0.99976**" in new
    again, _, _ = render.replace_blocks(new, res)
    assert again == new


def test_block_without_data_is_kept():
    doc = _doc("lossless", "prune")
    new, done, kept = render.replace_blocks(doc, _res(lossless=LOSSLESS))
    assert done == ["lossless"] and kept == ["prune"]
    assert new.count(STALE) == 1  # prune's old table survives


@pytest.mark.parametrize("doc, what", [
    (_doc("losless"), "unknown generated block"),
    (PROSE_A + "<!-- generated:lossless -->\n" + STALE, "unbalanced"),
    (_doc("lossless") + "<!-- /generated -->", "unbalanced"),
])
def test_bad_markers_fail_loudly(doc, what):
    with pytest.raises(render.RenderError, match=what):
        render.replace_blocks(doc, _res(lossless=LOSSLESS))


def test_main_renders_files_and_check_mode(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "lossless.json").write_text(json.dumps(LOSSLESS))
    (results / "all.json").write_text(json.dumps({"machine": {"cpu_model": "Fake CPU", "flags": {"avx2": True, "vnni": False},
                                                              "cpus": 2}, "runs": {}}))
    md = tmp_path / "B.md"
    md.write_text(_doc("lossless", "runs"))
    assert render.main(["--results", str(results), "--files", str(md), "--check"]) == 1
    assert STALE in md.read_text()  # --check writes nothing
    assert render.main(["--results", str(results), "--files", str(md)]) == 0
    text = md.read_text()
    assert "Fake CPU" in text and "without vnni" in text and "27 / 0.59" in text
    assert "| lossless | its section's command (not run by run_all) |" in text  # file without a run record
    assert render.main(["--results", str(results), "--files", str(md), "--check"]) == 0


def test_with_overrides_only_where_the_script_takes_the_flag():
    sec = run_all.SECTIONS["lossless"]
    cmd = run_all.with_overrides(sec.commands[0], sec, 7, 3)
    assert cmd[cmd.index("--runs") + 1] == "7" and cmd[cmd.index("--threads") + 1] == "3"
    assert cmd.count("--runs") == 1
    lr = run_all.SECTIONS["low_rank"]  # takes --runs, fixes its threads
    cmd = run_all.with_overrides(lr.commands[0], lr, 5, 3)
    assert cmd[-2:] == ["--runs", "5"] and "--threads" not in cmd


def test_machine_info_reads_cpu_flags():
    info = run_all.machine_info("processor\t: 0\nmodel name\t: Test Xeon\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
                                "processor\t: 1\nmodel name\t: Test Xeon\nflags\t\t: fpu avx2\n")
    assert info["cpu_model"] == "Test Xeon"
    assert info["flags"] == {"avx2": True, "avx512": True, "vnni": True, "amx": False}


def test_merge_search_keeps_models_not_rerun(tmp_path):
    (tmp_path / "search.json").write_text(json.dumps({"note": "old", "digits": {"final": {}, "old": True},
                                                      "yolov8n": {"final": {}, "old": True}}))
    (tmp_path / "search_yolov8n.json").write_text(json.dumps({"settings": {"trials": 3}, "yolov8n": {"final": {}, "old": False}}))
    assert run_all.merge_search(run_all.SECTIONS["search"], tmp_path)
    merged = json.loads((tmp_path / "search.json").read_text())
    assert merged["digits"]["old"] is True and merged["yolov8n"]["old"] is False
    assert merged["settings"] == {"yolov8n": {"trials": 3}}


def test_repository_files_have_balanced_known_markers():
    """BENCHMARKS.md and README.md themselves: every marker closes and names a known block."""
    root = BENCH.parent
    for f in ("BENCHMARKS.md", "README.md"):
        text = (root / f).read_text()
        new, done, kept = render.replace_blocks(text, render.Results())
        # no data -> nothing changes; the gpu block renders its "not measured yet" text, the same as stored
        assert new == text and done == (["gpu"] if f == "BENCHMARKS.md" else []) and kept


def test_footprint_table_sizes_relative_to_original():
    rows = _rows(render.t_footprint(_res(footprint=FOOTPRINT)))
    assert rows[0] == ["YOLOv8n", "original", "12.00", "1.01 G", "3.01 M", "323", "-", "-"]
    assert rows[1][1:3] == ["onnxslim", "12.00 (x1.00)"]
    assert rows[2][1:3] == ["ours `--quantize int8`", "3.00 (x0.25)"] and rows[2][6:] == ["14.0", "400"]
    assert rows[3][1:3] == ["ORT `quantize_dynamic`", "failed"]


def test_anchors_table_takes_size_and_macs_from_footprint():
    out = render.t_anchors(_res(lossless=LOSSLESS, quantize=QUANT, footprint=FOOTPRINT))
    rows = {r[0]: r for r in _rows(out.split("**YOLOv8n**")[1].split("**")[0].strip())}
    assert rows["original (fp32)"][1:5] == ["1.00", "reference", "12.00", "1.01 G"]
    assert rows["ours `--quantize int8`"][3:5] == ["3.00", "1.01 G"]
    # lossless.json times onnxslim in-process (no RSS): the footprint run's own process gives both
    assert rows["onnxslim"][3] == "12.00" and rows["onnxslim"][5:7] == ["2.6", "199"]
    assert rows["ORT `quantize_dynamic`"][3] == "-"  # its footprint build failed: no size shown


def test_run_section_streams_logs_and_records_failure(tmp_path, capsys):
    sec = run_all.Section("fake", [["python", "-c", "print('hello from fake'); raise SystemExit(3)"],
                                   ["python", "-c", "print('never runs')"]], ["fake.json"], runs_flag=False)
    rec = run_all.run_section(sec, runs=5, threads=None, log_dir=tmp_path)
    assert rec["rc"] == 3 and rec["threads"] == 2
    assert rec["commands"][0].startswith("python -c") and "--runs" not in rec["commands"][0]
    assert len(rec["loadavg_before"]) == 3 and rec["wall_s"] >= 0
    log = (tmp_path / "fake.log").read_text()
    assert "hello from fake" in log and "never runs" not in log  # stops at the first failing command
    assert "hello from fake" in capsys.readouterr().out


PRUNE_LATENCY = {
    "isa": ["avx2", "avx512f"], "threads": 1, "criterion": "activation",
    "alignment": [{"precision": "fp32", "step": 16, "cost": {}}, {"precision": "int8", "step": 4, "cost": {}}],
    "results": [{
        "model": "ppocr_cls", "orig": {"top1": 1.0, "agree": 1.0, "mean_abs_dp": 0.0},
        "one_shot": {"round_to": 16, "achieved": 0.3036, "speed": 1.319, "speed_p10_p90": [1.25, 1.45],
                     "task": {"top1": 0.975, "mean_abs_dp": 0.0284}},
        "gap": {"round_to": 16, "achieved": 0.3036, "speed": 1.304, "speed_p10_p90": [1.06, 1.54],
                "speed_ci95": [1.21, 1.38], "task": {"top1": 0.985, "mean_abs_dp": 0.0148}, "refine": {"error_one_shot": 0.0243, "error_refined": 0.0012}},
        "gap_vs_one_shot_latency": 0.984,
    }],
}


def test_prune_latency_table_shows_the_loss_interval_and_the_pass_estimate_against_eval():
    d = copy.deepcopy(PRUNE_LATENCY)
    d["results"][0]["one_shot"].update({
        "recovery_rel_l2": 0.1875, "measured_on": ["linear_1.tmp_1"],
        "task": {"top1": 0.996, "mean_abs_dp": 0.0063, "rel_l2": 0.0703, "n": 1000, "loss_points": 0.3,
                 "loss_ci95": [-0.1, 0.8], "lost": 4, "gained": 1}})
    rows = _rows(render.t_prune_latency(_res(prune_latency=d)).split("\n\n", 1)[1])
    assert rows[0][5:9] == ["0.996 (1.000)", "0.3 [-0.1, 0.8] on 1000 (-4/+1)", "0.0063", "0.1875 (logits) / 0.0703"]
    d["results"][0]["gap"]["orig"] = {"top1": 0.965}  # a row kept from a run on another eval set
    rows = _rows(render.t_prune_latency(_res(prune_latency=d)).split("\n\n", 1)[1])
    assert rows[1][5] == "0.985 (0.965)"


def test_prune_latency_table_records_isa_and_gap():
    text = render.t_prune_latency(_res(prune_latency=PRUNE_LATENCY))
    head, table = text.split("\n\n", 1)
    assert "avx2, avx512f" in head and "fp32 16, int8 4" in head
    rows = _rows(table)
    assert rows[0] == ["ppocr_cls", "one-shot, probed round_to", "16", "0.304", "x1.32 (1.25-1.45)", "0.975 (1.000)",
                       "-", "0.0284", "-", "-"]
    assert rows[1][4] == "x1.30 [1.21-1.38]"  # the 95 % interval, where measured, in place of p10-p90
    assert rows[1][-1] == "0.0243 -> 0.0012" and rows[2][:2] == ["ppocr_cls", "GaP / one-shot latency"]


ALIGNMENT = {"sittings": [{
    "when": "2026-12-02 03:40 UTC", "isa": ["avx2", "avx512_vnni"], "threads": 1, "runs": 15,
    "alignment": [{
        "precision": "int8", "step": 8, "decision": "stair", "old_rule_step": 16, "load_avg": [4.01, 4.4],
        "evidence": {"step": 16, "layer": "3x3 conv, cin swept (cout 64)", "cost_over_best": 0.063,
                     "interval": [0.045, 0.085], "resolution": 0.021},
        "layers": [{"layer": "3x3 conv, cout swept (cin 96)", "free": [1, 2, 4, 8, 16]},
                   {"layer": "3x3 conv, cin swept (cout 64)", "free": [4, 8]}]}]}]}


def test_alignment_table_names_the_deciding_figure_and_the_old_rule():
    text = render.t_alignment(_res(alignment=ALIGNMENT))
    head, table = text.split("\n\n", 1)
    assert head == "CPU ISA: avx2, avx512_vnni."
    assert "free steps (3x3 conv, cout swept (cin 96) / 3x3 conv, cin swept (cout 64))" in table.splitlines()[0]
    assert _rows(table) == [["2026-12-02 03:40 UTC", "1", "4.0-4.4", "int8", "8 (stair)",
                             "16: +6.3% [+4.5%, +8.5%], resolution 2.1%, 3x3 conv, cin swept (cout 64)",
                             "1,2,4,8,16 / 4,8", "16"]]


def test_attention_table_bolds_int8_only_when_faithful_and_faster():
    def tools(c_dyn, c_ours):
        base = {"median_ms": 1.0, "vs_fp32": 1.0, "ci95": [1.0, 1.0], "nodes": 1, "attention_kernels": 0}
        return {"fp32": {**base, "cosine": 1.0}, "onnxslim": {**base, "cosine": 1.0},
                "ours_lossless": {**base, "cosine": 1.0, "vs_fp32": 0.95, "ci95": [0.93, 0.97]},
                "ort_dynamic": {**base, "cosine": c_dyn, "vs_fp32": 0.4, "ci95": [0.39, 0.41]},
                "ours_int8": {**base, "cosine": c_ours, "vs_fp32": 0.36, "ci95": [0.35, 0.37]}}
    meta = {"machine": {}, "threads": 1, "runs": 300, "loadavg_start": [1.0], "loadavg_end": [1.0], "command": "c"}
    rows = [{"model": "minilm_l6", "seq": 128, "tokens_mean": 110.2, "fused": 6, "tools": tools(0.968, 0.993),
             "ours_lossless_over_onnxslim": {"ratio": 0.95, "ci95": [0.94, 0.96]},
             "ours_int8_over_ort_dynamic": {"ratio": 0.9, "ci95": [0.88, 0.92]}},
            {"model": "minilm", "seq": 32, "tokens_mean": 23.0, "fused": 3, "tools": tools(0.974, 0.997),
             "ours_lossless_over_onnxslim": {"ratio": 1.0, "ci95": [0.99, 1.01]},
             "ours_int8_over_ort_dynamic": {"ratio": 0.98, "ci95": [0.95, 1.02]}}]
    table = render.t_attention(_res(attention={"_meta": meta, "rows": rows}))
    got = _rows(table.split("\n\n", 1)[1])
    assert got[0][1:3] == ["128 (110)", "6"] and got[0][-3:] == ["cos 0.9680, 0.40 [0.39-0.41]", "cos 0.9930, 0.36 [0.35-0.37]",
                                                                   "**0.90 [0.88-0.92]**"]
    assert got[1][-1] == "0.98 [0.95-1.02]"  # the interval reaches 1: not shown as a win
