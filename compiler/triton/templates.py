"""Triton kernel templates: pointwise, row reduction with prologue/epilogue, rotary, flash attention.

Each template turns one fused group into Python source: a `@triton.jit` kernel and its launcher.
Style of the Triton tutorials: arguments grouped (pointers, sizes, strides, scalars, constexpr
meta-parameters), `offs_` / `mask` names, fp32 arithmetic whatever the storage dtype, masked loads so
any row length works. The ops inside a kernel come from each op's `triton` lowering in the registry;
row reductions have their row-level lowering here (`ROW_REDUCTIONS`).
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

from compiler.printer import const_value

RESERVED = {"row", "offs_n", "offs_d", "offs_m", "mask", "n_rows", "n_cols", "tl", "triton", "torch", "pid",
            "BLOCK_N", "BLOCK_M", "BLOCK_D", "acc"}


@dataclass
class KernelSource:
    name: str                  # the launcher's name; the kernel is `<name>_kernel`
    template: str
    source: str                # kernel + launcher source
    launcher_args: list[str]   # in order: what the model.py method passes
    aot: dict                  # pointers / ints / floats / constexprs for ahead-of-time compiles
    dispatch: str = "enabled"
    # What model.py passes the launcher, in order, as data the emitter resolves to its local names:
    # ("value", value id), ("param", param name, tensor), ("attr", node id, attribute), ("ctx",),
    # ("slot", node id), or ("kw", keyword, one of those).
    call: list[tuple] = field(default_factory=list)


# What each template can take, for the fusion pass: `chains` takes pointwise prologues and
# epilogues; `horizontal` batches several independent ops of one kind reading a shared operand.
TRAITS = {"pointwise": {"chains": True}, "row_reduction": {"chains": True}, "rope": {"horizontal": True},
          "flash_attention": {}}


def var(vid: str) -> str:
    name = re.sub(r"\W", "_", vid)
    return name + "_v" if name in RESERVED else name


def _fields(fmt: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(fmt) if f]


def triton_lowering(op, node) -> str | None:
    """The op's Triton lowering for this node's attribute values (None: those values have none)."""
    if callable(op.triton):
        return op.triton({k: const_value(v) for k, v in node.attrs.items()})
    return op.triton


def pointwise_expr(op, node, values: dict[str, str], scalars: dict[str, tuple], dtype: str | None = None) -> str:
    """The op's Triton expression with operands as kernel variables; attributes become scalar args;
    `{dtype}` is the kernel's model dtype (`dtype`, the element type of its float inputs)."""
    fmt = triton_lowering(op, node)
    subs = {}
    for f in _fields(fmt):
        if f in node.inputs:
            subs[f] = values[node.inputs[f]]
        elif f == "dtype":
            subs[f] = dtype
        else:
            arg = var(f"{f}_{node.id}")
            scalars[arg] = ("attr", node.id, f)
            subs[f] = arg
    return fmt.format(**subs)


class _Typed:
    """What the row templates need of their values' dtype classes (compiler/ops/registry.py DTYPES):
    kernels compute in fp32; bool values load as 0 / 1 and store as bool; float values (the model's
    dtype) are allocated like the group's first float input, which also gives `{dtype}`. A group whose
    float outputs have no float input to take the dtype from has no kernel."""

    TORCH = {"fp32": "torch.float32", "bool": "torch.bool"}
    AOT = {"fp32": "fp32", "bool": "i1"}

    def __init__(self, group, inputs: list[str]):
        self.dtypes = {var(k): v for k, v in group.dtypes.items()}
        self.ref = next((v for v in inputs if self.dtypes.get(v, "float") == "float"), None)

    def of(self, v: str) -> str:
        return self.dtypes.get(v, "float")

    def usable(self, values: list[str], uses_dtype: bool) -> bool:
        return knows_dtype(self.ref is not None, uses_dtype, [self.of(v) for v in values])

    @property
    def element(self) -> str | None:
        return f"{self.ref}_ptr.dtype.element_ty" if self.ref else None

    def alloc(self, v: str, like: str) -> str:
        dtype = self.TORCH.get(self.of(v), f"{self.ref}.dtype")
        return f"    {v} = torch.empty({like}.shape, dtype={dtype}, device={like}.device)"

    def other(self, v: str) -> str:
        return "0" if self.of(v) == "bool" else "0.0"

    def stored(self, v: str) -> str:
        return f"{v}.to(tl.int1)" if self.of(v) == "bool" else v

    def aot_types(self, values: list[str]) -> dict:
        return {f"{v}_ptr": self.AOT[self.of(v)] for v in values if self.of(v) in self.AOT}


