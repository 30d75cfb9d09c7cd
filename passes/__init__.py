"""The passes, one per file. REGISTRY maps the recipe/CLI name to the class.

The registry is an explicit table (not a decorator side effect), so what a recipe can name is visible
in one place and import order cannot change it.
"""

from __future__ import annotations

from onnxslim_compress.pass_api import Pass

from .eliminate_dead import EliminateDead
from .fold_batchnorm import FoldBatchNorm
from .low_rank import LowRank
from .prune_channels import PruneChannels
from .quantize import Quantize
from .simplify import Simplify

REGISTRY: dict[str, type[Pass]] = {
    cls.name: cls
    for cls in (
        Simplify,
        FoldBatchNorm,
        EliminateDead,
        Quantize,
        LowRank,
        PruneChannels,
    )
}

__all__ = ["REGISTRY", "EliminateDead", "FoldBatchNorm", "Quantize", "Simplify"]
