"""benchmarks/bench_gpu.py and the GPU kit (benchmarks/gpu/): the dry run end to end, and the kit's parts.

The dry run is the GPU run's code path on the CPU EP with the bundled digits CNN, so a typo or a
changed API fails here, not during the few minutes of device time a session gets. The kit's pieces
(fatbin slimming, parts split and received across calls, wheel unpacking) are checked on small
hand-made inputs whose expected bytes are known.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


render = _load("render", BENCH / "render.py")
bench_gpu = _load("bench_gpu", BENCH / "bench_gpu.py")
payload = _load("payload", BENCH / "gpu" / "payload.py")
stage = _load("stage", BENCH / "gpu" / "stage.py")


def _finite_pos(x) -> bool:
    return isinstance(x, float | int) and math.isfinite(x) and x > 0


# ------------------------------------------------------------------------------------------ dry run


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> tuple[dict, str, float]:
    out = tmp_path_factory.mktemp("dry")
    t0 = time.monotonic()
    # a roomy deadline: the shared test machine can be slow; a quiet one finishes in about 25 s either way
    p = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--dry-run", "--deadline", "100", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=170)
    wall = time.monotonic() - t0
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text(), wall


def test_dry_run_records_machine_and_checks(dry):
    d, _, _ = dry
    assert d["_meta"]["dry_run"] is True and d["_meta"]["partial"] is False and d["_meta"]["target"] == "cpu"
    ep = d["ep_check"]
    assert ep["ok"] is True and ep["providers"][0] == "CPUExecutionProvider" and ep["max_abs_vs_cpu"] == 0.0
    if not d["env"]["nvidia_smi"]["available"]:
        # no GPU: the CUDA check is refused with the project's ProviderError message, never a silent CPU run
        assert d["cuda_probe"]["loaded"] is False and d["cuda_probe"]["error"].startswith("target cuda:")
    trt = d["tensorrt"]
    assert set(trt) >= {"in_build", "libraries", "loaded"} and trt["loaded"] is False
    assert trt.get("reason") or trt.get("error")
    assert d["env"]["onnxruntime"] and d["env"]["nvidia_smi"]["available"] in (True, False)


def test_dry_run_measures_every_candidate(dry):
    d, _, _ = dry
    m = d["models"]["digits"]
    assert m["samples"] == {"calib": 8, "eval": 16}
    assert m["inputs"] == {"input": [1, 1, 32, 32]}
    assert _finite_pos(m["fp32"]["median_ms"]) and m["fp32"]["p90_ms"] >= m["fp32"]["median_ms"]
    assert list(m["candidates"]) == list(bench_gpu.CANDIDATES)
    for label, c in m["candidates"].items():
        assert "latency" in c, (label, c)
        lat = c["latency"]
        assert all(_finite_pos(lat[k]) for k in ("ratio", "ratio_p10", "ratio_p90", "median_ms", "fp32_median_ms"))
        assert lat["ratio_p10"] <= lat["ratio_p90"] and lat["runs"] == m["runs"] == 10
        assert lat["providers"] == ["CPUExecutionProvider"]
        fid = c["fidelity"]
        assert fid["samples"] == 16 and -1.0 <= fid["cosine"] <= 1.0 and fid["rel_l2"] >= 0
        assert 0.0 <= fid["accuracy"] <= 1.0 and 0.0 <= fid["accuracy_fp32"] <= 1.0
        assert c["build_s"] > 0 and c["placement"] == {"checked": False}
    fp16, q = m["candidates"]["fp16"], m["candidates"]["int8 QDQ"]
    assert fp16["fidelity"]["cosine"] > 0.999 and fp16["fidelity"]["rel_l2"] < 0.01
    assert fp16["fidelity"]["accuracy"] == fp16["fidelity"]["accuracy_fp32"]
    assert q["fidelity"]["cosine"] > 0.99
    assert "quantize" in fp16["modified"] and "prune_channels" in m["candidates"]["pruned 0.3"]["modified"]
    assert "low_rank" in m["candidates"]["low rank 0.9"]["modified"]
    assert m["candidates"]["pruned 0.3"]["macs"] < m["candidates"]["pruned 0.3"]["macs_fp32"]


def test_dry_run_search_and_rendered_section(dry):
    d, md, wall = dry
    s = d["search"]
    assert s["model"] == "digits" and s["targets"] == ["cpu"]
    r = s["cpu"]
    assert isinstance(r["best_params"], dict) and _finite_pos(r["best_ratio"]) and r["trials"] >= 1
    assert r["command"].startswith("onnxslim-compress search ") and "--target cpu" in r["command"]
    assert _finite_pos(s["cross"]["on_cpu"]["cpu pick"]["ratio"])
    assert md.startswith("**Dry run on the CPU EP")
    for label in ["fp32", *bench_gpu.CANDIDATES]:
        assert f"| digits CNN | {label} |" in md
    assert "Search on digits CNN" in md and "| `--target cpu` |" in md
    # the block renders the same from the JSON that run_all would find in benchmarks/results
    assert render.t_gpu(render.Results(data={"gpu": d})) == md.rstrip("\n")
    assert wall < 120  # about 35 s on the shared 2-core machine; the brief asks < 60 s when it is quiet


# ------------------------------------------------------------------------------------------ pieces


def test_gpu_block_without_results_says_not_measured_and_repo_block_matches():
    assert render.t_gpu(render.Results()) == render.GPU_NOT_MEASURED
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert f"<!-- generated:gpu -->\n{render.GPU_NOT_MEASURED}\n<!-- /generated -->" in text or \
        (BENCH / "results" / "gpu.json").exists()


def test_render_main_fills_the_gpu_block_from_results(tmp_path, dry):
    d, md, _ = dry
    (tmp_path / "gpu.json").write_text(json.dumps(d))
    doc = tmp_path / "B.md"
    doc.write_text(f"# x\n\n<!-- generated:gpu -->\n{render.GPU_NOT_MEASURED}\n<!-- /generated -->\nafter\n")
    assert render.main(["--results", str(tmp_path), "--files", str(doc)]) == 0
    assert doc.read_text() == f"# x\n\n<!-- generated:gpu -->\n{md.rstrip()}\n<!-- /generated -->\nafter\n"


def test_cpu_node_probe_names_the_cpu_fallback_not_a_config_conflict():
    """The placement probe leaves the CPU EP out of its provider list: ORT refuses an explicit CPU EP
    together with disabled CPU fallback, which would report 'some nodes on CPU' for every model."""
    got = bench_gpu.cpu_nodes(bench_gpu.probe_model(), bench_gpu.Target("cuda"))
    assert got["checked"] is True
    if shutil.which("nvidia-smi") is None:  # no GPU: every node lands on the CPU, and the probe says so
        assert got["all_on_gpu"] is False and got["reason"]
    assert "Conflicting session configuration" not in got.get("reason", "")
    assert bench_gpu.cpu_nodes(bench_gpu.probe_model(), bench_gpu.Target("cpu")) == {"checked": False}


def test_resume_keeps_measured_models_of_an_interrupted_run(tmp_path, dry):
    d, _, _ = dry
    prev = json.loads(json.dumps(d))
    prev["_meta"]["partial"] = True  # as a run killed at its limit leaves it
    (tmp_path / "prev.json").write_text(json.dumps(prev))
    assert bench_gpu.main(["--dry-run", "--resume", str(tmp_path / "prev.json"), "--out", str(tmp_path / "o")]) == 0
    r = json.loads((tmp_path / "o" / "gpu.json").read_text())
    assert r["_meta"]["resumed_models"] == ["digits"] and r["_meta"]["partial"] is False
    assert r["models"]["digits"] == d["models"]["digits"] and r["search"] == d["search"]
    # a finished run is not resumed: everything is measured again
    assert bench_gpu.main(["--dry-run", "--no-search", "--resume", str(tmp_path / "o" / "gpu.json"),
                           "--out", str(tmp_path / "o2")]) == 0
    r2 = json.loads((tmp_path / "o2" / "gpu.json").read_text())
    assert r2["_meta"]["resumed_models"] == [] and "search" not in r2
    assert list(r2["models"]["digits"]["candidates"]) == list(bench_gpu.CANDIDATES)


def test_time_limit_nests_and_rearms_the_outer_limit():
    t0 = time.monotonic()
    # the inner 5 s limit is clamped to the outer 0.3 s
    with pytest.raises(bench_gpu.BudgetExceeded), bench_gpu.time_limit(0.3), bench_gpu.time_limit(5.0):
        time.sleep(2.0)
    assert time.monotonic() - t0 < 1.5
    t0 = time.monotonic()
    with pytest.raises(bench_gpu.BudgetExceeded), bench_gpu.time_limit(0.4):
        with bench_gpu.time_limit(0.05):  # noqa: SIM117 - ends in time: the outer limit must still fire afterwards
            pass
        time.sleep(2.0)
    assert time.monotonic() - t0 < 1.5


def test_search_section_two_targets_compares_picks(tmp_path):
    """The GPU run's two-search path, with finished picks handed in (no subprocess, no GPU)."""
    md = bench_gpu.model_data("digits", bench_gpu.Budget.dry())
    b = bench_gpu.Budget.dry()
    picks = {"gpu-like": ({"quantize.enabled": True}, md.path), "cpu": ({"quantize.enabled": False}, md.path)}
    seen = []

    def fake(md_, kind, b_, share, work):
        seen.append((kind, share > 0))
        params, path = picks["gpu-like" if len(seen) == 1 else "cpu"]
        return {"best_params": params, "best_ratio": 1.0, "best_drop": 0.0, "trials": 1, "model": str(path)}

    row = bench_gpu.search_section(md, bench_gpu.Target("cpu", threads=1), b, time.monotonic() + 30, tmp_path,
                                   search=fake, kinds=[("gpu-like", "cpu"), ("cpu", "cpu")])
    assert seen == [("cpu", True), ("cpu", True)]
    assert row["same_pick"] is False and row["targets"] == ["gpu-like", "cpu"]
    on = row["cross"]["on_cpu"]
    assert set(on) == {"gpu-like pick", "cpu pick"}
    # the same file as fp32 both times: the ratio is noise around 1
    assert all(0.1 < on[k]["ratio"] < 10 for k in on)
    md_text = render.gpu_search_text(row)
    assert "Same pick on both targets: no." in md_text and "| timed on | cpu pick | gpu-like pick |" in md_text