def _uses_dtype(ops, nodes) -> bool:
    return any("dtype" in _fields(triton_lowering(ops[n.op], n) or "") for n in nodes)


def knows_dtype(float_input: bool, uses_dtype: bool, output_dtypes) -> bool:
    """A chaining kernel computes in fp32 and learns the model's dtype from a float input; without one
    it can neither round to that dtype nor allocate a float output."""
    return float_input or not (uses_dtype or "float" in output_dtypes)


def group_knows_dtype(ops, nodes, input_dtypes, output_dtypes) -> bool:
    """knows_dtype for a group of op nodes, from the dtype classes of what enters and leaves it."""
    return knows_dtype("float" in input_dtypes, _uses_dtype(ops, nodes), output_dtypes)


def _row_kernel_head(name, doc, ptrs, strides, inputs, scalars, flags, offs, typed) -> list[str]:
    """The start both row templates share: the grouped signature (pointers, sizes, row strides,
    scalars, flags, block), this program's row and columns, and the inputs loaded as fp32."""
    return [
        "@triton.jit",
        f"def {name}_kernel(",
        f"    {', '.join(ptrs)},  # pointers",
        "    n_rows, n_cols,  # sizes",
        f"    {', '.join(strides)},  # row strides",
        *([f"    {', '.join(scalars)},  # scalars"] if scalars else []),
        *[f"    {f}: tl.constexpr," for f in flags],
        "    BLOCK_N: tl.constexpr,",
        "):",
        f'    """{doc}"""',
        "    row = tl.program_id(0).to(tl.int64)",
        f"    offs_n = {offs}",
        "    mask = offs_n < n_cols",
        *[f"    {v} = tl.load({v}_ptr + row * stride_{v} + offs_n, mask=mask, other={typed.other(v)}).to(tl.float32)"
          for v in inputs],
    ]


# -- pointwise --------------------------------------------------------------------------------------
def pointwise(name: str, doc: str, block, group, ops) -> KernelSource | None:
    inputs = [var(v) for v in group.inputs]
    outputs = [var(o) for o in group.outputs]
    typed = _Typed(group, inputs)
    if not typed.usable(outputs, _uses_dtype(ops, group.members)):
        return None
    scalars: dict[str, str] = {}
    body, values = [], {v: var(v) for v in group.inputs}
    for node in group.members:
        expr = pointwise_expr(ops[node.op], node, values, scalars, typed.element)
        out = var(node.outputs[0])
        values[node.outputs[0]] = out
        body.append(f"    {out} = {expr}")
    ptrs = [f"{v}_ptr" for v in inputs + outputs]
    strides = [f"stride_{v}" for v in inputs + outputs]
    k = [
        *_row_kernel_head(name, doc, ptrs, strides, inputs, scalars, flags=[],
                          offs="tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)", typed=typed),
        *body,
        *[f"    tl.store({o}_ptr + row * stride_{o} + offs_n, {typed.stored(o)}.to({o}_ptr.dtype.element_ty), mask=mask)"
          for o in outputs],
    ]
    first = inputs[0]
    launcher = [
        f"def {name}({', '.join(inputs + list(scalars))}):",
        f'    """{doc}"""',
        f"    n_cols = {first}.shape[-1]",
        *[f"    {v}_2d = _rows({v}, n_cols)" for v in inputs],
        *[typed.alloc(o, first) for o in outputs],
        f"    n_rows = {first}_2d.shape[0]",
        "    BLOCK_N = min(triton.next_power_of_2(n_cols), 1024)",
        "    grid = (n_rows, triton.cdiv(n_cols, BLOCK_N))",
        f"    {name}_kernel[grid](",
        f"        {', '.join([f'{v}_2d' for v in inputs] + [f'{o}.view(-1, n_cols)' for o in outputs])},",
        "        n_rows, n_cols,",
        f"        {', '.join([f'{v}_2d.stride(0)' for v in inputs] + ['n_cols'] * len(outputs))},",
        *([f"        {', '.join(scalars)},"] if scalars else []),
        "        BLOCK_N=BLOCK_N,",
        "    )",
        f"    return {', '.join(outputs)}",
    ]
    call = [("value", v) for v in group.inputs] + list(scalars.values())
    aot = {"pointers": ptrs, "ints": ["n_rows", "n_cols", *strides], "floats": list(scalars),
           "constexprs": {"BLOCK_N": 1024}, **_typed_pointers(typed, inputs + outputs)}
    return KernelSource(name, "pointwise", "\n".join(k + ["", ""] + launcher), inputs + list(scalars), aot, call=call)


def _typed_pointers(typed: _Typed, values: list[str]) -> dict:
    """The AOT signature's pointers of a fixed element type (fp32, bool) whatever the model's dtype."""
    fixed = typed.aot_types(values)
    return {"typed": fixed} if fixed else {}


# -- row reduction ----------------------------------------------------------------------------------
# Each lowering reads its row `x` as fp32 (lanes past the row are masked: a prologue may have made
# them nonzero, so sums and maxima exclude them) and writes `out` over the same columns.
def _rms_norm_row(x, out, node, args):
    w = args.param("w", "weight")
    eps = args.scalar("eps")
    offset = const_value(node.attrs.get("offset"))
    lines = [f"    ms_{out} = tl.sum(tl.where(mask, {x} * {x}, 0.0), axis=0) / n_cols",
             f"    {out} = {x} * tl.math.rsqrt(ms_{out} + {eps})"]
    wv = f"tl.load({w} + offs_n, mask=mask, other=0.0).to(tl.float32)"
    # Llama's order: round to the storage dtype, then scale by the weight; with an offset (Gemma's
    # 1 + w) the scale is applied in fp32 first. An offset the config decides is decided at launch.
    llama = f"    {out} = {out}.to({args.dtype}).to(tl.float32) * {wv}"
    if offset in (0, None):
        return lines + [llama]
    gemma = f"    {out} = {out} * ({args.scalar('offset')} + {wv})"
    if isinstance(offset, (int, float)):
        return lines + [gemma]
    flag = args.flag(f"HAS_OFFSET_{node.id}", ("attr", node.id, "offset"))
    return lines + [f"    if {flag}:", "    " + gemma, "    else:", "    " + llama]


def _layer_norm_row(x, out, node, args):
    w = args.param("w", "weight")
    b = args.param("w", "bias", optional=True)
    eps = args.scalar("eps")
    return [f"    mean_{out} = tl.sum(tl.where(mask, {x}, 0.0), axis=0) / n_cols",
            f"    diff_{out} = tl.where(mask, {x} - mean_{out}, 0.0)",
            f"    var_{out} = tl.sum(diff_{out} * diff_{out}, axis=0) / n_cols",
            f"    {out} = diff_{out} * tl.math.rsqrt(var_{out} + {eps}) * tl.load({w} + offs_n, mask=mask, other=0.0).to(tl.float32)",
            f"    if HAS_{b.upper()}:",
            f"        {out} += tl.load({b} + offs_n, mask=mask, other=0.0).to(tl.float32)"]


def _softmax_row(x, out, node, args, log: bool = False):
    lines = [f"    max_{out} = tl.max(tl.where(mask, {x}, float('-inf')), axis=0)",
             f"    exp_{out} = tl.where(mask, tl.exp({x} - max_{out}), 0.0)"]
    if log:
        return lines + [f"    {out} = {x} - max_{out} - tl.log(tl.sum(exp_{out}, axis=0))"]
    return lines + [f"    {out} = exp_{out} / tl.sum(exp_{out}, axis=0)"]


def _log_softmax_row(x, out, node, args):
    return _softmax_row(x, out, node, args, log=True)


def _normalize_row(x, out, node, args):
    # F.normalize with p = 2: x / max(||x||, eps)
    eps = args.scalar("eps")
    return [f"    norm_{out} = tl.sqrt_rn(tl.sum(tl.where(mask, {x} * {x}, 0.0), axis=0))",
            f"    {out} = {x} / tl.maximum(norm_{out}, {eps})"]


ROW_REDUCTIONS = {"rms_norm": _rms_norm_row, "layer_norm": _layer_norm_row, "softmax": _softmax_row,
                  "log_softmax": _log_softmax_row, "normalize": _normalize_row}


