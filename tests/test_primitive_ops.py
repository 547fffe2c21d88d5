"""Every op's emitted PyTorch code against the torch expression it stands for, on random inputs.

One case per op (some ops have several): a spec line (or a few), the inputs it reads and the torch
expression the line means. Each case compiles a one-block spec without fusion, runs the emitted
model.py and compares. A test checks that every op a spec may write has a case here or is proven by
the parity tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
import yaml

from compiler.emit import emit_model
from compiler.ops import OPS
from compiler.passes import run_pipeline
from compiler.spec import load_spec
from runtime.context import ForwardContext

CONFIG = {"d": 6, "h": 2, "k": 3}
B, S = 2, 4


@dataclass
class Case:
    lines: list[str]
    # name -> (dtype, shape, kind); kind: normal, positive, mask, index:N (0 <= i < N), nonzero:N (1 <= i < N)
    inputs: dict[str, tuple]
    ref: object                            # (inputs, net) -> tensor or tuple of tensors
    outputs: list[str] = field(default_factory=lambda: ["y"])
    params: dict[str, str] = field(default_factory=dict)
    exact: bool = True                     # bit-identical; else within 1e-6


X = {"x": ("float", ["B", "S", "d"], "normal")}
AB = {"a": ("float", ["B", "S", "d"], "normal"), "b": ("float", ["d"], "normal")}
IDS = {"x": ("int", ["B", "S"], "index:7")}

CASES: dict[str, Case] = {
    "add": Case(["y: {op: add, a: a, b: b}"], AB, lambda i, n: i["a"] + i["b"]),
    "sub": Case(["y: {op: sub, a: a, b: b}"], AB, lambda i, n: i["a"] - i["b"]),
    "mul": Case(["y: {op: mul, a: a, b: b}"], AB, lambda i, n: i["a"] * i["b"]),
    "div": Case(["y: {op: div, a: a, b: b}"], AB, lambda i, n: i["a"] / i["b"]),
    "div_floor_int": Case(["y: {op: div, a: x, b: m, rounding: floor}"],
                          {"x": ("int", ["B", "S"], "index:50"), "m": ("int", ["S"], "nonzero:5")},
                          lambda i, n: torch.div(i["x"], i["m"], rounding_mode="floor")),
    "scale": Case(["y: {op: scale, x: x, by: d ** -0.5}"], X, lambda i, n: i["x"] * 6 ** -0.5),
    # a decode step's few rows take a C silu (another exp: within a few ulp)
    "silu": Case(["y: {op: silu, x: x}"], X, lambda i, n: F.silu(i["x"]), exact=False),
    "relu": Case(["y: {op: relu, x: x}"], X, lambda i, n: F.relu(i["x"])),
    "gelu": Case(["y: {op: gelu, x: x, approximate: tanh}"], X, lambda i, n: F.gelu(i["x"], approximate="tanh")),
    "softcap": Case(["y: {op: softcap, x: x, cap: 2.5}"], X, lambda i, n: torch.tanh(i["x"] / 2.5) * 2.5),
    "tanh": Case(["y: {op: tanh, x: x}"], X, lambda i, n: torch.tanh(i["x"])),
    "sigmoid": Case(["y: {op: sigmoid, x: x}"], X, lambda i, n: torch.sigmoid(i["x"])),
    "exp": Case(["y: {op: exp, x: x}"], X, lambda i, n: torch.exp(i["x"])),
    "log": Case(["y: {op: log, x: x}"], {"x": ("float", ["B", "S", "d"], "positive")}, lambda i, n: torch.log(i["x"])),
    "sqrt": Case(["y: {op: sqrt, x: x}"], {"x": ("float", ["B", "S", "d"], "positive")}, lambda i, n: torch.sqrt(i["x"])),
    "neg": Case(["y: {op: neg, x: x}"], IDS, lambda i, n: -i["x"]),
    "abs": Case(["y: {op: abs, x: x}"], X, lambda i, n: torch.abs(i["x"])),
    "pow": Case(["y: {op: pow, x: x, exponent: 3}"], X, lambda i, n: torch.pow(i["x"], 3)),
    "clamp": Case(["y: {op: clamp, x: x, min: -0.5, max: k / 6}"], X, lambda i, n: torch.clamp(i["x"], -0.5, 0.5)),
    "clamp_int_min": Case(["y: {op: clamp, x: x, min: 3}"], IDS, lambda i, n: torch.clamp(i["x"], min=3)),
    "cast_fp32": Case(["y: {op: cast, x: x, to: fp32}"], X, lambda i, n: i["x"].float()),
    "cast_bool_float": Case(["y: {op: cast, x: m, to: float}"], {"m": ("bool", ["B", "S"], "mask")},
                            lambda i, n: i["m"].float()),
    "cast_int": Case(["y: {op: cast, x: x, to: int}"], X, lambda i, n: i["x"].long()),
    "cast_bool": Case(["y: {op: cast, x: x, to: bool}"], IDS, lambda i, n: i["x"].bool()),
    "dropout_eval": Case(["y: {op: dropout, x: x, p: 0.5}"], X, lambda i, n: i["x"]),
    "eq": Case(["y: {op: eq, a: x, value: 3}"], IDS, lambda i, n: i["x"] == 3),
    "ne": Case(["y: {op: ne, a: x, value: 3}"], IDS, lambda i, n: i["x"] != 3),
    "lt": Case(["y: {op: lt, a: a, b: b}"], AB, lambda i, n: i["a"] < i["b"]),
    "le": Case(["y: {op: le, a: a, value: 0.25}"], {"a": AB["a"]}, lambda i, n: i["a"] <= 0.25),
    "gt": Case(["y: {op: gt, a: a, b: b}"], AB, lambda i, n: i["a"] > i["b"]),
    "ge": Case(["y: {op: ge, a: x, value: k}"], IDS, lambda i, n: i["x"] >= 3),
    "not_equal": Case(["y: {op: not_equal, x: x, value: 0}"], IDS, lambda i, n: (i["x"] != 0).long()),
    "where": Case(["y: {op: where, cond: m, a: a, b: b}"],
                  {"m": ("bool", ["B", "S", "1"], "mask"), "a": ("float", ["B", "S", "d"], "normal"),
                   "b": ("float", ["d"], "normal")}, lambda i, n: torch.where(i["m"], i["a"], i["b"])),
    "where_value": Case(["y: {op: where, cond: m, a: a, value: -1e9}"],
                        {"m": ("bool", ["B", "S", "d"], "mask"), "a": ("float", ["B", "S", "d"], "normal")},
                        lambda i, n: i["a"].masked_fill(~i["m"], -1e9)),
    # fp32 sums and softmax of a few values run a C loop (another summation order than aten's)
    "sum": Case(["y: {op: sum, x: x, dim: -1, keepdim: true}"], X, lambda i, n: i["x"].sum(-1, keepdim=True),
                exact=False),
    "sum_bool": Case(["y: {op: sum, x: m, dim: 1}"], {"m": ("bool", ["B", "S"], "mask")}, lambda i, n: i["m"].sum(1)),
    "mean": Case(["y: {op: mean, x: x, dim: 1}"], X, lambda i, n: i["x"].mean(1)),
    "max": Case(["y: {op: max, x: x, dim: 0}"], X, lambda i, n: i["x"].amax(0)),
    "min": Case(["y: {op: min, x: x, dim: -1, keepdim: true}"], X, lambda i, n: i["x"].amin(-1, keepdim=True)),
    "argmax": Case(["y: {op: argmax, x: x, dim: -1}"], X, lambda i, n: i["x"].argmax(-1)),
    "topk": Case(["y, idx: {op: topk, x: x, k: k}"], X, lambda i, n: tuple(torch.topk(i["x"], 3)),
                 outputs=["y", "idx"]),
    "topk_smallest": Case(["y, idx: {op: topk, x: x, k: 2, dim: 1, largest: false}"], X,
                          lambda i, n: tuple(torch.topk(i["x"], 2, dim=1, largest=False)), outputs=["y", "idx"]),
    "softmax": Case(["y: {op: softmax, x: x}"], X, lambda i, n: torch.softmax(i["x"], -1), exact=False),
    "softmax_dim1": Case(["y: {op: softmax, x: x, dim: 1}"], X, lambda i, n: torch.softmax(i["x"], 1)),
    "log_softmax": Case(["y: {op: log_softmax, x: x}"], X, lambda i, n: torch.log_softmax(i["x"], -1)),
    "normalize": Case(["y: {op: normalize, x: x}"], X, lambda i, n: F.normalize(i["x"], dim=-1)),
    "normalize_p1": Case(["y: {op: normalize, x: x, p: 1, dim: 1}"], X, lambda i, n: F.normalize(i["x"], p=1, dim=1)),
    "cumsum": Case(["y: {op: cumsum, x: x, dim: 1}"], X, lambda i, n: i["x"].cumsum(1)),
    "cumsum_int": Case(["y: {op: cumsum, x: x, dim: 1}"], IDS, lambda i, n: i["x"].cumsum(1)),
    "gather": Case(["y: {op: gather, x: x, index: i, dim: -1}"],
                   X | {"i": ("int", ["B", "S", "2"], "index:6")}, lambda i, n: torch.gather(i["x"], -1, i["i"])),
    "take": Case(["y: {op: take, x: x, index: i, dim: 1}"],
                 X | {"i": ("int", ["3", "2"], "index:4")}, lambda i, n: i["x"][:, i["i"]]),
    "one_hot": Case(["y: {op: one_hot, x: x, num_classes: 7}"], IDS, lambda i, n: F.one_hot(i["x"], 7)),
    "matmul": Case(["y: {op: matmul, a: a, b: b}"],
                   {"a": ("float", ["B", "S", "d"], "normal"), "b": ("float", ["d", "k"], "normal")},
                   lambda i, n: torch.matmul(i["a"], i["b"])),
    "slice": Case(["y: {op: slice, x: x, dim: -1, start: 1, end: 4}"], X, lambda i, n: i["x"][..., 1:4]),
    "slice_step": Case(["y: {op: slice, x: x, dim: 1, start: -3, step: 2}"], X, lambda i, n: i["x"][:, -3::2]),
    "slice_past_end": Case(["y: {op: slice, x: x, dim: 2, end: d + 5}"], X, lambda i, n: i["x"][:, :, :11]),
    "unsqueeze": Case(["y: {op: unsqueeze, x: x, dim: -2}"], X, lambda i, n: i["x"].unsqueeze(-2)),
    "squeeze": Case(["y: {op: squeeze, x: x, dim: 1}"], {"x": ("float", ["B", "1", "d"], "normal")},
                    lambda i, n: i["x"].squeeze(1)),
    "expand_like": Case(["y: {op: expand, x: c, like: x}"], X | {"c": ("float", ["1", "1", "d"], "normal")},
                        lambda i, n: i["c"].expand_as(i["x"])),
    "expand_shape": Case(["y: {op: expand, x: c, shape: [h, -1, -1, d]}"], {"c": ("float", ["B", "1", "d"], "normal")},
                         lambda i, n: i["c"].expand(2, -1, -1, 6)),
    "reshape": Case(["y: {op: reshape, x: x, shape: [0, 0, h, -1]}"], X, lambda i, n: i["x"].reshape(B, S, 2, 3)),
    "reshape_all": Case(["y: {op: reshape, x: x, shape: [-1, d]}"], X, lambda i, n: i["x"].reshape(-1, 6)),
    "concat": Case(["y: {op: concat, a: c, b: x, dim: 1}"], X | {"c": ("float", ["1", "1", "d"], "normal")},
                   lambda i, n: torch.cat([i["c"].expand(B, 1, 6), i["x"]], 1)),
    "select": Case(["y: {op: select, x: x, dim: 1, index: 0}"], X, lambda i, n: i["x"][:, 0]),
    "flatten": Case(["y: {op: flatten, x: x, start: 1}"], X, lambda i, n: i["x"].flatten(1)),
    "transpose": Case(["y: {op: transpose, x: x, dim0: 1, dim1: 2}"], X, lambda i, n: i["x"].transpose(1, 2)),
    "add_scalar": Case(["y: {op: add_scalar, x: x, value: k}"], IDS, lambda i, n: i["x"] + 3),
    "split_heads": Case(["y: {op: split_heads, x: x, heads: h}"], X,
                        lambda i, n: i["x"].reshape(B, S, 2, 3).transpose(1, 2)),
    "merge_heads": Case(["y: {op: merge_heads, x: x}"], {"x": ("float", ["B", "h", "S", "k"], "normal")},
                        lambda i, n: i["x"].transpose(1, 2).reshape(B, S, 6)),
    # a few fp32 rows take the C product (runtime/ops/native_rows.py): F.linear's sums in another order
    "linear": Case(["y: {op: linear, x: x, w: proj}"], X, lambda i, n: F.linear(i["x"], n.proj.weight, n.proj.bias),
                   params={"proj": "{linear: [d, k], bias: true}"}, exact=False),
    # each (token, pick) row through the expert its index names: per token (shared by its picks) or per pick
    "grouped_linear": Case(["y: {op: grouped_linear, x: x, index: idx, w: experts}"],
                           X | {"idx": ("int", ["B", "S", "h"], "index:3")},
                           lambda i, n: torch.einsum("bsi,bsjoi->bsjo", i["x"], n.experts.weight[i["idx"]])
                           + n.experts.bias[i["idx"]],
                           params={"experts": "{grouped_linear: [k, d, d], bias: true}"}, exact=False),
    "grouped_linear_per_pick": Case(["y: {op: grouped_linear, x: x, index: idx, w: experts}"],
                                    {"x": ("float", ["B", "S", "h", "d"], "normal"),
                                     "idx": ("int", ["B", "S", "h"], "index:3")},
                                    lambda i, n: torch.einsum("bsji,bsjoi->bsjo", i["x"], n.experts.weight[i["idx"]]),
                                    params={"experts": "{grouped_linear: [k, d, h]}"}, exact=False),
    "embedding": Case(["y: {op: embedding, ids: x, w: table}"], IDS, lambda i, n: n.table.weight[i["x"]],
                      params={"table": "{embedding: [7, d]}"}),
    "param": Case(["c: {op: param, w: tok}", "y: {op: add, a: x, b: c}"], X, lambda i, n: i["x"] + n.tok.weight,
                  params={"tok": "{tensor: [1, 1, d]}"}),
    "rms_norm": Case(["y: {op: rms_norm, x: x, w: norm, eps: 1e-6}"], X,
                     lambda i, n: n.norm.weight * (i["x"] * torch.rsqrt(i["x"].pow(2).mean(-1, keepdim=True) + 1e-6)),
                     params={"norm": "{norm: d}"}, exact=False),
    "layer_norm": Case(["y: {op: layer_norm, x: x, w: norm, eps: 1e-5}"], X,
                       lambda i, n: F.layer_norm(i["x"], (6,), n.norm.weight, n.norm.bias, 1e-5),
                       params={"norm": "{norm: d, bias: true}"}),
    "conv1d": Case(["y: {op: conv1d, x: x, w: conv, stride: 2, padding: 1}"], {"x": ("float", ["B", "d", "S"], "normal")},
                   lambda i, n: F.conv1d(i["x"], n.conv.weight, n.conv.bias, stride=2, padding=1),
                   params={"conv": "{conv1d: [d, k, 3]}"}),
    "conv1d_groups": Case(["y: {op: conv1d, x: x, w: conv, dilation: 2, padding: 2}"],
                          {"x": ("float", ["B", "d", "S"], "normal")},
                          lambda i, n: F.conv1d(i["x"], n.conv.weight, None, padding=2, dilation=2, groups=3),
                          params={"conv": "{conv1d: [d, d, 3], groups: k, bias: false}"}),
    "conv2d": Case(["y: {op: conv2d, x: x, w: conv, stride: 2}"], {"x": ("float", ["B", "k", "d", "d"], "normal")},
                   lambda i, n: F.conv2d(i["x"], n.conv.weight, n.conv.bias, stride=2),
                   params={"conv": "{conv2d: [k, h, 2]}"}),
    "rope": Case(["y: {op: rope, x: x, cos: c, sin: s}"],
                 {"x": ("float", ["B", "h", "S", "d"], "normal"), "c": ("float", ["B", "S", "d"], "normal"),
                  "s": ("float", ["B", "S", "d"], "normal")},
                 lambda i, n: i["x"] * i["c"][:, None] + torch.cat([-i["x"][..., 3:], i["x"][..., :3]], -1) * i["s"][:, None],
                 exact=False),
    "alibi_slopes": Case(["s: {op: alibi_slopes, heads: d}", "x32: {op: cast, x: x, to: fp32}",
                          "y: {op: mul, a: x32, b: s}"], X, lambda i, n: i["x"] * _bloom_slopes(6)),
}
# Ops the parity tests prove against Transformers: they need the forward context's sequences and cache.
PROVEN_BY_PARITY = {"attention", "positions", "rope_table", "relative_buckets"}


def _bloom_slopes(heads: int) -> torch.Tensor:
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    # alibi [heads, 1, 2] over positions 0 and 1: position 1 is the slope itself
    return bloom.build_alibi_tensor(torch.ones(1, 2), heads, torch.float32)[:, 0, 1]


def spec_text(case: Case) -> str:
    lines = [f"    - {line}" for line in case.lines]
    inputs = ", ".join(f"{name}: {{shape: [{', '.join(shape)}], dtype: {'float' if dtype == 'float' else dtype}}}"
                       for name, (dtype, shape, _) in case.inputs.items())
    params = "".join(f"\n    {name}: {decl}" for name, decl in case.params.items())
    weights = '\n  - {from: "{p}.{t}", to: "{p}.{t}"}' if case.params else " []"
    return f"""spec: 1
