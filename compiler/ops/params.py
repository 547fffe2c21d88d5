"""Parameter kinds a spec declares (`q_proj: {linear: [hidden, heads * head_dim], bias: attention_bias}`).

A kind says which tensors it owns with their shapes (for the checker and the weight rules) and how the
emitted model.py constructs it. Blocks and repeats are the structural kinds and live in the lowering.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


# The modules the kinds construct (ops.Linear, ops.Norm, ops.Tensor) are runtime/ops: they subclass
# nn.Module, and the compiler reads this table without torch.


@dataclass(frozen=True)
class ParamKind:
    name: str
    dims: tuple[str, ...]                     # names of the shape list entries: linear: [in, out]
    options: dict[str, object]                # option name -> default (config expressions)
    tensors: Callable[[dict], list[tuple[str, tuple, object]]]   # dims+options -> (tensor, shape, condition)
    # Python source constructing the module, from the options' and dims' sources and their values
    # (printer.const_value: a constant, or SYMBOLIC when the config decides)
    construct: Callable[[dict, dict], str]
    doc: str = ""
    variadic: bool = False                    # any rank: the dims are named d0, d1, ... in order


def _grouped(channels, groups):
    from runtime.expr import parse_expr
    return channels if groups.is_constant() and groups.evaluate({}) == 1 else parse_expr(f"({channels}) // ({groups})")


def _shape(d: dict) -> tuple:
    """A variadic kind's dims d0, d1, ... in order."""
    return tuple(d[f"d{i}"] for i in range(sum(1 for k in d if k[:1] == "d" and k[1:].isdigit())))


def _bias_tensors(shape_w, shape_b, opts):
    return [("weight", shape_w, True), ("bias", shape_b, opts["bias"])]


PARAM_KINDS: dict[str, ParamKind] = {k.name: k for k in (
    ParamKind("linear", ("in", "out"), {"bias": False},
              lambda d: _bias_tensors((d["out"], d["in"]), (d["out"],), d),
              lambda s, v: f"ops.Linear({s['in']}, {s['out']}, bias={s['bias']})",
              "y = x @ weight.T + bias; weight is [out, in] like torch"),
    ParamKind("grouped_linear", ("num", "in", "out"), {"bias": False},
              lambda d: _bias_tensors((d["num"], d["out"], d["in"]), (d["num"], d["out"]), d),
              lambda s, v: f"ops.GroupedLinear({s['num']}, {s['in']}, {s['out']}, bias={s['bias']})",
              "`num` linears of the same size stacked (experts): weight is [num, out, in], bias [num, out]"),
    ParamKind("embedding", ("num", "dim"), {},
              lambda d: [("weight", (d["num"], d["dim"]), True)],
              lambda s, v: f"nn.Embedding({s['num']}, {s['dim']})",
              "a table of `num` rows of size `dim`"),
    ParamKind("norm", (), {"bias": False},
              lambda d: _bias_tensors(_shape(d), _shape(d), d),
              lambda s, v: f"ops.Norm({', '.join(_shape(s))})" if v["bias"] in (False, None)
              else f"ops.Norm({', '.join(_shape(s))}, bias={s['bias']})",
              "the scale (and optional shift) of a normalisation over the last dim; of any rank: a [heads, "
              "head_dim] weight scales each head with its own row", variadic=True),
    ParamKind("conv2d", ("in", "out", "kernel"), {"bias": True},
              lambda d: _bias_tensors((d["out"], d["in"], d["kernel"], d["kernel"]), (d["out"],), d),
              lambda s, v: f"nn.Conv2d({s['in']}, {s['out']}, {s['kernel']}, bias={s['bias']})",
              "a square convolution kernel; weight is [out, in, kernel, kernel] like torch"),
    ParamKind("conv1d", ("in", "out", "kernel"), {"bias": True, "groups": 1},
              lambda d: _bias_tensors((d["out"], _grouped(d["in"], d["groups"]), d["kernel"]), (d["out"],), d),
              lambda s, v: f"nn.Conv1d({s['in']}, {s['out']}, {s['kernel']}, groups={s['groups']}, bias={s['bias']})",
              "a 1-d convolution kernel; weight is [out, in / groups, kernel] like torch"),
    ParamKind("tensor", (), {},
              lambda d: [("weight", _shape(d), True)],
              lambda s, v: f"ops.Tensor({', '.join(_shape(s))})",
              "a bare learned tensor of any shape", variadic=True),
)}