class _Args:
    """Collects the param pointers and scalars a reduction's row lowering asks for."""

    def __init__(self, node, dtype: str | None):
        self.node, self._dtype = node, dtype
        self.uses_dtype = False
        self.params: list[tuple[str, str, str, bool]] = []   # (kernel ptr name, param, tensor, optional)
        self.scalars: dict[str, tuple] = {}
        self.flags: dict[str, tuple] = {}      # constexpr name -> the attribute whose truth sets it

    @property
    def dtype(self) -> str | None:
        """The model's dtype in the kernel (rms_norm rounds to it)."""
        self.uses_dtype = True
        return self._dtype

    def param(self, field: str, tensor: str, optional: bool = False) -> str:
        pname = self.node.params[field]
        ptr = f"{pname}_{tensor}_ptr"
        self.params.append((ptr, pname, tensor, optional))
        return ptr

    def scalar(self, attr: str) -> str:
        arg = var(f"{attr}_{self.node.id}")
        self.scalars[arg] = ("attr", self.node.id, attr)
        return arg

    def flag(self, name: str, source: tuple) -> str:
        flag = var(name).upper()
        self.flags[flag] = source
        return flag


def row_reduction(name: str, doc: str, block, group, ops) -> KernelSource | None:
    inputs = [var(v) for v in group.inputs]
    outputs = [var(o) for o in group.outputs]
    typed = _Typed(group, inputs)
    scalars: dict[str, str] = {}
    body, values = [], {v: var(v) for v in group.inputs}
    args = None
    first = inputs[0]
    for node in group.members:
        op = ops[node.op]
        out = var(node.outputs[0])
        if op.fusion == "reduction":
            args = _Args(node, typed.element)
            body += ROW_REDUCTIONS[triton_lowering(op, node)](values[node.inputs["x"]], out, node, args)
            scalars.update(args.scalars)
        else:
            body.append(f"    {out} = {pointwise_expr(op, node, values, scalars, typed.element)}")
        values[node.outputs[0]] = out
        if node.outputs[0] in group.outputs:
            body.append(f"    tl.store({out}_ptr + row * stride_{out} + offs_n, "
                        f"{typed.stored(out)}.to({out}_ptr.dtype.element_ty), mask=mask)")
    if not typed.usable(outputs, args.uses_dtype or _uses_dtype(ops, group.members)):
        return None
    param_ptrs = [p for p, _, _, _ in args.params]
    optional = [(p, pname, t) for p, pname, t, opt in args.params if opt]
    ptrs = [f"{v}_ptr" for v in inputs] + param_ptrs + [f"{o}_ptr" for o in outputs]
    flags = [f"HAS_{p.upper()}" for p, _, _ in optional] + list(args.flags)
    value_flags = list(args.flags)   # set from an attribute's value at launch
    strides = [f"stride_{v}" for v in inputs + outputs]
    k = [
        *_row_kernel_head(name, doc, ptrs, strides, inputs, scalars, flags, offs="tl.arange(0, BLOCK_N)", typed=typed),
        *body,
    ]
    param_args = [p[:-4] for p in param_ptrs]       # launcher args: the tensors themselves
    flag_args = [f.lower() for f in value_flags]
    launcher = [
        f"def {name}({', '.join(inputs + param_args + list(scalars) + flag_args)}):",
        f'    """{doc}"""',
        f"    n_cols = {first}.shape[-1]",
        *[f"    {v}_2d = _rows({v}, n_cols)" for v in inputs],
        *[typed.alloc(o, first) for o in outputs],
        f"    n_rows = {first}_2d.shape[0]",
        "    BLOCK_N = triton.next_power_of_2(n_cols)",
        f"    {name}_kernel[(n_rows,)](",
        f"        {', '.join([f'{v}_2d' for v in inputs] + [_maybe(p[:-4], first) for p, _, _, _ in args.params] + [f'{o}.view(-1, n_cols)' for o in outputs])},",
        "        n_rows, n_cols,",
        f"        {', '.join([f'{v}_2d.stride(0)' for v in inputs] + ['n_cols'] * len(outputs))},",
        *([f"        {', '.join(scalars)},"] if scalars else []),
        *[f"        {f}={p[:-4]} is not None," for f, (p, _, _) in zip(flags, optional)],
        *[f"        {f}=bool({f.lower()})," for f in value_flags],
        "        BLOCK_N=BLOCK_N, num_warps=_row_warps(BLOCK_N),",
        "    )",
        f"    return {', '.join(outputs)}",
    ]
    call = ([("value", v) for v in group.inputs] + [("param", pname, t) for _, pname, t, _ in args.params]
            + list(scalars.values()) + list(args.flags.values()))
    aot = {"pointers": ptrs, "ints": ["n_rows", "n_cols", *strides], "floats": list(scalars),
           "constexprs": {"BLOCK_N": 1024, **{f: True for f in flags}}, "num_warps": 4,
           **_typed_pointers(typed, inputs + outputs)}
    return KernelSource(name, "row_reduction", "\n".join(k + ["", ""] + launcher),
                        inputs + param_args + list(scalars) + flag_args, aot, call=call)


