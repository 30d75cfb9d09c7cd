"""The search space, derived from a recipe whose parameters may be ranges or choices.

A search recipe is an ordinary recipe (`passes: [{name: {params}}]`) in which any parameter may be
`{search: [lo, hi]}` (a numeric range; integers stay integers, `log: true` samples on a log scale,
`step: s` snaps to a grid) or `{choices: [...]}` (categorical), and a pass may carry
`enabled: {choices: [true, false]}` (or a fixed `enabled: false`). Everything else is pinned.

Why a recipe and not a separate search-space file: the user already knows the recipe format, can pin
any knob they do not want searched, and the chosen trial turns back into a plain recipe they can
replay with `compress --recipe`. Every range end and every choice is validated by building the pass
up front, so a typo fails before any calibration starts.

The registry the passes come from is a parameter (default: onnxslim_compress.passes.REGISTRY), so
tests and users can search over their own passes without touching the global table. The default
search recipe is not written here: each pass parameter declares the range worth exploring
(`param(search=...)`, passes/base.py) and `default_recipe` collects them.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from onnxslim_compress.errors import RecipeError
from onnxslim_compress.passes.base import (
    FIDELITY_GOAL,
    Choices,
    Pass,
    PerTarget,
    Pinned,
    Pipeline,
    Range,
    When,
    param_specs,
)
from onnxslim_compress.passes.recipe import pass_registry, recipe_entries

Registry = Mapping[str, type[Pass]]

#: keys a search spec may hold
_SPEC_KEYS = {"search", "choices", "log", "step"}


@dataclass(frozen=True)
class Dim:
    """One searched knob. `name` is the Optuna parameter name: `<slot>.<param>`."""

    name: str
    slot: str
    param: str
    kind: Literal["float", "int", "choice"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this knob's value."""
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def distribution(self) -> Any:
        import optuna.distributions as od  # lazy: recipes and the CLI read the space without optuna

        if self.kind == "int":
            return od.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        if self.kind == "float":
            return od.FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)
        return od.CategoricalDistribution(list(self.choices))

    def midpoint(self) -> Any:
        """A central value: the default warm-start point of a range, the first choice otherwise."""
        if self.kind == "choice":
            return self.choices[0]
        lo, hi = float(self.low), float(self.high)
        mid = math.sqrt(lo * hi) if self.log else (lo + hi) / 2
        return self.snap(mid)

    def snap(self, x: float) -> Any:
        """`x` clipped into the range and rounded to the grid (ints stay ints)."""
        lo, hi = float(self.low), float(self.high)
        x = min(max(x, lo), hi)
        if self.kind == "int":
            step = int(self.step or 1)
            return int(self.low) + int(round((x - lo) / step)) * step if x < hi else int(self.high)
        if self.step:
            k = round((x - lo) / float(self.step))
            return round(min(lo + k * float(self.step), hi), 12)  # on the grid, without float dust
        return float(x)

    def describe(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        d: dict[str, Any] = {"search": [self.low, self.high]}
        if self.log:
            d["log"] = True
        if self.step:
            d["step"] = self.step
        return d


@dataclass
class Slot:
    """One pass of the recipe: its pinned parameters and its searched ones."""

    slot: str
    pass_name: str
    fixed: dict[str, Any] = field(default_factory=dict)
    dims: list[Dim] = field(default_factory=list)
    #: the on/off knob, or None when the pass is always on (or always off, see `enabled`)
    enabled_dim: Dim | None = None
    enabled: bool = True


def _is_spec(v: Any) -> bool:
    return isinstance(v, dict) and ("search" in v or "choices" in v)


def _parse_dim(slot: str, param: str, spec: dict, where: str) -> Dim:
    extra = set(spec) - _SPEC_KEYS
    if extra:
        raise RecipeError(f"{where}: unknown key '{sorted(extra)[0]}' in the search spec of '{param}' (known: search, choices, log, step)")
    name = f"{slot}.{param}"
    if "choices" in spec:
        if "search" in spec:
            raise RecipeError(f"{where}: '{param}' has both 'search' and 'choices'")
        ch = spec["choices"]
        if not isinstance(ch, list) or not ch:
            raise RecipeError(f"{where}: '{param}': choices must be a non-empty list")
        for c in ch:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise RecipeError(f"{where}: '{param}': choice {c!r} is not a number, string, boolean or null")
        if len({json.dumps(c) for c in ch}) != len(ch):
            raise RecipeError(f"{where}: '{param}': choices repeat a value")
        return Dim(name, slot, param, "choice", choices=tuple(ch))
    rng = spec["search"]
    if not isinstance(rng, list) or len(rng) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in rng):
        raise RecipeError(f"{where}: '{param}': search must be [low, high] numbers, got {rng!r}")
    lo, hi = rng
    if not lo < hi:
        raise RecipeError(f"{where}: '{param}': search range needs low < high, got [{lo}, {hi}]")
    log = bool(spec.get("log", False))
    if log and lo <= 0:
        raise RecipeError(f"{where}: '{param}': a log range needs low > 0")
    step = spec.get("step")
    kind: Literal["int", "float"] = "int" if isinstance(lo, int) and isinstance(hi, int) and not isinstance(step, float) else "float"
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise RecipeError(f"{where}: '{param}': step must be a positive number")
    if log and step is not None:
        raise RecipeError(f"{where}: '{param}': log and step cannot be combined")
    if kind == "float":
        lo, hi = float(lo), float(hi)
    return Dim(name, slot, param, kind, low=lo, high=hi, log=log, step=step)


