"""The passes, one per file. REGISTRY maps the recipe/CLI name to the class.

The registry is an explicit table (not a decorator side effect), so what a recipe can name is visible
in one place and import order cannot change it. Its order is the canonical pipeline order: the
pipeline `compress` builds from flags and the default search recipe list passes in this order
(specialize on fixed inputs first, simplify, prune before fold_batchnorm so bn_scale can read BN, low rank,
attention fusion after the passes that read the attention's MatMuls, clean up, QDQ last).

fp16 is not a pass of its own: it is `quantize`'s `mode: fp16` (to_fp16.py holds the conversion),
because on the CUDA EP fp16 is what "quantize" means and quantize already switches to it there.
"""

from __future__ import annotations

from onnxslim_compress.passes.base import Pass
from onnxslim_compress.passes.eliminate_dead import EliminateDead
from onnxslim_compress.passes.fold_batchnorm import FoldBatchNorm
from onnxslim_compress.passes.fuse_attention import FuseAttention
from onnxslim_compress.passes.low_rank.low_rank import LowRank
from onnxslim_compress.passes.prune.prune_channels import PruneChannels
from onnxslim_compress.passes.quantize.quantize import Quantize
from onnxslim_compress.passes.simplify import Simplify
from onnxslim_compress.passes.specialize import Specialize

REGISTRY: dict[str, type[Pass]] = {
    cls.name: cls
    for cls in (
        Specialize,
        Simplify,
        PruneChannels,
        FoldBatchNorm,
        LowRank,
        FuseAttention,
        EliminateDead,
        Quantize,
    )
}

__all__ = ["REGISTRY", "EliminateDead", "FoldBatchNorm", "FuseAttention", "Quantize", "Simplify", "Specialize"]
