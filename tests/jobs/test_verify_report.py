"""--verify bisection on a planted bad node, and the HTML report rendered in headless Chromium."""

import re
import shutil
import subprocess
from dataclasses import dataclass, field

import numpy as np
import pytest
from builders import GraphBuilder, random_input

from onnxslim_compress.files import write_atomic
from onnxslim_compress.graph.index import GraphIndex
from onnxslim_compress.jobs.compress import compress
from onnxslim_compress.jobs.verify import VerifySpec, touched_nodes
from onnxslim_compress.passes.base import Pass, PassResult, Pipeline
from onnxslim_compress.report.html import page as html_page
from onnxslim_compress.report.html import render


@dataclass
class JitterParams:
    exclude: list[str] = field(default_factory=list)


class Jitter(Pass):
    """Stands in for a lossy pass: tiny noise on every Conv, but zeroes the weights of `conv_bad`."""

    name = "jitter"
    Params = JitterParams
    in_place = True

    def run(self, model, ctx):
        idx = GraphIndex(model.graph)
        rng = np.random.default_rng(0)
        layers = []
        for n in model.graph.node:
            if n.op_type != "Conv" or any(re.search(p, n.name) for p in self.params.exclude):
                continue
            w = idx.constant(n.input[1])
            w2 = np.zeros_like(w) if n.name == "conv_bad" else w * (1 + 1e-4 * rng.standard_normal(w.shape).astype(w.dtype))
            idx.replace_initializer(n.input[1], w2)
            layers.append({"node": n.name, "change": "zeroed" if n.name == "conv_bad" else "jitter"})
        return PassResult(model, bool(layers), {"layers": layers})


def chain_model(n_convs: int = 9, bad: int = 5):
    b = GraphBuilder(21)
    x = "x"
    for i in range(n_convs):
        y = b.conv(x, 4, 4)
        b.nodes[-1].name = "conv_bad" if i == bad else f"conv_{i}"
        x = b.node("Add", [b.node("Relu", [y]), x])  # residual: zeroing one conv is damage, not a dead end
    return b.model([("x", [1, 4, 6, 6])], [(x, None)])


def test_touched_nodes_reads_layer_rows():
    stats = {"layers": [{"node": "a"}, {"nodes": ["b", "a"]}, {"members": ["c"]}, "junk"]}
    assert touched_nodes(stats) == ["a", "b", "c"]


def test_verify_finds_and_excludes_planted_bad_node():
    m = chain_model()
    data = [{"x": random_input([1, 4, 6, 6], seed=s)} for s in range(4)]
    # the planted bad node is below the default fidelity floor (exit 3): opted out to see it
    plain = compress(m, pipeline=Pipeline([Jitter()]), eval_data=data, min_fidelity="none")
    assert plain.report["fidelity"]["per_output"][m.graph.output[0].name]["cosine"] < 0.999
    res = compress(m, pipeline=Pipeline([Jitter()]), eval_data=data, verify=VerifySpec("cosine", 0.999))
    ver = res.report["passes"][0]["stats"]["verify"]
    assert ver["excluded"] == ["conv_bad"]
    assert ver["ok"] and ver["value"] >= 0.999
    assert ver["reruns"] <= 2 * 4 + 1  # 2*ceil(log2 9) bisection runs + the final re-run
    rows = res.report["passes"][0]["stats"]["layers"]
    assert "conv_bad" not in [r["node"] for r in rows] and len(rows) == 8


def test_verify_spec_parse():
    assert VerifySpec.parse("rel_l2=0.05") == VerifySpec("rel_l2", 0.05)
    assert VerifySpec.parse(None) == VerifySpec()
    assert not VerifySpec("rel_l2", 0.05).ok(0.06) and VerifySpec("cosine", 0.99).ok(0.995)


def _report():
    m = chain_model()
    data = [{"x": random_input([1, 4, 6, 6], seed=s)} for s in range(2)]
    return compress(m, pipeline=Pipeline([Jitter()]), eval_data=data, measure_latency=True, min_fidelity="none").report


def test_html_report_contains_numbers():
    rep = _report()
    page = render(rep)
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert f"{rep['before']['macs']:,}" in page
    assert "conv_bad" in page and "zeroed" in page
    assert f"{rep['latency']['ratio']:.3f}" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by .ci/run")
def test_html_report_renders_in_headless_chromium(tmp_path):
    rep = _report()
    rep["trials"] = [
        {"label": "t0", "latency_ratio": 0.9, "metric": 0.99, "feasible": True, "pareto": True},
        {"label": "t1", "latency_ratio": 0.6, "metric": 0.95, "feasible": False, "pareto": True},
    ]
    page = write_atomic(tmp_path / "report.html", html_page(rep))
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert "Before / after" in dom and f"{rep['before']['macs']:,}" in dom
    assert dom.count("<circle") == 2 and "<tr>" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
        capture_output=True, timeout=120,
    )
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank
