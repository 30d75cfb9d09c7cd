"""The HTML report as a page people look at (issue 19): per-layer bars, op-type latency before/after,
the Pareto plot, no raw JSON, nothing wider than the window; checked in headless Chromium."""

import json
import re
import shutil
import subprocess

import pytest
from builders import random_input, resnet_like

from onnxslim_compress.files import write_atomic
from onnxslim_compress.jobs.compress import compress, flags_pipeline
from onnxslim_compress.report.html import layer_rows, page, render

LONG = "backbone/stage_one/block_zero/" * 8 + "conv"


@pytest.fixture(scope="module")
def report():
    m = resnet_like()
    first = next(n for n in m.graph.node if n.op_type == "Conv")
    first.name = LONG  # a long layer name must wrap, not widen the page
    feeds = [{"input": random_input((1, 3, 16, 16), seed=s)} for s in range(8)]
    rep = compress(m, pipeline=flags_pipeline(prune={"ratio": 0.3}, quantize={"mode": "int8", "min_fidelity": "cosine=0.9999999999"}),
                   calib=feeds, eval_data=feeds, measure_latency=True).report
    rep["trials"] = [{"number": i, "latency_ratio": 1 - 0.1 * i, "metric": 1 - 0.01 * i, "drop": 0.01 * i,
                      "feasible": i < 3, "params": {"prune_channels.ratio": 0.1 * i}} for i in range(5)]
    rep["pareto"] = [0, 1, 2, 3, 4]
    return rep


def test_layers_merge_prune_and_quantize_rows_and_mark_sensitive(report):
    rows = {r["layer"]: r for r in layer_rows(report)}
    prune = next(p for p in report["passes"] if p["name"] == "prune_channels")
    for x in prune["stats"]["layers"]:
        assert rows[x["node"]]["_kept"] == (x["out"][1], x["out"][0])
    q = next(p for p in report["passes"] if p["name"] == "quantize")
    kept = set(q["stats"]["kept_float"])
    assert kept and all(rows[n]["_sensitive"] and rows[n]["_precision"] == "float" for n in kept)
    assert sum(1 for r in rows.values() if r.get("_precision") == "int8") == q["stats"]["quantized_units"]


def test_page_has_charts_and_no_raw_json(report):
    page = render(report)
    assert "<script" not in page
    assert page.count('class="bar"') >= len(layer_rows(report))  # a bar per layer at least
    assert page.count('<svg class="chart"') == 2  # op-type latency + Pareto
    assert not re.search(r'\{&quot;|\{"|\[\{', page.split("</style>")[1])  # no JSON strings in the body
    assert "<details><summary>" in page and "open" not in re.findall(r"<details[^>]*>", page)[0]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by .ci/run")
@pytest.mark.parametrize("width", [1200, 760])
def test_layout_in_headless_chromium(report, tmp_path, width):
    out = write_atomic(tmp_path / "report.html", page(report))
    probe = tmp_path / "probe.html"
    js = ("<script>window.addEventListener('load',()=>{document.title=JSON.stringify({"
          "sw:document.documentElement.scrollWidth,iw:window.innerWidth,"
          "svg:document.querySelectorAll('svg').length,charts:document.querySelectorAll('svg.chart').length,"
          "bars:document.querySelectorAll('svg.bar').length,"
          "wide:[...document.querySelectorAll('main *')].filter(e=>e.getBoundingClientRect().right>window.innerWidth+1"
          "&&!e.closest('.scroll')).length})})</script>")
    probe.write_text(out.read_text().replace("</body>", js + "</body>"))
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},900",
           "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"<title>(\{.*?\})</title>", dom)
    assert found, dom[:500]
    m = json.loads(found.group(1).replace("&quot;", '"'))
    assert m["sw"] <= m["iw"], m  # no horizontal overflow of the page
    assert m["wide"] == 0, m  # nothing sticks out, except inside a table's own scroller
    assert m["charts"] == 2 and m["bars"] >= len(layer_rows(report)), m
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    f"--window-size={width},1400", out.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000