name: op_case
config:
  d: {{hf: d, type: int}}
  h: {{hf: h, type: int}}
  k: {{hf: k, type: int}}
blocks: {{}}
model:
  inputs: {{{inputs}}}
  params: {{{params}}}
  graph:
{chr(10).join(lines)}
  outputs: [{', '.join(case.outputs)}]
weights:{weights}
"""


def build(text: str, name: str = "op_case.yaml"):
    ir = run_pipeline(load_spec(name, text), {"fuse": False})
    namespace: dict = {}
    exec(compile(emit_model(ir, name), "model.py", "exec"), namespace)
    return namespace


def make_input(dtype: str, shape: list[str], kind: str, seed: int) -> torch.Tensor:
    dims = [{"B": B, "S": S}.get(d) or CONFIG.get(d) or int(d) for d in shape]
    g = torch.Generator().manual_seed(seed)
    if kind.startswith(("index:", "nonzero:")):
        return torch.randint(int(kind.startswith("nonzero")), int(kind.split(":")[1]), dims, generator=g)
    if kind == "mask":
        return torch.rand(dims, generator=g) > 0.5
    x = torch.randn(dims, generator=g)
    return x.abs() + 0.1 if kind == "positive" else x


@pytest.mark.parametrize("name", list(CASES))
def test_emitted_code_computes_the_torch_expression(name):
    case = CASES[name]
    module = build(spec_text(case))
    torch.manual_seed(0)
    net = module["MODEL"](module["Config"](**CONFIG)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))
    inputs = {n: make_input(*spec, seed=k) for k, (n, spec) in enumerate(case.inputs.items())}
    with torch.no_grad():
        out = net(*inputs.values(), ForwardContext(torch.float32, "cpu"))
        want = case.ref(inputs, net)
    want = want if isinstance(want, tuple) else (want,)
    for o, w in zip(case.outputs, want):
        got = out[o]
        assert got.dtype == w.dtype and got.shape == w.shape, (o, got.dtype, got.shape, w.dtype, w.shape)
        if case.exact:
            assert torch.equal(got, w), (o, (got.float() - w.float()).abs().max())
        else:
            torch.testing.assert_close(got, w, rtol=1e-6, atol=1e-6)


def test_every_op_a_spec_may_write_has_a_case_or_a_parity_test():
    covered = {body["op"] for case in CASES.values() for line in case.lines
               for body in yaml.safe_load(line).values()}
    writable = {name for name, op in OPS.items() if not op.internal}
    assert writable - covered - PROVEN_BY_PARITY == set()


def test_dropout_drops_only_while_training():
    module = build(spec_text(Case(["y: {op: dropout, x: x, p: 0.25}"], X, None)))
    net = module["MODEL"](module["Config"](**CONFIG))
    x = torch.randn(B, S, 6)
    assert net(x, ForwardContext(torch.float32, "cpu"))["y"] is x
    torch.manual_seed(3)
    got = net(x, ForwardContext(torch.float32, "cpu", training=True))["y"]
    torch.manual_seed(3)
    assert torch.equal(got, F.dropout(x, 0.25, training=True)) and not torch.equal(got, x)


def test_a_loaded_model_drops_after_train_and_not_after_eval(tmp_path):
    import runtime
    from compiler.pipeline import compile_spec
    path = tmp_path / "drop.yaml"
    path.write_text(spec_text(Case(["y: {op: dropout, x: x, p: 0.5}"], X, None)))
    model = runtime.init_random(compile_spec(path, tmp_path / "art").directory, {"d": 6, "h": 2, "k": 3})
    x = torch.ones(B, S, 6)
    assert torch.equal(model(x).y, x)
    model.train()
    dropped = model(x).y
    assert set(dropped.unique().tolist()) == {0.0, 2.0}
    model.eval()
    assert torch.equal(model(x).y, x)


@pytest.mark.parametrize("heads", [1, 2, 3, 5, 6, 8, 12, 16, 20, 24, 25, 32, 33, 40, 64, 71, 112])
def test_alibi_slopes_equal_transformers_for_any_head_count(heads):
    from runtime import ops
    got = ops.alibi_slopes(ForwardContext(torch.float32, "cpu"), heads)
    assert got.dtype == torch.float32 and torch.equal(got, _bloom_slopes(heads))


@pytest.mark.parametrize("heads, first, count", [(8, 4, 4), (12, 3, 3), (6, 5, 1), (5, 0, 5)])
def test_alibi_slopes_from_a_first_head_are_those_heads_of_all_of_them(heads, first, count):
    from runtime import ops
    got = ops.alibi_slopes(ForwardContext(torch.float32, "cpu"), heads, first, count)
    assert torch.equal(got, _bloom_slopes(heads)[first:first + count])


def test_alibi_slopes_of_heads_beyond_the_last_are_refused():
    from runtime import ops
    with pytest.raises(ValueError, match="heads 6..8 are not among 8"):
        ops.alibi_slopes(ForwardContext(torch.float32, "cpu"), 8, 6, 3)


F3 = ("float", ["B", "S", "d"], "normal")
# the op line (or lines, the last one wrong), the inputs, what the error says
BAD_LINES = {
    "dtype_clash": ("{op: add, a: x, b: i}", {"x": F3, "i": ("int", ["B", "S", "d"], "")}, "dtype clash"),
    "fp32_with_float": (["s: {op: alibi_slopes, heads: d}", "{op: mul, a: x, b: s}"], {"x": F3},
                        "cast one of them first"),
    "no_broadcast": ("{op: sub, a: x, b: v}", {"x": F3, "v": ("float", ["k"], "")}, "shapes do not broadcast"),
    "int_true_division": ("{op: div, a: i, b: i}", {"i": ("int", ["B"], "")}, "true division needs float operands"),
    "compare_without_other": ("{op: eq, a: x}", {"x": F3}, "give either 'b' (a tensor) or 'value'"),
    "compare_with_both": ("{op: lt, a: x, b: x, value: 1}", {"x": F3}, "give either 'b' (a tensor) or 'value'"),
    "where_float_cond": ("{op: where, cond: x, a: x, value: 0}", {"x": F3}, "'cond' must be a bool tensor"),
    "dim_out_of_range": ("{op: sum, x: x, dim: 3}", {"x": F3}, "'dim' is 3, out of range for a rank-3 tensor"),
    "dim_from_config": ("{op: softmax, x: x, dim: k}", {"x": F3}, "'dim' must be a constant (an integer), got k"),
    "keepdim_not_bool": ("{op: max, x: x, dim: 0, keepdim: 1}", {"x": F3}, "'keepdim' must be true or false"),
    "mean_of_ints": ("{op: mean, x: i, dim: 0}", {"i": ("int", ["B"], "")}, "'x' must be a float or fp32 tensor"),
    "argmax_of_bools": ("{op: argmax, x: m, dim: 1}", {"m": ("bool", ["B", "S"], "")}, "'x' must be a float, fp32 or int"),
    "gather_float_index": ("{op: gather, x: x, index: x, dim: 0}", {"x": F3}, "'index' must be an int tensor"),
    "gather_rank": ("{op: gather, x: x, index: i, dim: 0}", {"x": F3, "i": ("int", ["B"], "")}, "the same rank"),
    "one_hot_of_floats": ("{op: one_hot, x: x, num_classes: 3}", {"x": F3}, "'x' must be an int tensor"),
    "matmul_inner": ("{op: matmul, a: x, b: x}", {"x": F3}, "the last dim of 'a' must equal the second-last of 'b'"),
    "matmul_rank": ("{op: matmul, a: x, b: v}", {"x": F3, "v": ("float", ["d"], "")}, "at least 2 dims"),
    "slice_step": ("{op: slice, x: x, dim: 1, step: 0}", {"x": F3}, "'step' must be at least 1"),
    "squeeze_not_one": ("{op: squeeze, x: x, dim: 1}", {"x": F3}, "dim 1 of 'x' must have size 1"),
    "expand_both": ("{op: expand, x: x, like: x, shape: [1]}", {"x": F3}, "give either 'like'"),
    "expand_stretch": ("{op: expand, x: x, shape: [B2, k, k]}", {"x": F3}, "unknown config name 'B2'"),
    "expand_size": ("{op: expand, x: x, shape: [k, k, k]}", {"x": F3}, "stretches only from 1"),
    "reshape_count": ("{op: reshape, x: x, shape: [0, 0, k]}", {"x": F3}, "the number of elements differs"),
    "reshape_two_inferred": ("{op: reshape, x: x, shape: [-1, -1]}", {"x": F3}, "only one shape entry may be -1"),
    "reshape_keep_past_rank": ("{op: reshape, x: v, shape: [0, 0]}", {"v": ("float", ["d"], "")}, "shape entry 1 is 0"),
    "clamp_no_bound": ("{op: clamp, x: x}", {"x": F3}, "give 'min', 'max' or both"),
    "conv1d_channels": ("{op: conv1d, x: x, w: conv}", {"x": F3}, "channels of 'x' must equal the input channels of 'conv'"),
    "grouped_linear_rows": ("{op: grouped_linear, x: x, index: i, w: experts}", {"x": F3, "i": ("int", ["S", "B", "h"], "")},
                            "x's leading dims must equal index's but its last (the picks)"),
    "grouped_linear_rank": ("{op: grouped_linear, x: x, index: i, w: experts}", {"x": F3, "i": ("int", ["B"], "")},
                            "'x' must be [..., in] (one row per token) or [..., k, in] (one row per pick)"),
    "grouped_linear_float_index": ("{op: grouped_linear, x: x, index: x, w: experts}", {"x": F3}, "'index' must be an int"),
}
PARAMS = {"conv": "{conv1d: [k, d, 3]}", "experts": "{grouped_linear: [k, d, d]}"}


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_a_shape_rule_refusal_is_a_spec_error_at_its_line(name):
    from compiler.errors import SpecError
    lines, inputs, words = BAD_LINES[name]
    *before, line = [lines] if isinstance(lines, str) else lines
    case = Case([*before, f"y: {line}"], inputs, None, params={p: d for p, d in PARAMS.items() if f"w: {p}" in line})
    text = spec_text(case)
    with pytest.raises(SpecError) as info:
        build(text, "bad.yaml")
    at = text[:text.index(f"y: {line}")].count("\n") + 1
    message = str(info.value)
    assert f"bad.yaml:{at}:" in message and f"at model.graph[{len(before)}]" in message, message
    assert words in message, message
