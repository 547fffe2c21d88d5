"""Config resolution: a checkpoint's config.json -> the config values of an artifact's interface.

Each config entry (runtime/interface.py, from the spec's `config:`) names the config.json keys it is
read from, in order (dotted keys reach into nested dicts: `rope_parameters.rope_theta`), so one spec
reads checkpoints written by Transformers 4.x (`rope_scaling`, `rope_theta`, `torch_dtype`) and 5.x
(`rope_parameters`, `dtype`) alike.
Missing keys fall back to the default, an expression over other entries.
"""
from __future__ import annotations

import math
from pathlib import Path

import networkx as nx

from runtime.errors import ConfigError
from runtime.expr import Expr, ExprError
from runtime.files import read_json_object
from runtime.value_checks import CHECKS

_MISSING = object()
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,),
          "list": (list,), "any": (object,)}


def read_config_json(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    try:
        data = read_json_object(path, ConfigError)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no config.json in the checkpoint folder") from None
    if "auto_map" in data or data.get("trust_remote_code"):
        raise ConfigError(f"{path}: the config asks for remote code (auto_map); graphspec never runs "
                          "code from a checkpoint. Write a spec for this architecture instead.")
    return data


def lookup(data: dict, dotted: str):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def resolve_config(interface, hf: dict, source: str = "config.json", overrides: dict | None = None) -> dict:
    """Values for every config entry of the interface, in dependency order, type-checked and checked."""
    entries = interface.config
    values: dict = {}
    order = nx.DiGraph()
    for e in entries.values():
        order.add_node(e.name)
        if isinstance(e.default, Expr):
            for n in e.default.names:
                order.add_edge(n, e.name)
    problems = []
    for name in nx.lexicographical_topological_sort(order):
        e = entries[name]
        value, key = _MISSING, None
        if overrides and name in overrides:
            value, key = overrides[name], "override"
        for k in e.hf:
            if value is not _MISSING:
                break
            value, key = lookup(hf, k), k
        # JSON null means "not set" in HF configs (e.g. head_dim: null), so it takes the default.
        if value is _MISSING or (value is None and e.has_default):
            if not e.has_default:
                keys = " or ".join(e.hf) or "(no config.json key)"
                problems.append(f"{source}: missing required key {keys} (config '{name}')")
                continue
            try:
                value = e.default.evaluate(values) if isinstance(e.default, Expr) else e.default
            except ExprError as err:
                problems.append(f"{source}: cannot compute the default of '{name}' ({e.default}): {err}")
                continue
            key = "default"
        problem = _check_type(e, value)
        if problem:
            problems.append(f"{source}: {key}: {problem}")
            continue
        values[name] = float(value) if e.type == "float" and value is not None else value
    if problems:
        raise ConfigError("\n".join(problems))
    for check in interface.checks:
        try:
            ok = check.that.evaluate(values)
        except ExprError as err:
            problems.append(f"{source}: check '{check.that}' cannot be evaluated: {err}")
            continue
        if not ok:
            shown = ", ".join(f"{n}={values[n]!r}" for n in sorted(check.that.names) if n in values)
            problems.append(f"{source}: {check.message} ({shown})")
    for vc in interface.value_checks:
        try:
            value = vc.value.evaluate(values)
        except ExprError:
            continue      # a value no check of the spec's could compute is reported where it is used
        problem = CHECKS[vc.check](value)
        if problem:
            problems.append(f"{source}: {vc.at} = {describe(vc.value, values)}: {problem}")
    if problems:
        raise ConfigError("\n".join(problems))
    return values


def describe(expr: Expr, values: dict) -> str:
    """An expression as an error shows it, with the config values it reads: "a * b (a=2, b=-3)"."""
    names = sorted(n for n in expr.names if n in values)
    if not names or expr.is_constant():
        return str(expr)
    return f"{expr} ({', '.join(f'{n}={values[n]!r}' for n in names)})"


def _check_type(entry, value) -> str | None:
    if value is None and entry.has_default and entry.default is None:
        return None
    want = _TYPES[entry.type]
    if entry.type in ("int", "float") and isinstance(value, bool):
        return f"expected {entry.type} for '{entry.name}', got {value!r}"
    if not isinstance(value, want):
        return f"expected {entry.type} for '{entry.name}', got {type(value).__name__} {value!r}"
    if entry.type in ("int", "float") and isinstance(value, float) and not math.isfinite(value):
        return f"'{entry.name}' must be a finite number, got {value!r}"
    return None
