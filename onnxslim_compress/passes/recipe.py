"""YAML recipes <-> Pipelines. A recipe is `passes:` followed by a list of `{name: {params}}`.

Validation happens here, at load time, so a typo in a recipe fails in milliseconds with the key
named instead of after an hour of calibration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from onnxslim_compress.errors import RecipeError
from onnxslim_compress.passes import REGISTRY
from onnxslim_compress.passes.base import Pass, Pipeline


def pass_registry() -> dict[str, type[Pass]]:
    return REGISTRY


def make_pass(name: str, params: dict[str, Any] | None = None) -> Pass:
    reg = pass_registry()
    if name not in reg:
        raise RecipeError(f"unknown pass '{name}' (known: {', '.join(sorted(reg))})")
    return reg[name](**(params or {}))


def recipe_entries(data: Any, registry: dict[str, type[Pass]], where: str = "recipe") -> list[tuple[int, str, dict]]:
    """Validate the shape of a recipe mapping: [(index, pass name, raw params)], names known.

    Shared by plain recipes and search recipes (whose params may hold `{search: ...}` ranges).
    """
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping with a 'passes' list")
    extra = set(data) - {"passes"}
    if extra:
        raise RecipeError(f"{where}: unknown key '{sorted(extra)[0]}' (expected 'passes')")
    entries = data.get("passes")
    if not isinstance(entries, list):
        raise RecipeError(f"{where}: 'passes' must be a list")
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            name, params = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            name, params = next(iter(entry.items()))
            params = params or {}
        else:
            raise RecipeError(f"{where}: passes[{i}] must be a pass name or {{name: {{params}}}}")
        name = str(name)
        if name not in registry:
            raise RecipeError(f"{where}: unknown pass '{name}' (known: {', '.join(sorted(registry))})")
        if not isinstance(params, dict):
            raise RecipeError(f"{where}: passes[{i}] ({name}): parameters must be a mapping")
        out.append((i, name, params))
    return out


def pipeline_from_dict(data: Any, where: str = "recipe", registry: Mapping[str, type[Pass]] | None = None) -> Pipeline:
    """Validate a recipe mapping and build its passes; each pass checks its params against their
    declarations (types, Literal/declared choices, the dataclass's own checks) on construction."""
    reg = dict(registry) if registry is not None else pass_registry()
    entries = recipe_entries(data, reg, where)
    return Pipeline([reg[name](**(params or {})) for _, name, params in entries])


def canonical_pipeline(chosen: Mapping[str, dict[str, Any]], registry: Mapping[str, type[Pass]] | None = None) -> Pipeline:
    """Every lossless pass plus the `chosen` ones ({name: params}), in the registry's order.

    The registry is listed in pipeline order (passes/__init__.py), so this is the one place the
    order of a pipeline built from CLI flags comes from: with nothing chosen it is the lossless
    pipeline (simplify, fold_batchnorm, fuse_attention, eliminate_dead).
    """
    reg = dict(registry) if registry is not None else pass_registry()
    unknown = sorted(set(chosen) - set(reg))
    if unknown:
        raise RecipeError(f"unknown pass '{unknown[0]}' (known: {', '.join(sorted(reg))})")
    return Pipeline([cls(**dict(chosen.get(name) or {})) for name, cls in reg.items() if cls.lossless or name in chosen])


def load_recipe(path: str | os.PathLike) -> Pipeline:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe {p}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {p}: not valid YAML ({str(e).splitlines()[0]})") from None
    return pipeline_from_dict(data, f"recipe {p.name}")


def dump_recipe(pipeline: Pipeline) -> str:
    return yaml.safe_dump(pipeline.to_recipe(), sort_keys=False)
