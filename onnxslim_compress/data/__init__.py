"""Data sets for calibration, evaluation and comparison: feed dicts, one sample at a time.

Every consumer (calibration statistics, fidelity comparison, the accuracy gate of the search) wants
the same thing: a RE-ITERABLE of feed dicts {input_name: np.ndarray}, each array with the model
input's full rank (batch dim included). Calibration passes walk the data several times, so a
`DataSource` starts over on every `iter()`, and it streams: a folder is read one file per sample,
and a big single .npz is memory-mapped where its members are stored uncompressed, so a 10 GB
calibration set is never read into memory at once.

Accepted layouts (`open_data`):
  * one .npz with a leading sample axis per input name (rank = input rank + 1), or rank = input
    rank, meaning each row along axis 0 is one sample (given a batch dim of 1);
  * one .npy, the same for a single-input model;
  * a folder of per-sample .npz files ({name: array}) or .npy files (single-input models), in
    natural name order (sample_2 before sample_10, so an unpadded numbering still matches a label
    file); a sample missing only the batch dim gets one added;
  * a folder of images, preprocessed per `ImageOptions` (needs Pillow);
  * None: inputs generated from the model signature. This is a WEAK fallback: it exercises the
    graph but carries none of the real data's statistics, so calibration or accuracy numbers
    computed on it say little about real inputs.

Every problem with the data is a BadInputError whose one line names the input and what was
expected, so the CLI can print it and exit 2.

Modules: spec (what the model expects, conforming arrays), source (the DataSource contract,
in-memory feeds), arrays (.npz/.npy files and folders), images, generated, open (open_data),
labels (load_labels). This package re-exports the public names.
"""


from __future__ import annotations

from onnxslim_compress.data.arrays import ARRAY_SUFFIXES, ArrayFolderSource, NpzSource
from onnxslim_compress.data.generated import (
    DEFAULT_GENERATED_SAMPLES,
    MAX_GENERATED_BYTES,
    GeneratedSource,
    GenRule,
    check_generated_size,
    generated_failure,
)
from onnxslim_compress.data.images import IMAGE_SUFFIXES, ImageFolderSource, ImageOptions, preprocess_image
from onnxslim_compress.data.labels import load_labels
from onnxslim_compress.data.open import open_data
from onnxslim_compress.data.source import (
    DataSource,
    FiniteSource,
    ListSource,
    drop_nonfinite_samples,
    nonfinite_input,
    refuse_nonfinite,
)
from onnxslim_compress.data.spec import Feed, InputSpec, input_specs

__all__ = [
    "ARRAY_SUFFIXES",
    "DEFAULT_GENERATED_SAMPLES",
    "IMAGE_SUFFIXES",
    "MAX_GENERATED_BYTES",
    "ArrayFolderSource",
    "DataSource",
    "Feed",
    "FiniteSource",
    "GenRule",
    "GeneratedSource",
    "ImageFolderSource",
    "ImageOptions",
    "InputSpec",
    "ListSource",
    "NpzSource",
    "check_generated_size",
    "drop_nonfinite_samples",
    "input_specs",
    "generated_failure",
    "load_labels",
    "nonfinite_input",
    "open_data",
    "preprocess_image",
    "refuse_nonfinite",
]
