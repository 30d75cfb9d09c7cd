"""The channel step the target wants per precision (runtime/latency_table.probe_alignment), as measured.

    python benchmarks/bench_alignment.py --threads 1            # writes benchmarks/results/alignment.json
    python benchmarks/bench_alignment.py --threads 1 --append   # adds this sitting to the file's sittings

A fresh latency table (a temporary file, not the user cache: every figure is of this sitting) is
probed for fp32 and int8 QDQ convs: per probed layer, every candidate step's mean round-up cost,
its 95 % interval relative to the layer's best step (bootstrap over the probe's settle rounds), the
steps within the noise, and the answer with the figure that decided it. Beside it, what the old
rule (a fixed 2 % tolerance, the widest step of the output-channel layers) answers on the same
measurements, and the CPU's ISA flags and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxslim_compress.runtime.latency_table import STEPS, LatencyTable, cpu_isa, probe_alignment  # noqa: E402
from onnxslim_compress.runtime.session import Target  # noqa: E402

#: the rule this probe replaced: largest step within 2 % of the cheapest, widest over cout layers
OLD_TOLERANCE = 0.02


def old_rule(al: dict) -> int:
    """The former probe's answer on these measurements (point costs of the output-channel layers)."""
    steps = []
    for row in al["layers"]:
        if "cout swept" not in row["layer"]:
            continue
        c = {int(s): v for s, v in row["cost"].items() if int(s) in STEPS}
        steps.append(max(s for s in STEPS if c[s] <= min(c.values()) + OLD_TOLERANCE))
    return max(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=15, help="timed runs per entry and round (the prune pass's table uses 15)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    ap.add_argument("--append", action="store_true", help="keep the file's earlier sittings and add this one")
    ap.add_argument("--table", help="keep the measured latency table (with its repeats) in this file (default: "
                                    "a temporary one, dropped)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "alignment.json"))
    args = ap.parse_args()
    target = Target(kind="cpu", threads=args.threads)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        table = LatencyTable(target, Path(args.table or Path(tmp) / "t.json"), runs=args.runs, warmup=3)
        for p in args.precisions:
            load0, t0 = os.getloadavg()[0], time.time()
            al = probe_alignment(table, p).as_dict()
            al |= {"old_rule_step": old_rule(al), "seconds": round(time.time() - t0, 1),
                   "load_avg": [round(load0, 2), round(os.getloadavg()[0], 2)]}
            out.append(al)
            print(f"{p}: step {al['step']} ({al['decision']}): {al['reason']}; old 2 % rule: {al['old_rule_step']}",
                  flush=True)
        if args.table:
            table.save()
    sitting = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "isa": list(cpu_isa()),
               "threads": args.threads, "runs": args.runs,
               "command": "python benchmarks/bench_alignment.py " + " ".join(sys.argv[1:]), "alignment": out}
    path = Path(args.out)
    old = json.loads(path.read_text()).get("sittings", []) if args.append and path.is_file() else []
    path.write_text(json.dumps({"sittings": [*old, sitting]}, indent=1))


if __name__ == "__main__":
    main()
