"""Class labels for accuracy: one per sample, from an .npy array or a .txt/.csv file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from onnxslim_compress.errors import BadInputError


def load_labels(path: str | os.PathLike) -> np.ndarray:
    """Class labels, one per sample: an .npy array, or a .txt/.csv file with one integer per line.

    A non-numeric first line of a .csv is taken as a header and skipped; a line with several
    comma-separated fields is an error (which column would be the label is a guess).
    """
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: no such labels file")
    if p.suffix.lower() == ".npy":
        try:
            labels = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInputError(f"{p}: cannot read labels ({e})") from e
        if labels.dtype.kind == "f" and labels.ndim == 1 and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        return labels
    try:
        lines = [ln.strip() for ln in p.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"{p}: cannot read labels ({e})") from e
    lines = [ln for ln in lines if ln]
    out: list[int] = []
    for k, ln in enumerate(lines):
        if "," in ln:
            raise BadInputError(f"{p}: line {k + 1} has several fields ({ln!r}); expected one label per line")
        try:
            v = float(ln)
        except ValueError:
            if k == 0 and p.suffix.lower() == ".csv":
                continue
            raise BadInputError(f"{p}: line {k + 1} ({ln!r}) is not an integer class label") from None
        if v != int(v):
            raise BadInputError(f"{p}: line {k + 1} ({ln!r}) is not an integer class label")
        out.append(int(v))
    if not out:
        raise BadInputError(f"{p}: no labels")
    return np.asarray(out, dtype=np.int64)