def _maybe(arg: str, fallback: str) -> str:
    # An absent optional tensor (a norm without bias) still needs a pointer; its flag keeps it unread.
    return f"{arg} if {arg} is not None else {fallback}_2d"


# -- rotary -----------------------------------------------------------------------------------------
ROPE_HELPER = '''@triton.jit
def _rope_head(x_row, out_row, cos, sin, offs_d, mask, partner, sign, rot):
    """One head vector: x * cos + rotate_half(x) * sin over the first rot_dim dims, x beyond them."""
    x = tl.load(x_row + offs_d, mask=mask, other=0.0).to(tl.float32)
    x_partner = tl.load(x_row + partner, mask=rot, other=0.0).to(tl.float32)
    y = x * cos + sign * x_partner * sin
    tl.store(out_row + offs_d, y.to(out_row.dtype.element_ty), mask=mask)
'''


def rope(name: str, doc: str, block, group, ops) -> KernelSource | None:
    cos_ids = {n.inputs["cos"] for n in group.members}
    sin_ids = {n.inputs["sin"] for n in group.members}
    layouts = {const_value(n.attrs.get("layout")) or "half" for n in group.members}
    if len(cos_ids) != 1 or len(sin_ids) != 1 or len(layouts) != 1:
        return None         # members rotate by different tables or pairings: stays in PyTorch
    # the partner of each dim, the sign of its term, and where its frequency sits in the half-split table
    pairing = {"half": ("tl.where(offs_d < half, offs_d + half, offs_d - half)", "tl.where(offs_d < half, -1.0, 1.0)",
                        "offs_d"),
               "interleaved": ("offs_d ^ 1", "tl.where(offs_d % 2 == 0, -1.0, 1.0)", "offs_d // 2")}[layouts.pop()]
    xs = [var(n.inputs["x"]) for n in group.members]
    outs = [var(n.outputs[0]) for n in group.members]
    cos, sin = var(next(iter(cos_ids))), var(next(iter(sin_ids)))
    n = len(xs)
    heads = [f"n_heads_{x}" for x in xs]
    strides = [f"stride_{x}_{d}" for x in xs for d in "bhs"] + [f"stride_{o}_{d}" for o in outs for d in "bhs"]
    k = [
        "@triton.jit",
        f"def {name}_kernel(",
        f"    {', '.join(f'{x}_ptr' for x in xs)}, {cos}_ptr, {sin}_ptr, {', '.join(f'{o}_ptr' for o in outs)},  # pointers",
        f"    seq_len, head_dim, rot_dim, {', '.join(heads)},  # sizes",
        f"    {', '.join(strides)},  # strides of [B, H, S, D] (last dim contiguous)",
        f"    stride_{cos}_b, stride_{cos}_s, stride_{sin}_b, stride_{sin}_s,",
        "    BLOCK_D: tl.constexpr,",
        "):",
        f'    """{doc}"""',
        "    pid = tl.program_id(0)",
        "    head = tl.program_id(1)",
        "    b = (pid // seq_len).to(tl.int64)",
        "    s = (pid % seq_len).to(tl.int64)",
        "    offs_d = tl.arange(0, BLOCK_D)",
        "    mask = offs_d < head_dim",
        "    half = rot_dim // 2",
        "    rot = offs_d < rot_dim",
        f"    partner = {pairing[0]}",
        f"    sign = {pairing[1]}",
        f"    cos = tl.load({cos}_ptr + b * stride_{cos}_b + s * stride_{cos}_s + {pairing[2]}, mask=rot, other=1.0).to(tl.float32)",
        f"    sin = tl.load({sin}_ptr + b * stride_{sin}_b + s * stride_{sin}_s + {pairing[2]}, mask=rot, other=0.0).to(tl.float32)",
    ]
    # Heads of all members form one grid axis: member i owns heads [start_i, start_i + n_heads_i).
    start = "0"
    for i, (x, o, h) in enumerate(zip(xs, outs, heads)):
        indent = "    " * (i + 1)
        local = f"head - {start}" if start != "0" else "head"
        if i < n - 1:
            k.append(f"{indent}if head < {start if start != '0' else ''}{' + ' if start != '0' else ''}{h}:")
            inner = indent + "    "
        else:
            inner = indent
        k += [f"{inner}h = ({local}).to(tl.int64)",
              f"{inner}_rope_head({x}_ptr + b * stride_{x}_b + h * stride_{x}_h + s * stride_{x}_s,",
              f"{inner}           {o}_ptr + b * stride_{o}_b + h * stride_{o}_h + s * stride_{o}_s,",
              f"{inner}           cos, sin, offs_d, mask, partner, sign, rot)"]
        if i < n - 1:
            k.append(f"{indent}else:")
        start = h if start == "0" else f"{start} + {h}"
    launcher = [
        f"def {name}({', '.join(xs)}, {cos}, {sin}):",
        f'    """{doc}"""',
        f"    batch, _, seq_len, head_dim = {xs[0]}.shape",
        *[f"    {x} = {x} if {x}.stride(-1) == 1 else {x}.contiguous()" for x in xs],
        *[f"    {o} = torch.empty({x}.shape, dtype={x}.dtype, device={x}.device)" for x, o in zip(xs, outs)],
        f"    grid = (batch * seq_len, {' + '.join(f'{x}.shape[1]' for x in xs)})",
        f"    {name}_kernel[grid](",
        f"        {', '.join(xs)}, {cos}, {sin}, {', '.join(outs)},",
        f"        seq_len, head_dim, {cos}.shape[-1], {', '.join(f'{x}.shape[1]' for x in xs)},",
        f"        {', '.join(f'{t}.stride(0), {t}.stride(1), {t}.stride(2)' for t in xs + outs)},",
        f"        {cos}.stride(0), {cos}.stride(1), {sin}.stride(0), {sin}.stride(1),",
        "        BLOCK_D=triton.next_power_of_2(head_dim),",
        "    )",
        f"    return {', '.join(outs)}",
    ]
    order = [n.inputs["x"] for n in group.members] + [next(iter(cos_ids)), next(iter(sin_ids))]
    call = [("value", v) for v in order]
    ptrs = [f"{x}_ptr" for x in xs] + [f"{cos}_ptr", f"{sin}_ptr"] + [f"{o}_ptr" for o in outs]
    ints = ["seq_len", "head_dim", "rot_dim", *heads, *strides,
            f"stride_{cos}_b", f"stride_{cos}_s", f"stride_{sin}_b", f"stride_{sin}_s"]
    aot = {"pointers": ptrs, "ints": ints, "floats": [], "constexprs": {"BLOCK_D": 128}}
    return KernelSource(name, "rope", "\n".join(k + ["", ""] + launcher), xs + [cos, sin], aot, call=call)