def _fatbin(entries: list[tuple[int, int, bytes]]) -> bytes:
    """A fatbin container: (kind, arch, payload) entries with 32-byte entry headers."""
    body = b""
    for kind, arch, data in entries:
        head = struct.pack("<HHIQ", kind, 0x101, 32, len(data)) + b"\0" * 12 + struct.pack("<I", arch)
        body += head + data
    return struct.pack("<IHHQ", payload.FATBIN_MAGIC, 1, 16, len(body)) + body


def test_zero_foreign_cubins_keeps_sizes_headers_and_ptx():
    sm80, sm90, ptx = b"\x11" * 64, b"\x22" * 48, b"\x33" * 40
    blob = b"ELF-host-code" + _fatbin([(2, 80, sm80), (2, 90, sm90), (1, 80, ptx)]) + b"tail" + _fatbin([(2, 86, sm80)])
    buf = bytearray(blob)
    st = payload.zero_foreign_cubins(buf, {90})
    assert len(buf) == len(blob)
    assert st["entries"] == 4 and st["zeroed_bytes"] == 128 and st["bytes_by_arch"] == {"80": 104, "86": 64, "90": 48}
    got = {(e["kind"], e["arch"]): bytes(buf[e["payload"]: e["payload"] + e["size"]]) for e in payload.fatbin_entries(buf)}
    assert got == {(2, 80): b"\0" * 64, (2, 90): sm90, (1, 80): ptx, (2, 86): b"\0" * 64}
    assert buf[:13] == b"ELF-host-code"
    with pytest.raises(ValueError, match="no cubin for sm"):
        payload.zero_foreign_cubins(bytearray(_fatbin([(2, 80, sm80)])), {90})