class SearchSpace:
    """Slots in recipe order; `dims` lists every knob Optuna samples."""

    def __init__(self, slots: list[Slot], registry: Registry):
        self.slots = slots
        self.registry = registry
        names = [d.name for d in self.dims]
        if len(set(names)) != len(names):  # pragma: no cover - slot names are unique by construction
            raise RecipeError("duplicate search parameter names")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_recipe(cls, data: Any, registry: Registry | None = None, where: str = "search recipe") -> SearchSpace:
        """Parse a recipe mapping (already loaded from YAML) into a space, validating every value."""
        reg = registry if registry is not None else _default_registry()
        entries = recipe_entries(data, reg, where)
        if not entries:
            raise RecipeError(f"{where}: 'passes' must be a non-empty list")
        slots: list[Slot] = []
        seen: dict[str, int] = {}
        for i, pname, params in entries:
            seen[pname] = seen.get(pname, 0) + 1
            slot_name = pname if seen[pname] == 1 else f"{pname}#{seen[pname]}"
            slot = Slot(slot_name, pname)
            w = f"{where}: passes[{i}] ({pname})"
            for k, v in params.items():
                if k == "enabled":
                    if isinstance(v, bool):
                        slot.enabled = v
                    elif _is_spec(v):
                        d = _parse_dim(slot_name, "enabled", v, w)
                        if d.kind != "choice" or any(not isinstance(c, bool) for c in d.choices):
                            raise RecipeError(f"{w}: enabled must be true, false or {{choices: [true, false]}}")
                        slot.enabled_dim = d
                    else:
                        raise RecipeError(f"{w}: enabled must be true, false or {{choices: [true, false]}}")
                elif _is_spec(v):
                    slot.dims.append(_parse_dim(slot_name, str(k), v, w))
                else:
                    slot.fixed[str(k)] = v
            _validate_slot(slot, reg[pname], w)
            slots.append(slot)
        return cls(slots, reg)

    # ------------------------------------------------------------------ views

    @property
    def dims(self) -> list[Dim]:
        out: list[Dim] = []
        for s in self.slots:
            if s.enabled_dim is not None:
                out.append(s.enabled_dim)
            out.extend(s.dims)
        return out

    def one_knob(self) -> Dim | None:
        """The single numeric knob when that is all the space searches (Condensa's one-knob mode)."""
        dims = self.dims
        if len(dims) == 1 and dims[0].numeric:
            return dims[0]
        return None

    def cardinality(self, limit: int = 10000) -> int | None:
        """Distinct candidates of an all-categorical space (None if a knob is numeric or there are
        more than `limit`): the search stops there instead of proposing repeats."""
        dims = self.dims
        if any(d.numeric for d in dims):
            return None
        if math.prod(len(d.choices) for d in dims) > limit:
            return None
        keys = {self.key(dict(zip([d.name for d in dims], combo, strict=True)))
                for combo in itertools.product(*(d.choices for d in dims))}
        return len(keys)

    def raw_size(self) -> int | None:
        """Number of raw knob combinations of an all-categorical space (None if a knob is numeric)."""
        if any(d.numeric for d in self.dims):
            return None
        return math.prod(len(d.choices) for d in self.dims)

    def neighbor(self, values: Mapping[str, Any], rng: Any) -> dict[str, Any]:
        """`values` with one knob that matters changed: a categorical knob to another choice, a
        numeric one moved by 5-25 % of its range (snapped to its grid). Used to replace a sampler's
        repeat by a nearby new candidate."""
        out = dict(values)
        active = [s.enabled_dim for s in self.slots if s.enabled_dim is not None]
        active += [d for s in self.slots if self._slot_on(s, values) for d in s.dims]
        if not active:
            return out
        d = active[int(rng.integers(len(active)))]
        if d.kind == "choice":
            others = [c for c in d.choices if c != values[d.name]]
            if others:
                out[d.name] = others[int(rng.integers(len(others)))]
            return out
        lo, hi = float(d.low), float(d.high)
        delta = (hi - lo) * float(rng.uniform(0.05, 0.25)) * (1 if rng.random() < 0.5 else -1)
        x = float(values[d.name]) + delta
        if not lo <= x <= hi:
            x = float(values[d.name]) - delta
        out[d.name] = d.snap(x)
        return out

    def gentler(self, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """`values` with every numeric knob of an enabled pass that declares a gentle end moved
        halfway toward it (snapped to its grid), or None when none moves: the next point to try
        after a candidate broke the constraint (prune 0.3 + int8 too lossy: prune 0.175 + int8)."""
        out = dict(values)
        for s in self.slots:
            if not self._slot_on(s, values):
                continue
            for d in s.dims:
                end = _gentle_end(self.registry.get(s.pass_name), d.param)
                if end is None or not d.numeric:
                    continue
                x = float(values[d.name])
                goal = float(d.low if end == "low" else d.high)
                new = d.snap(goal + (x - goal) / 2)
                if new == values[d.name] and x != goal:  # the grid rounded the half-step away: one grid step
                    grid = float(d.step or (1 if d.kind == "int" else 0))
                    new = d.snap(x + grid * (1 if goal > x else -1)) if grid else d.snap(goal)
                out[d.name] = new
        return out if self.key(out) != self.key(values) else None

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Every knob is asked every trial (a flat space suits the GP and multivariate TPE best);
        knobs of a disabled pass are dropped later by `effective`."""
        return {d.name: d.suggest(trial) for d in self.dims}

    def _slot_on(self, s: Slot, values: Mapping[str, Any]) -> bool:
        if s.enabled_dim is not None:
            return bool(values.get(s.enabled_dim.name, True))
        return s.enabled

    def effective(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values that change the result: knobs of disabled passes are left out."""
        out: dict[str, Any] = {}
        for s in self.slots:
            if s.enabled_dim is not None:
                out[s.enabled_dim.name] = bool(values[s.enabled_dim.name])
            if not self._slot_on(s, values):
                continue
            for d in s.dims:
                out[d.name] = values[d.name]
        return out

    def key(self, values: Mapping[str, Any]) -> str:
        """Canonical identity of a parameter set: equal keys build the same pipeline."""
        return json.dumps(self.effective(values), sort_keys=True, default=str)

    def steps(self, values: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """(pass name, full params) of the enabled passes, in order."""
        out = []
        for s in self.slots:
            if not self._slot_on(s, values):
                continue
            params = dict(s.fixed)
            for d in s.dims:
                params[d.param] = values[d.name]
            out.append((s.pass_name, params))
        return out

    def recipe(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The plain recipe of one trial (replayable with `compress --recipe`)."""
        return {"passes": [{name: params} for name, params in self.steps(values)]}

    def passes(self, values: Mapping[str, Any]) -> list[Pass]:
        return [self.registry[name](**params) for name, params in self.steps(values)]

    def pipeline(self, values: Mapping[str, Any]) -> Pipeline:
        return Pipeline(self.passes(values))

    def describe(self) -> dict[str, Any]:
        """The search recipe back as data (stored in the study so workers rebuild the same space)."""
        entries = []
        for s in self.slots:
            params: dict[str, Any] = dict(s.fixed)
            for d in s.dims:
                params[d.param] = d.describe()
            if s.enabled_dim is not None:
                params["enabled"] = s.enabled_dim.describe()
            elif not s.enabled:
                params["enabled"] = False
            entries.append({s.pass_name: params} if params else s.pass_name)
        return {"passes": entries}

    def presets(self) -> list[dict[str, Any]]:
        """The warm-start points (see named_presets), without their names."""
        return [v for _, v in self.named_presets()]

    def named_presets(self) -> list[tuple[str, dict[str, Any]]]:
        """Warm-start points, each with a name: first the fixed presets a user would try by hand
        (FIXED_PRESETS: int8 alone, int8 with the sensitive layers float, prune 0.3 + int8, prune 0.3,
        low rank 0.9, fp16, whichever this space can express), then each optional pass alone at central settings, then all together.

        The search enqueues them before any sampled trial, so its pick is never worse than the best
        of them at the constraint, and the surrogate model gets informative first points instead
        of random ones.
        """
        base = {d.name: d.midpoint() for d in self.dims}
        optional = [s for s in self.slots if s.enabled_dim is not None]
        out: list[tuple[str, dict[str, Any]]] = self.fixed_presets()
        if not optional:
            out.append(("central", base))
        for s in optional:
            v = dict(base)
            for o in optional:
                v[o.enabled_dim.name] = o is s  # type: ignore[union-attr]
            out.append((f"{s.slot} alone (central)", v))
        if len(optional) > 1:
            v = dict(base)
            for o in optional:
                v[o.enabled_dim.name] = True  # type: ignore[union-attr]
            out.append(("all passes (central)", v))
        for _, v in out:  # a preset must be a legal point even if a choice list lacks True/False
            for o in optional:
                d = o.enabled_dim
                if d is not None and v[d.name] not in d.choices:
                    v[d.name] = d.choices[0]
        uniq: dict[str, tuple[str, dict[str, Any]]] = {}
        for name, v in out:
            uniq.setdefault(self.key(v), (name, v))
        return list(uniq.values())

    def fixed_presets(self) -> list[tuple[str, dict[str, Any]]]:
        """The FIXED_PRESETS this space can express, in order (they lead named_presets)."""
        base = {d.name: d.midpoint() for d in self.dims}
        out = []
        for name, spec in FIXED_PRESETS:
            v = self._preset_point(base, spec)
            if v is not None:
                out.append((name, v))
        return out

    def _preset_point(self, base: Mapping[str, Any], spec: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
        """`spec` ({pass: {param: value}}: these passes on, every other optional pass off) as a point
        of this space, or None when the space cannot express it (a pass missing or pinned off, a
        value outside a range or the choices, or a pinned parameter that differs)."""
        v = dict(base)
        named = set(spec)
        if not named <= {s.pass_name for s in self.slots}:
            return None
        for s in self.slots:
            on = s.pass_name in named
            if s.enabled_dim is not None:
                if on not in s.enabled_dim.choices:
                    return None
                v[s.enabled_dim.name] = on
            elif on and not s.enabled:
                return None
            if not on:
                continue
            dims = {d.param: d for d in s.dims}
            for k, want in spec[s.pass_name].items():
                if k in dims:
                    d = dims[k]
                    if d.kind == "choice":
                        if want is ANY_SET:
                            want = next((c for c in d.choices if c is not None), None)
                            if want is None:
                                return None
                        if want not in d.choices:
                            return None
                        v[d.name] = want
                    elif not float(d.low) <= float(want) <= float(d.high):
                        return None
                    else:
                        v[d.name] = d.snap(float(want))
                elif want is ANY_SET or s.fixed.get(k, _default_of(self.registry[s.pass_name], k)) != want:
                    return None
        return v


def _gentle_end(cls: type[Pass] | None, name: str) -> str | None:
    """The declared gentle end ("low"/"high") of parameter `name`'s search Range, whatever the
    target or sibling condition around it (None: no Range, or none declared)."""
    if cls is None:
        return None
    for spec in param_specs(cls.Params):
        if spec.name != name:
            continue
        todo = [spec.search]
        while todo:
            x = todo.pop()
            if isinstance(x, Range):
                return x.gentle
            if isinstance(x, When):
                todo.append(x.then)
            elif isinstance(x, PerTarget):
                todo += [v for _, v in x.specs] + [x.default]
    return None


def _default_of(cls: type[Pass], name: str) -> Any:
    """The declared default of parameter `name` of a pass (None if it has no such parameter)."""
    for spec in param_specs(cls.Params):
        if spec.name == name:
            return spec.default
    return None


#: a preset value meaning "the knob's first non-null choice" (e.g. quantize's min_fidelity: the
#: fidelity goal the default recipe derives from the constraint, which keeps sensitive layers float)
ANY_SET = object()

#: the fixed presets a user would try by hand (the named warm-start points of every search):
#: {pass: {param: value}}, the named passes on and every other optional pass off
FIXED_PRESETS: tuple[tuple[str, dict[str, dict[str, Any]]], ...] = (
    ("int8", {"quantize": {"mode": "int8"}}),
    ("int8, sensitive layers float", {"quantize": {"mode": "int8", "min_fidelity": ANY_SET}}),
    ("prune 0.3 + int8", {"prune_channels": {"ratio": 0.3}, "quantize": {"mode": "int8"}}),
    ("prune 0.3", {"prune_channels": {"ratio": 0.3}}),
    ("low rank 0.9", {"low_rank": {"value": 0.9}}),
    ("fp16", {"quantize": {"mode": "fp16"}}),
)


def _validate_slot(slot: Slot, cls: type[Pass], where: str) -> None:
    """Build the pass at each range end and each choice so a bad value fails now, not in trial 7."""
    def build(override: dict[str, Any]) -> None:
        try:
            cls(**{**slot.fixed, **override})
        except RecipeError as e:
            raise RecipeError(f"{where}: {e}") from None
        except (TypeError, ValueError) as e:
            raise RecipeError(f"{where}: {e}") from None

    mids = {d.param: d.midpoint() for d in slot.dims}
    build(mids)
    for d in slot.dims:
        values = list(d.choices) if d.kind == "choice" else [d.low, d.high]
        for v in values:
            build({**mids, d.param: v})


def _default_registry() -> Registry:
    return pass_registry()


#: what default_recipe leaves out of a pass's entry
_OMIT = object()


def _resolve(spec: Any, target_kind: str, goal: str | None, siblings: Mapping[str, Any]) -> Any:
    """A declared search spec (passes.base: Range, Choices, Pinned, PerTarget, When) as the value a
    search recipe holds for it, or _OMIT."""
    if isinstance(spec, PerTarget):
        return _resolve(dict(spec.specs).get(target_kind, spec.default), target_kind, goal, siblings)
    if isinstance(spec, When):
        if siblings.get(spec.param) in spec.values:
            return _resolve(spec.then, target_kind, goal, siblings)
        return _OMIT
    if isinstance(spec, Pinned):
        return spec.value
    if isinstance(spec, Range):
        d: dict[str, Any] = {"search": [spec.low, spec.high]}
        if spec.step is not None:
            d["step"] = spec.step
        if spec.log:
            d["log"] = True
        return d
    if isinstance(spec, Choices):
        if any(v is FIDELITY_GOAL for v in spec.values):
            if goal is None:
                return _OMIT
            return {"choices": [goal if v is FIDELITY_GOAL else v for v in spec.values]}
        return {"choices": list(spec.values)}
    return _OMIT


def pass_search_entry(cls: type[Pass], target_kind: str, goal: str | None = None) -> dict[str, Any] | None:
    """The default search recipe entry of one pass, from its parameters' `search` declarations:
    switchable (`enabled: {choices: [true, false]}`) with each declared knob, or None when the
    pass declares no search (it then runs as is)."""
    specs = [sp for sp in param_specs(cls.Params) if sp.search is not None]
    if not specs:
        return None
    values: dict[str, Any] = {sp.name: sp.default for sp in param_specs(cls.Params)}
    entry: dict[str, Any] = {"enabled": {"choices": [True, False]}}
    for sp in specs:
        v = _resolve(sp.search, target_kind, goal, values)
        if v is _OMIT:
            continue
        entry[sp.name] = v
        if not _is_spec(v):
            values[sp.name] = v  # a pinned value is what later `When`s of this pass see
    return entry


def default_recipe(target_kind: str = "cpu", registry: Registry | None = None, fidelity_goal: str | None = None) -> dict[str, Any]:
    """The CLI's default search: every registered pass in registry (pipeline) order; a pass whose
    parameters declare a search range (`param(search=...)`) is switchable with those knobs.

    The ranges sit on the parameters (passes/*): the ones worth exploring on real CNNs, with
    continuous knobs on a grid finer than any measurable difference, so a sampler's near-repeat
    (0.8975 vs 0.89746) becomes an exact repeat, which costs nothing, or shares a cached prefix with
    an earlier trial. With `fidelity_goal` (e.g. "cosine=0.995", derived from the constraint by the
    search), quantization may keep its most sensitive layers in float until that goal holds: how
    many is then decided per candidate.
    """
    reg = registry if registry is not None else _default_registry()
    entries: list[Any] = []
    for name, cls in reg.items():
        entry = pass_search_entry(cls, target_kind, fidelity_goal)
        if entry is None and not cls.lossless:
            continue  # nothing to search and not part of every pipeline (specialize needs the user's inputs)
        entries.append(name if entry is None else {name: entry})
    if not any(isinstance(e, dict) for e in entries):
        raise RecipeError("no compression pass (prune_channels, low_rank, quantize) is installed: nothing to search")
    return {"passes": entries}
