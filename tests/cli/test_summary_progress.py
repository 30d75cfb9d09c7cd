"""The terminal summary reads at a glance (a table, original/compressed named, what stayed float and
why, verify's outcome also when it passes) and long passes report progress (issue 19)."""

import numpy as np
import onnx
import pytest
from builders import random_input, resnet_like

from onnxslim_compress.cli.main import main
from onnxslim_compress.jobs.compress import PassBar
from onnxslim_compress.passes.context import Context
from onnxslim_compress.passes.low_rank.low_rank import LowRank
from onnxslim_compress.passes.prune.prune_channels import PruneChannels
from onnxslim_compress.passes.quantize.quantize import Quantize


@pytest.fixture
def files(tmp_path):
    m = tmp_path / "m.onnx"
    onnx.save(resnet_like(), str(m))
    data = tmp_path / "d.npz"
    np.savez(data, input=np.stack([random_input((1, 3, 16, 16), seed=s) for s in range(16)]))
    return m, data


def test_summary_is_a_table_with_names_kept_float_and_verify(files, tmp_path, capsys):
    m, data = files
    argv = ["compress", m, "-o", tmp_path / "o.onnx", "--quantize", "--calib", data, "--eval", data,
            "--min-fidelity", "cosine=0.999999", "--verify", "cosine=0.5", "--measure"]
    code = main([str(x) for x in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "{'" not in out and "{\"" not in out  # no Python dicts
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.split()[:4] == ["pass", "result", "time", "figures"])
    assert set(lines[head + 1].split()) == {"-" * len(w) for w in lines[head + 1].split()}  # a rule under the header
    q = next(ln for ln in lines if ln.strip().startswith("quantize:") and "units quantized" in ln)
    n_q, n_total = int(q.split(":")[1].split()[0]), int(q.split(" of ")[1].split()[0])
    assert n_q < n_total and "sensitive (fidelity goal)" in q and "integer kernels" in q
    assert "left_float 0" not in out
    assert any("original" in ln and "compressed" in ln and "ms" in ln for ln in lines if ln.strip().startswith("latency"))
    assert "fidelity of compressed vs original" in out
    assert "verify quantize: ok, cosine" in out and "(threshold 0.5)" in out
    assert "verify simplify: ok" in out


def _events(p, model, ctx):
    seen = []
    ctx.on_progress = lambda stage, done, total: seen.append((stage, done, total))
    p(model, ctx)
    return seen


def test_long_passes_report_progress_inside():
    feeds = [{"input": random_input((1, 3, 16, 16), seed=s)} for s in range(10)]
    ev = _events(Quantize(calib_samples=10), resnet_like(), Context(calib=feeds))
    cal = [e for e in ev if e[0] == "calibration samples"]
    assert [d for _, d, _ in cal] == list(range(1, 11)) and cal[-1][2] == 10
    # no error cap: on this random-weight net it keeps all but one consumer whole (one recovery stage)
    ev = _events(PruneChannels(ratio=0.3, recover_stages=2, calib_samples=10, max_group_error=None), resnet_like(),
                 Context(calib=feeds))
    stages = {s for s, _, _ in ev}
    assert {"recovery stage 1/2", "recovery stage 2/2"} <= stages
    ev = _events(LowRank(mode="ratio", value=0.5, min_params=100), resnet_like(), Context(calib=feeds))
    svd = [e for e in ev if e[0] == "SVD layers"]
    assert svd and svd[0][1] == 0 and svd[-1][1] == svd[-1][2] - 1


def test_pass_bar_counts_finished_passes_and_shows_stages():
    class Bar:
        def __init__(self):
            self.n, self.postfix, self.refreshes, self.closed = 0, "", 0, False

        def update(self, k):
            self.n += k

        def set_postfix_str(self, s, refresh=True):
            self.postfix = s
            self.refreshes += refresh

        def close(self):
            self.closed = True

    b = Bar()
    pb = PassBar(b)
    pb.start("simplify")
    assert b.n == 0
    pb.start("quantize")
    pb.stage("calibration samples", 3, 128)
    assert b.n == 1 and b.postfix == "quantize: calibration samples 3/128"
    pb.close()
    assert b.n == 2 and b.closed