def test_parts_received_over_several_calls_unpack_identical(tmp_path):
    tree = tmp_path / "tree"
    (tree / "site" / "pkg").mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    (tree / "site" / "pkg" / "blob.bin").write_bytes(data)
    (tree / "cache").mkdir()
    (tree / "cache" / "m.txt").write_text("model")
    blob = tmp_path / "p.tar.xz"
    payload.make_tarball(tree, blob)
    staged = tmp_path / "gpukit"
    dirs = payload.split_parts(blob, staged, 120_000, {"contents": {"x": 1}})
    assert [d.name for d in dirs] == ["p1", "p2", "p3"]
    dest = tmp_path / "device"
    for k, d in enumerate(dirs, 1):
        call = tmp_path / f"call{k}" / ".gpukit"  # what one call carries: its own part only
        shutil.copytree(d, call / d.name)
        st = payload.recv(call, dest)
        assert st["ready"] is (k == 3) and st["parts"] == 3
    assert (dest / "site" / "pkg" / "blob.bin").read_bytes() == data
    assert (dest / "cache" / "m.txt").read_text() == "model" and (dest / "READY").exists()
    # a broken transfer is refused, not unpacked
    bad = tmp_path / "bad" / ".gpukit"
    shutil.copytree(dirs[0], bad / "p1")
    (bad / "p1" / "part").write_bytes(b"truncated")
    shutil.rmtree(dest)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        payload.recv(bad, dest)


def test_unpack_wheel_lays_out_like_pip(tmp_path):
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pkg/__init__.py", "x = 1\n")
        z.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\n")
        z.writestr("pkg-1.0.data/purelib/extra.py", "y = 2\n")
        z.writestr("pkg-1.0.data/scripts/tool", "#!/bin/sh\n")
        z.writestr("onnxruntime/capi/libonnxruntime.so.1.31.1", "c api")
    site = tmp_path / "site"
    assert stage.unpack_wheel(whl, site, stage.SKIP_MEMBER) == 3
    assert sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()) == [
        "extra.py", "pkg-1.0.dist-info/METADATA", "pkg/__init__.py"]
    assert not stage.SKIP_MEMBER.match(stage.CUDA_PROVIDER)


def test_run_commands_receive_then_run():
    calls = stage.run_commands(2, 560)
    assert calls[0].startswith('run(command="bash benchmarks/gpu/device.sh", carry=[".gpukit/p1"], timeout_s=120)')
    assert "at once" in calls[0]
    assert calls[1] == 'run(command="bash benchmarks/gpu/device.sh", carry=[".gpukit/p2"], timeout_s=560)'