# -- flash attention --------------------------------------------------------------------------------
ATTENTION_KERNEL = '''@triton.jit
def {name}_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, pad_ptr,  # pointers
    n_heads, kv_group, q_len, kv_len, head_dim,  # sizes
    stride_qb, stride_qh, stride_qm,  # strides (last dim contiguous)
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_pb,
    scale, window, softcap,  # scalars
    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PAD: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """{doc}

    Online softmax over key blocks; query i sits at key position kv_len - q_len + i (the KV cache
    holds the past); grouped-query heads read their shared k/v head in place.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    kv_h = h // kv_group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < q_len
    mask_d = offs_d < head_dim
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    q_pos = offs_m + (kv_len - q_len)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    k_base = k_ptr + b * stride_kb + kv_h * stride_kh
    v_base = v_ptr + b * stride_vb + kv_h * stride_vh
    end = kv_len
    if IS_CAUSAL:
        end = tl.minimum(kv_len, (pid_m + 1) * BLOCK_M + kv_len - q_len)
    for start_n in range(0, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < kv_len
        k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None],
                    mask=mask_n[None, :] & mask_d[:, None], other=0.0)
        if DOT_F32:
            scores = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="ieee") * scale
        else:
            scores = tl.dot(q, k) * scale
        if HAS_SOFTCAP:
            scores = (2.0 * tl.sigmoid(2.0 * scores / softcap) - 1.0) * softcap
        valid = mask_n[None, :] & mask_m[:, None]
        if IS_CAUSAL:
            valid = valid & (offs_n[None, :] <= q_pos[:, None])
        if HAS_WINDOW:
            valid = valid & (offs_n[None, :] > q_pos[:, None] - window)
        if HAS_PAD:
            real = tl.load(pad_ptr + b * stride_pb + offs_n, mask=mask_n, other=0)
            valid = valid & (real[None, :] != 0)
        scores = tl.where(valid, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        # A row with no visible key yet keeps m = -inf; shift by 0 there so exp() gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(scores - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        if DOT_F32:
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def {name}(q, k, v, ctx, slot, seq=None, causal=True, scale=None, window=None, softcap=None):
    """{doc}"""
    state = ctx.seq(seq)
    if state.cache is not None:
        k, v = state.cache.update(slot, k, v, state.past)
    batch, n_heads, q_len, head_dim = q.shape
    kv_len = k.shape[2]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    pad = state.padding
    pad = pad[:, :kv_len].to(torch.uint8) if pad is not None else out
    BLOCK_M = 64 if q.is_cuda else max(16, min(64, triton.next_power_of_2(q_len)))
    BLOCK_N = 64 if q.is_cuda else max(16, min(64, triton.next_power_of_2(kv_len)))
    grid = (triton.cdiv(q_len, BLOCK_M), batch * n_heads)
    {name}_kernel[grid](
        q, k, v, out, pad,
        n_heads, n_heads // k.shape[1], q_len, kv_len, head_dim,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        pad.stride(0),
        head_dim ** -0.5 if scale is None else scale, window or 0, softcap or 1.0,
        IS_CAUSAL=bool(causal), HAS_WINDOW=window is not None and kv_len > window,
        HAS_PAD=state.padding is not None, HAS_SOFTCAP=softcap is not None,
        # fp32 storage: exact fp32 dots (no TF32). The interpreter's bf16 dot is wrong, so it gets fp32 too.
        DOT_F32=q.dtype == torch.float32 or not q.is_cuda,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
    )
    return out'''


