"""GaP-style grow-and-prune refinement of a one-shot channel selection, without training.

GaP (Ma et al., ICLR 2022) grows one partition of layers back to dense, trains, and prunes it again
while the rest stay sparse. Here the training step is the least-squares recovery: after the one-shot
selection, the groups are cut into partitions in graph order; for one partition at a time its
channels are regrown (the rest stay pruned and are refitted), every regrown channel is scored by
the output energy it feeds its consumers in THAT model, ||W[:, c]||^2 * E[x_c^2] (the error its
removal adds, to first order, now that upstream pruning and refits have changed its inputs), and
the partition is pruned back to the same counts per group - per constraint class inside a group
(units every segment counts alike), so a Split half or a head keeps its count too. Counts are unchanged, so the measured
latency is too; the new mask is kept only if the recovered model's output error on held-out
calibration samples drops (docs: ../shared notes "GaP").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxslim_compress.graph import weights
from onnxslim_compress.passes.prune.groups import ChannelAnalysis
from onnxslim_compress.passes.prune.select import (
    Policy,
    activation_stats,
    constraint_classes,
    enforce,
    segments,
    weight_spaces,
)

#: an error must drop by this share to count as a drop (held-out rel_l2 jitters in the last digits)
MIN_GAIN = 1e-4

#: (pruned mask) -> (recovered model, output rel_l2 vs the original on held-out calibration samples)
Recover = Callable[[np.ndarray], tuple[onnx.ModelProto, float]]


@dataclass
class Refined:
    pruned: np.ndarray
    model: onnx.ModelProto
    error_before: float
    error_after: float
    rows: list[dict]


def partitions(an: ChannelAnalysis, pruned: np.ndarray, n: int) -> list[list[int]]:
    """Groups with pruned units, in graph order of their first member, cut into n contiguous parts."""
    first: dict[int, int] = {}
    for i, key, _ in an.visits:
        gid = an.space_group.get(key)
        if gid is not None:
            first.setdefault(gid, i)
    gids = sorted({int(g) for g in np.unique(an.group[pruned])}, key=lambda g: first.get(g, 0))
    return [list(map(int, p)) for p in np.array_split(np.array(gids, dtype=int), min(n, len(gids))) if len(p)]


def output_energy(an: ChannelAnalysis, model: onnx.ModelProto, units: np.ndarray, data: Iterable,
                  limit: int) -> np.ndarray:
    """Per unit: sum over its consumers of ||W[:, c]||^2 * E[x_c^2], measured in `model`.

    Only consumers whose input space is whole in `model` (every unit in `units`, i.e. regrown)
    count; a unit no consumer reads keeps score 0 (it is first to go, as it feeds nothing)."""
    mom = activation_stats(an, data, limit, model=model)
    by_name = {t.name: t for t in model.graph.initializer}
    score = np.zeros(an.n_units)
    want = np.zeros(an.n_units, dtype=bool)
    want[units] = True
    v = an.view
    for i, w, ax, is_in in weight_spaces(an):
        if not is_in:
            continue
        n = v.nodes[i]
        x = n.input[0]
        xax = 1 if n.op_type in ("Conv", "ConvTranspose", "Gemm") else len(v.shape(x) or [1]) - 1
        if x not in mom or mom[x].count == 0 or (x, xax) not in an.spaces or w not in by_name:
            continue
        xu = an.units_of((x, xax))
        wu = an.units_of((w, ax))
        if len(xu) != len(wu) or not want[xu].all():
            continue
        arr = weights.read(by_name[w]).astype(np.float64)
        if arr.shape[ax] != len(wu) or mom[x].sq is None or len(mom[x].sq) != len(xu):
            continue
        col = (np.moveaxis(arr, ax, 0).reshape(arr.shape[ax], -1) ** 2).sum(1)
        np.add.at(score, wu, col * mom[x].rms ** 2)
    return score


def refine(an: ChannelAnalysis, pruned: np.ndarray, cand: np.ndarray, imp: np.ndarray, pol: dict[int, Policy],
           recover: Recover, data: Iterable, limit: int, *, rounds: int, parts: int,
           tick: Callable[[str, int, int | None], None] | None = None) -> Refined:
    """Cycle `rounds` times over the partitions; keep a partition's new mask only if the error drops."""
    model, err = recover(pruned)
    start = err
    segs = segments(an)
    cls = constraint_classes(segs, an.n_units)
    rows: list[dict] = []
    plan = partitions(an, pruned, parts)
    step = 0
    for r in range(rounds):
        for gids in plan:
            step += 1
            if tick is not None:
                tick("GaP refinement", step, rounds * len(plan))
            in_part = np.isin(an.group, gids) & cand
            grown = pruned & ~in_part
            grown_model, _ = recover(grown)
            score = output_energy(an, grown_model, np.nonzero(in_part)[0], data, limit)
            new = grown.copy()
            # re-pick per constraint class, not per group: the same count in every class keeps every
            # segment's count (a Split half, a head) where the one-shot selection and round_to put it
            for c in np.unique(cls[in_part]):
                units = np.nonzero(in_part & (cls == c))[0]
                k = int(pruned[units].sum())
                new[units[np.argsort(score[units], kind="stable")][:k]] = True
            new = enforce(segs, new, cand, score + 1e-12 * imp, pol)
            row = {"round": r + 1, "groups": gids, "error_before": err}
            moved = {g: (int(pruned[an.group == g].sum()), int(new[an.group == g].sum())) for g in gids
                     if int(new[an.group == g].sum()) != int(pruned[an.group == g].sum())}
            if (new == pruned).all() or moved:
                row["kept"] = ("unchanged (the same channels)" if not moved else
                               "unchanged (the group constraints moved the counts: "
                               + ", ".join(f"group {g} {a}->{b}" for g, (a, b) in moved.items()) + ")")
                rows.append(row)
                continue
            m2, e2 = recover(new)
            row["error_after"] = e2
            if e2 < err * (1 - MIN_GAIN):
                pruned, model, err = new, m2, e2
                row["kept"] = "regrown and re-pruned"
            else:
                row["kept"] = "one-shot channels (the new ones did not lower the error)"
            rows.append(row)
    return Refined(pruned, model, start, err, rows)
