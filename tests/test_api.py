"""The Python API a deployment pipeline uses: top-level names and `onnxslim_compress.search(...)`."""

from builders import random_input, resnet_like

import onnxslim_compress as osc
from onnxslim_compress.jobs.compress import compress


def test_compress_function_returns_model_and_report(tmp_path):
    res = compress(resnet_like(), tmp_path / "o.onnx")
    assert res.output == tmp_path / "o.onnx" and res.output.is_file()
    assert res.report["passes"][1]["stats"]["folded"] == 6


def test_search_is_callable_from_the_package(tmp_path):
    assert osc.search.space.__name__ == "onnxslim_compress.search.space"  # still the subpackage
    m = resnet_like()
    data = [{"input": random_input([1, 3, 16, 16], seed=s)} for s in range(4)]
    recipe = {"passes": [{"prune_channels": {"ratio": {"choices": [0.2, 0.5]}, "round_to": 1}}]}
    res = osc.search(
        m, tmp_path / "best.onnx", recipe=recipe, calib=data, eval_data=data, metric="cosine", max_drop=1.0,
        trials=2, objective="macs", presets=False,
    )
    assert (tmp_path / "best.onnx").is_file()
    costs = [t["objective"] for t in res.report["trials"] if t.get("objective") is not None]
    assert len(costs) == 2 and res.report["best"]["objective"] == min(costs)
    assert res.report["best"]["params"]["prune_channels.ratio"] == 0.5  # fewer MACs, within the budget