def flash_attention(name: str, doc: str, block, group, ops) -> KernelSource:
    node = group.members[0]
    call = [("value", node.inputs[f]) for f in ("q", "k", "v")] + [("ctx",), ("slot", node.id)]
    if node.seq is not None:
        call.append(("kw", "seq", ("seq", node.id)))
    for attr in ("causal", "scale", "window", "softcap"):
        if const_value(node.attrs.get(attr)) is not None:
            call.append(("kw", attr, ("attr", node.id, attr)))
    ptrs = ["q_ptr", "k_ptr", "v_ptr", "out_ptr", "pad_ptr"]
    ints = ["n_heads", "kv_group", "q_len", "kv_len", "head_dim",
            *[f"stride_{t}{d}" for t in "qkvo" for d in ("b", "h", "m" if t in "qo" else "n")], "stride_pb", "window"]
    aot = {"pointers": ptrs, "ints": ints, "floats": ["scale", "softcap"], "u8": ["pad_ptr"],
           "constexprs": {"IS_CAUSAL": True, "HAS_WINDOW": node.attrs.get("window") is not None, "HAS_PAD": True,
                          "HAS_SOFTCAP": node.attrs.get("softcap") is not None,
                          "DOT_F32": {"fp32": True, "bf16": False, "fp16": False},
                          "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 64}, "num_warps": 4}
    source = ATTENTION_KERNEL.replace("{name}", name).replace("{doc}", doc)
    return KernelSource(name, "flash_attention", source, ["q", "k", "v", "ctx", "slot"], aot, call=call)


TEMPLATES = {"pointwise": pointwise, "row_reduction": row_reduction, "rope": rope,
             "flash_attention": flash_attention}
assert TEMPLATES.keys() == TRAITS.keys()


def _flash_supports(node) -> bool:
    """The flash kernel implements causal, window, softcap and key padding; an additive score bias
    (T5's relative positions) or keys from an encoder's sequence stay on the PyTorch path."""
    from_encoder = const_value(node.attrs.get("encoder_keys")) not in (None, False)
    return "bias" not in node.inputs and not from_encoder


# Templates that cover only part of their op's attribute space say which nodes they can take.
SUPPORTS = {"flash_attention": _flash_supports}
