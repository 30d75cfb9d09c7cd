"""Building a trial's model with reuse: a pipeline-prefix cache on top of the passes' own cache.

Why: consecutive trials often share their first passes (same pruning, different calibration
method), and the search should never redo work an earlier trial did. Each prefix of a trial's
pipeline is keyed by the input model's fingerprint and the exact (pass, params) steps so far; a
trial that shares a prefix starts from the stored model. Inside a pass, statistics (activations,
Gram matrices, SVDs, importance scores) are reused through the one Context/Cache every trial shares.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxslim_compress.errors import PassFailure
from onnxslim_compress.passes.base import Pass, StepRecord, params_to_dict
from onnxslim_compress.passes.context import Context, fingerprint


@dataclass
class BuildResult:
    model: onnx.ModelProto
    steps: list[StepRecord]
    #: passes whose output came from the prefix cache
    reused_steps: int
    seconds: float


@dataclass
class PrefixCache:
    """LRU of pipeline-prefix outputs. Bounded: each entry is a whole model."""

    max_entries: int = 24
    hits: int = 0
    misses: int = 0
    _store: OrderedDict = field(default_factory=OrderedDict)

    def get(self, key: tuple) -> tuple[onnx.ModelProto, StepRecord] | None:
        if key in self._store:
            self._store.move_to_end(key)
            self.hits += 1
            return self._store[key]
        self.misses += 1
        return None

    def put(self, key: tuple, value: tuple[onnx.ModelProto, StepRecord]) -> None:
        self._store[key] = value
        self._store.move_to_end(key)
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)


def _step_key(p: Pass) -> str:
    return p.name + json.dumps(params_to_dict(p.params), sort_keys=True, default=str)


class TrialBuilder:
    """Runs trial pipelines on one input model with one shared Context (and so one Cache)."""

    def __init__(self, model: onnx.ModelProto, ctx: Context, *, reuse: bool = True, max_entries: int = 24):
        self.model = model
        self.ctx = ctx
        self.reuse = reuse
        self.fp = fingerprint(model)
        self.prefix = PrefixCache(max_entries=max_entries)

    def build(self, passes: list[Pass]) -> BuildResult:
        """The model after `passes`; the input model is never modified (passes copy or are copied)."""
        t0 = time.perf_counter()
        # without reuse every trial gets a fresh cache: what the benchmark compares against
        ctx = self.ctx if self.reuse else Context(
            target=self.ctx.target, calib=self.ctx.calib, input_shapes=self.ctx.input_shapes, seed=self.ctx.seed
        )
        current = self.model
        steps: list[StepRecord] = []
        reused = 0
        key: tuple = (self.fp,)
        for p in passes:
            key = (*key, _step_key(p))
            hit = self.prefix.get(key) if self.reuse else None
            if hit is not None:
                current, rec = hit
                steps.append(rec)
                reused += 1
                continue
            s0 = time.perf_counter()
            try:
                # copy_input=True: an in-place pass must not edit a model the prefix cache holds
                res = p(current, ctx)
            except PassFailure:
                raise
            except Exception as e:  # noqa: BLE001 - wrapped with context like Pipeline.run
                raise PassFailure(p.name, [s.name for s in steps], e) from e
            rec = StepRecord(p.name, params_to_dict(p.params), res.modified, time.perf_counter() - s0, res.stats)
            current = res.model
            steps.append(rec)
            if self.reuse:
                self.prefix.put(key, (current, rec))
        if current is self.model:  # no pass ran: hand out a copy, never the baseline itself
            current = onnx.ModelProto()
            current.CopyFrom(self.model)
        return BuildResult(current, steps, reused, time.perf_counter() - t0)

    def cache_stats(self) -> dict[str, Any]:
        return {
            "prefix_hits": self.prefix.hits,
            "prefix_misses": self.prefix.misses,
            "pass_cache_hits": self.ctx.cache.hits,
            "pass_cache_misses": self.ctx.cache.misses,
        }
