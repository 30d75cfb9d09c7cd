"""Which units to prune: importance criteria, per-group constraints and MAC-ratio targeting.

The ratio the user asks for is a fraction of *prunable MACs*, not of channels, because channels of
different layers cost very different amounts of compute. Selection therefore walks a ranking
(global: all groups together after per-group normalization; uniform: the same fraction in each
group) and searches the cut point whose exact MAC count, after min_channels / max_ratio / round_to
are enforced, lands closest to the target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph.index import attr
from onnxslim_compress.passes.prune.apply import MacModel
from onnxslim_compress.passes.prune.groups import ChannelAnalysis
from onnxslim_compress.runtime.activations import Moments, accumulate


@dataclass
class Policy:
    """Constraints of one group (defaults from the pass params, changed by overrides)."""

    ratio: float | None = None
    round_to: int = 1
    min_channels: int = 1
    max_ratio: float = 0.8


def weight_spaces(an: ChannelAnalysis) -> list[tuple[int, str, int, bool]]:
    """(node, weight name, axis, is_input_side) for every pruned dim of a constant weight."""
    out = []
    v = an.view
    for i in an.weight_nodes:
        n = v.nodes[i]
        w = n.input[1]
        if w not in v.init:
            continue
        r = len(v.shape(w) or [])
        if n.op_type == "Conv":
            sides = {0: False, 1: True}
        elif n.op_type == "ConvTranspose":
            sides = {0: True, 1: False}
        elif n.op_type == "Gemm":
            sides = {1: True, 0: False} if attr(n, "transB", 0) else {0: True, 1: False}
        else:
            sides = {r - 2: True, r - 1: False}
        for ax, is_in in sides.items():
            if (w, ax) in an.spaces:
                out.append((i, w, ax, is_in))
    return out


def _reduce_other(arr: np.ndarray, axis: int, p: int) -> np.ndarray:
    a = np.abs(np.moveaxis(arr.astype(np.float64), axis, 0)).reshape(arr.shape[axis], -1)
    return (a**p).sum(1)


def activation_stats(an: ChannelAnalysis, data: Iterable, limit: int,
                     progress: Callable[[int], None] | None = None, model=None) -> dict[str, Moments]:
    """RMS per channel of every consumer input, streamed over the calibration data
    (`progress(samples done)` after each sample). `model`: measure these tensors in another model
    with the same tensor names (GaP refinement reads them in a partly pruned, recovered model)."""
    v = an.view
    wanted: dict[str, int] = {}
    for i, _w, _ax, is_in in weight_spaces(an):
        if is_in:
            n = v.nodes[i]
            x = n.input[0]
            wanted[x] = 1 if n.op_type in ("Conv", "ConvTranspose", "Gemm") else len(v.shape(x) or [1]) - 1
    mom = {x: Moments(axis=ax, gram=False) for x, ax in wanted.items() if x not in v.init}
    names = list(mom)

    def update(vals: dict) -> None:
        for k in names:
            mom[k].update(vals[k])

    if names:
        accumulate(an.model if model is None else model, names, data, update, limit=limit, progress=progress)
    return mom


def unit_importance(
    an: ChannelAnalysis, criterion: str, act: dict[str, Moments] | None = None
) -> tuple[np.ndarray, dict]:
    """Importance per unit, normalized per group (mean 1 over the group's prunable units)."""
    v = an.view
    imp = np.zeros(an.n_units)
    notes: dict = {}
    spaces = weight_spaces(an)
    if criterion in ("l1", "l2", "bn_scale"):
        p = 2 if criterion == "l2" else 1
        for _i, w, ax, _in in spaces:
            np.add.at(imp, an.units_of((w, ax)), _reduce_other(v.const(w), ax, p))
        if p == 2:
            imp = np.sqrt(imp)
    if criterion == "bn_scale":
        bn = np.zeros(an.n_units)
        covered = np.zeros(an.n_units, dtype=bool)
        for n in v.nodes:
            if n.op_type == "BatchNormalization" and (n.input[1], 0) in an.spaces:
                u = an.units_of((n.input[1], 0))
                np.add.at(bn, u, np.abs(v.const(n.input[1]).astype(np.float64)))
                covered[u] = True
        fallback = 0
        for gid in range(an.n_groups):
            sel = an.group == gid
            if covered[sel].all():
                imp[sel] = bn[sel]
            else:
                fallback += 1
        notes["bn_scale_fallback_l1_groups"] = fallback
    if criterion == "activation":
        if act is None:
            raise BadInputError("prune criterion 'activation' needs calibration data (--calib)")
        for i, w, ax, is_in in spaces:
            if not is_in:
                continue
            n = v.nodes[i]
            x = n.input[0]
            if x not in act or act[x].count == 0:
                continue
            col = _reduce_other(v.const(w), ax, 1)
            rms = act[x].rms
            wu = an.units_of((w, ax))
            if n.op_type == "Conv" and attr(n, "group", 1) > 1:
                continue
            xu = an.units_of((x, 1 if n.op_type in ("Conv", "Gemm", "ConvTranspose") else len(v.shape(x)) - 1))
            if len(xu) == len(wu):
                np.add.at(imp, wu, col * rms)
        # units no consumer measured (e.g. depthwise-only chains) fall back to l1 of their weights
        zero = imp == 0
        if zero.any():
            l1 = np.zeros(an.n_units)
            for _i, w, ax, _in in spaces:
                np.add.at(l1, an.units_of((w, ax)), _reduce_other(v.const(w), ax, 1))
            imp[zero] = l1[zero] * 1e-6
    norm = imp.copy()
    for gid in range(an.n_groups):
        sel = (an.group == gid) & ~an.frozen
        if sel.any():
            mean = imp[sel].mean()
            if mean > 0:
                norm[an.group == gid] = imp[an.group == gid] / mean
    return norm, notes


@dataclass
class _Segment:
    units: np.ndarray  # unique units of one data space
    width: np.ndarray  # positions per unit in that space
    gid: int
    channel_like: bool  # one position per unit: rounding applies


def segments(an: ChannelAnalysis) -> list[_Segment]:
    """One segment per distinct unit set of a non-constant space (the channel counts that must stay valid)."""
    seen: set[tuple] = set()
    out = []
    for key, sp in an.spaces.items():
        if key[0] in an.view.init:
            continue
        u, w = np.unique(an.unit[sp.atoms], return_counts=True)
        sig = tuple(u.tolist()) + tuple(w.tolist())
        if sig in seen:
            continue
        seen.add(sig)
        out.append(_Segment(u, w, an.space_group[key], bool((w == 1).all())))
    return out


def constraint_classes(segs: list[_Segment], n_units: int) -> np.ndarray:
    """Per unit, a label shared by the units that every segment constrains alike (same segments, same widths).

    Swapping a pruned unit for a kept one of the same class leaves every segment's kept count (so
    min_channels, max_ratio and round_to) as it was; across classes it need not - a C2f Split half
    losing one channel more than the other moves both halves off the probed step."""
    sig: list[list[tuple[int, int]]] = [[] for _ in range(n_units)]
    for i, s in enumerate(segs):
        for u, w in zip(s.units.tolist(), s.width.tolist(), strict=True):
            sig[u].append((i, int(w)))
    labels: dict[tuple, int] = {}
    return np.array([labels.setdefault(tuple(x), len(labels)) for x in sig], dtype=int)


def enforce(
    segs: list[_Segment], pruned: np.ndarray, cand: np.ndarray, imp: np.ndarray, pol: dict[int, Policy]
) -> np.ndarray:
    """Apply min_channels, max_ratio and round_to per segment (a few sweeps for overlapping ones)."""
    pruned = pruned & cand
    for _ in range(3):
        changed = False
        for s in segs:
            p = pol[s.gid]
            total = int(s.width.sum())
            pr = pruned[s.units]
            kept = total - int(s.width[pr].sum())
            floor_keep = max(p.min_channels, total - int(np.floor(p.max_ratio * total)), 1)
            if kept < floor_keep:
                back = s.units[pr][np.argsort(-imp[s.units[pr]], kind="stable")]
                for u, w in zip(back, s.width[pr][np.argsort(-imp[s.units[pr]], kind="stable")], strict=True):
                    if kept >= floor_keep:
                        break
                    pruned[u] = False
                    kept += int(w)
                    changed = True
            r = p.round_to
            if r > 1 and s.channel_like and kept % r and kept != total:
                down = kept - kept % r
                if kept % r * 2 < r and down >= floor_keep and down > 0:
                    free = s.units[~pruned[s.units] & cand[s.units]]
                    free = free[np.argsort(imp[free], kind="stable")][: kept - down]
                    if len(free) == kept - down:
                        pruned[free] = True
                        changed = True
                        continue
                up = min(kept - kept % r + r, total)
                back = s.units[pruned[s.units]]
                back = back[np.argsort(-imp[back], kind="stable")][: up - kept]
                if len(back):
                    pruned[back] = False
                    changed = True
        if not changed:
            break
    return pruned


@dataclass
class Selection:
    pruned: np.ndarray
    achieved: float
    macs_before: int
    macs_after: int
    prunable_macs: int


def select_units(
    an: ChannelAnalysis,
    imp: np.ndarray,
    ratio: float,
    scope: str,
    pol: dict[int, Policy],
    excluded: set[int],
    rank: np.ndarray | None = None,
    fraction: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> Selection:
    """Search the cut of the ranking whose constrained selection removes `ratio` of prunable MACs.

    `rank` orders the units instead of `imp` (importance per unit of measured latency saved;
    `imp` still decides inside a group); `fraction(pruned, candidates)` measures the budget instead
    of the MAC share (the measured-latency share, passes/prune/latency.py)."""
    rank = imp if rank is None else rank
    macs = MacModel(an)
    none = np.zeros(an.n_units, dtype=bool)
    base = macs.per_node(none)
    prunable = sum(base[i] for i in macs.prunable_nodes())
    before = sum(base.values())
    cand = ~an.frozen & ~np.isin(an.group, list(excluded))
    segs = segments(an)
    fixed = none.copy()
    ranked = cand.copy()
    for gid, p in pol.items():
        if p.ratio is not None:
            units = np.nonzero((an.group == gid) & cand)[0]
            units = units[np.argsort(imp[units], kind="stable")]
            fixed[units[: int(np.floor(p.ratio * len(units)))]] = True
            ranked[an.group == gid] = False

    def evaluate(pr: np.ndarray) -> tuple[float, np.ndarray]:
        pr = enforce(segs, pr | fixed, cand, imp, pol)
        if fraction is not None:
            return fraction(pr, cand), pr
        return (before - macs.total(pr)) / max(prunable, 1), pr

    best = (float("inf"), 0.0, none)
    if scope == "global":
        order = np.nonzero(ranked)[0]
        order = order[np.argsort(rank[order], kind="stable")]
        lo, hi = 0, len(order)
        cache: dict[int, tuple[float, np.ndarray]] = {}

        def at(k: int) -> tuple[float, np.ndarray]:
            if k not in cache:
                pr = none.copy()
                pr[order[:k]] = True
                cache[k] = evaluate(pr)
            return cache[k]

        while lo < hi:
            mid = (lo + hi) // 2
            if at(mid)[0] < ratio:
                lo = mid + 1
            else:
                hi = mid
        for k in range(max(0, lo - 4), min(len(order), lo + 4) + 1):
            got, pr = at(k)
            if abs(got - ratio) < best[0]:
                best = (abs(got - ratio), got, pr)
    else:
        groups = [np.nonzero((an.group == gid) & ranked)[0] for gid in range(an.n_groups)]
        groups = [g[np.argsort(imp[g], kind="stable")] for g in groups if len(g)]

        def at_p(q: float) -> tuple[float, np.ndarray]:
            pr = none.copy()
            for g in groups:
                pr[g[: int(np.floor(q * len(g) + 1e-9))]] = True
            return evaluate(pr)

        lo_q, hi_q = 0.0, 1.0
        for _ in range(30):
            mid = (lo_q + hi_q) / 2
            got, pr = at_p(mid)
            if abs(got - ratio) < best[0]:
                best = (abs(got - ratio), got, pr)
            if got < ratio:
                lo_q = mid
            else:
                hi_q = mid
    got, pr = best[1], best[2]
    if abs(got - ratio) > 0.01:
        got, pr = _refine(segs, pr, ranked & ~fixed, imp, pol, ratio, got, evaluate)
    return Selection(pr, float(got), int(before), int(macs.total(pr)), int(prunable))


def _refine(segs, pr, movable, imp, pol, ratio, got, evaluate, steps: int = 40):
    """Greedy moves of one rounding block (round_to channels of one segment) toward the target.

    With round_to > 1 the ranking cut moves MACs in coarse, non-monotonic steps (rounding a wide
    high-resolution layer shifts several percent at once), so the cut alone can miss +-2 %.
    """
    for _ in range(steps):
        if abs(got - ratio) <= 0.005:
            break
        best = None
        for s in segs:
            step = max(pol[s.gid].round_to, 1)
            if ratio > got:
                free = s.units[~pr[s.units] & movable[s.units]]
                move = free[np.argsort(imp[free], kind="stable")][:step]
            else:
                taken = s.units[pr[s.units] & movable[s.units]]
                move = taken[np.argsort(-imp[taken], kind="stable")][:step]
            if not len(move):
                continue
            cand = pr.copy()
            cand[move] = ratio > got
            g, cand = evaluate(cand)
            if abs(g - ratio) < abs(got - ratio) and (best is None or abs(g - ratio) < abs(best[0] - ratio)):
                best = (g, cand)
        if best is None:
            break
        got, pr = best
    return got, pr
