"""Lossless compression on the real models of models/fetch.py (slow: needs the downloads).

Run with `python -m pytest -m slow tests/test_real_models.py`. Fidelity is checked on real inputs
from models/datasets.py: random N(0,1) inputs drive PP-OCR det's sigmoid map to ~1e-8 everywhere,
where float reassociation alone (ORT's own optimizer) shows a 2 % relative difference.
"""

import numpy as np
import pytest

from onnxslim_compress.graph.index import op_counts
from onnxslim_compress.graph.io import load_model
from onnxslim_compress.jobs.compress import compress
from onnxslim_compress.runtime.session import Target, make_session

pytestmark = pytest.mark.slow
REAL = ["yolov8n", "ppocr_det", "ppocr_rec", "ppocr_cls", "minilm"]


@pytest.fixture(scope="module")
def real():
    fetch = pytest.importorskip("models.fetch")
    datasets = pytest.importorskip("models.datasets")
    return fetch, datasets


@pytest.mark.parametrize("name", REAL)
def test_lossless_compress_keeps_outputs(real, name):
    fetch, datasets = real
    model = load_model(fetch.fetch(name))
    feeds = list(datasets.iter_feeds(datasets.build(name, "eval")))[:4]
    res = compress(model)
    out = res.model
    bn_before = op_counts(model).get("BatchNormalization", 0)
    if bn_before:
        assert op_counts(out).get("BatchNormalization", 0) < bn_before
        assert len(out.graph.node) < len(model.graph.node)
    sa = make_session(model, Target(threads=2))
    sb = make_session(out, Target(threads=2))
    names = [o.name for o in sa.get_outputs()]
    assert names == [o.name for o in sb.get_outputs()]
    for f in feeds:
        for a, b in zip(sa.run(None, f), sb.run(None, f), strict=True):
            if a.dtype.kind != "f":
                np.testing.assert_array_equal(a, b)
                continue
            rel = np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)
            assert rel < 1e-5, (name, rel)
