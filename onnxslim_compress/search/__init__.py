"""Profiler-driven search over pass parameters (issue 6): Condensa-style constrained optimization
of measured latency (or MACs/size) under a metric-drop constraint, on Optuna's storage.

    from onnxslim_compress.search import search
    res = search("model.onnx", "out.onnx", calib="calib.npz", eval_data="eval.npz",
                 labels="labels.npy", max_drop=0.01, trials=20)

Modules: space (recipe -> knobs), objective (what a trial measures), strategy (bisection / GP / TPE),
build (prefix reuse), runner (the trial loop), storage (RDB studies), report, job (API). The
`search`/`worker` commands live with the other commands in cli/search_commands.py.
"""

from __future__ import annotations

import sys
import types

from onnxslim_compress.search.job import SearchResult, run_worker, search
from onnxslim_compress.search.objective import Evaluator, Measurement
from onnxslim_compress.search.space import Dim, SearchSpace, default_recipe

__all__ = ["Dim", "Evaluator", "Measurement", "SearchResult", "SearchSpace", "default_recipe", "run_worker", "search"]


class _CallableModule(types.ModuleType):
    """Lets `onnxslim_compress.search(model, ...)` call the search while the name stays the
    subpackage (so `onnxslim_compress.search.space` and `import ... as` keep working)."""

    def __call__(self, *args, **kwargs):
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
