"""An artifact's parallel.json (written by the shard pass, compiler/parallel.py), read and validated:
per model tensor, the slice each rank loads, as expressions over the config (which holds this rank
and the number of ranks). A malformed file is an ArtifactError naming the file and the key."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ArtifactError
from runtime.expr import Expr, ExprError, parse_expr
from runtime.rules import template_regex

FORMAT = 1
PLAN = "parallel.json"


@dataclass(frozen=True)
class Split:
    tensor: str          # a template: layers.{i}.attn.q_proj.weight
    dim: int
    start: Expr
    length: Expr


@dataclass(frozen=True)
class Plan:
    size: str            # config names: the number of ranks, this rank
    rank: str
    split: tuple[Split, ...]
    rank0: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "_regexes", [(template_regex(s.tensor), s) for s in self.split]
                           + [(template_regex(t), t) for t in self.rank0])

    def of(self, tensor: str) -> Split | str | None:
        """How a concrete tensor (layers.3.attn.q_proj.weight) is held: its Split, "rank0", or None (whole)."""
        for rx, entry in self._regexes:
            if rx.match(tensor):
                return entry if isinstance(entry, Split) else "rank0"
        return None


def read_plan(directory: str | Path) -> Plan | None:
    """The artifact's plan, or None when it was compiled without --tp."""
    path = Path(directory) / PLAN
    if not path.exists():
        return None
    where = str(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{where}: not readable JSON: {err}") from None

    def fail(key: str, message: str):
        raise ArtifactError(f"{where}: {key}: {message}")

    def get(obj, key: str, kind, at: str):
        if not isinstance(obj, dict) or key not in obj:
            fail(f"{at}.{key}" if at else key, "missing")
        value = obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            fail(f"{at}.{key}" if at else key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def expr(text: str, at: str) -> Expr:
        try:
            return parse_expr(text)
        except ExprError as err:
            fail(at, f"bad expression {text!r}: {err}")

    if get(data, "format", int, "") != FORMAT:
        fail("format", f"this runtime reads plan format {FORMAT}, the file is format {data.get('format')!r}")
    split = []
    for i, s in enumerate(get(data, "split", list, "")):
        at = f"split[{i}]"
        split.append(Split(get(s, "tensor", str, at), get(s, "dim", int, at),
                           expr(get(s, "start", str, at), f"{at}.start"), expr(get(s, "length", str, at), f"{at}.length")))
    rank0 = get(data, "rank0", list, "")
    if not all(isinstance(t, str) for t in rank0):
        fail("rank0", f"expected a list of tensor names, got {rank0!r}")
    return Plan(get(data, "size", str, ""), get(data, "rank", str, ""), tuple(split), tuple(rank0))
