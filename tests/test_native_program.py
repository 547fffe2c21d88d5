"""A replayed decode step runs its kernel calls as one program (runtime/csrc/program.c): each kernel
run there from the argument words of a call computes what the direct call computed, bit for bit
(each kernel's argument list, floats and all, unpacked in its order)."""
import ctypes
import struct

import pytest
import torch

from runtime import native
from runtime.ops import GroupedLinear, native_rows
from runtime.quant.config import Scheme
from runtime.quant.linear import QuantGroupedLinear
from runtime.quant.native import Weights, matmul
from runtime.quant.schemes import quantize

pytestmark = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.unavailable_reason()}")


class Calls:
    """A recorder (runtime.native.set_recorder) keeping each kernel call's arguments."""

    def __init__(self):
        self.calls = []

    def native(self, kernel, args):
        self.calls.append((kernel, args))


def recorded(fn):
    calls = Calls()
    native.set_recorder(calls)
    try:
        out = fn()
    finally:
        native.set_recorder(None)
    return calls.calls, out


def words_of(calls, moving=()):
    """program.c's words for these calls; `moving`: (call, argument) pairs advanced by delta."""
    lib = native.library()
    words = []
    for c, (kernel, args) in enumerate(calls):
        types = native.SIGNATURES[kernel.__name__][0]
        index = lib.gs_program_kernel(kernel.__name__.encode(), len(args))
        assert index >= 0, kernel.__name__
        words += [index, len(args), sum(1 << i for cc, i in moving if cc == c)]
        for value, kind in zip(args, types):
            if isinstance(value, torch.Tensor):
                words.append(value.data_ptr())
            elif value is None:
                words.append(0)
            elif kind is ctypes.c_float:
                words.append(struct.unpack("<i", struct.pack("<f", value))[0])
            else:
                words.append(int(value))
    return words


def run(words, calls: int, delta: int = 0):
    program = (ctypes.c_int64 * len(words))(*words)
    status = ctypes.c_int64(0)
    failed = native.library().gs_program_run(ctypes.addressof(program), calls, delta, ctypes.addressof(status))
    return failed, status.value


def quantized(kind, n=40, k=64, symmetric=True):
    scheme = Scheme(kind, 32, symmetric) if kind == "int4" else Scheme(kind)
    g = torch.Generator().manual_seed(n * k)
    return scheme, quantize(torch.randn(n, k, generator=g), scheme)


def raw_product(name, kind, symmetric=True):
    """A product by one of the row-tiled kernels (the paths without the interleaved layouts)."""
    scheme, stored = quantized(kind, symmetric=symmetric)
    x, (n, k) = torch.randn(3, 64), (40, 64)
    y = torch.empty(3, n)
    kernel = getattr(native.library(), name)
    if kind == "int8":
        weight = (stored["qweight"], stored["scales"])
    else:
        weight = (stored["qweight"], stored["scales"], stored.get("zeros"), scheme.group)
    return lambda: (native.call(kernel, x, 3, k, k, *weight, n, y, n, 2), y)[1]


def interleaved_product(kind, int8_activations, rows=3):
    scheme, stored = quantized(kind)
    weights = Weights(stored, scheme, 40, int8_activations=int8_activations)
    x = torch.randn(rows, 64)
    return lambda: matmul(x, weights)


def attention(dtype, window=None, softcap=None, biased=False):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, h, 1, 16, generator=g).to(dtype) for h in (4, 2, 2))
    cache = (torch.randn(2, 2, 9, 16, generator=g).to(dtype), torch.randn(2, 2, 9, 16, generator=g).to(dtype))
    mask = torch.tensor([[True] * 6, [False, True, True, False, True, True]])[:, None, None]
    bias = torch.randn(1, 9, 4, generator=g).to(dtype).permute(2, 0, 1) if biased else None
    return lambda: native_rows.attention_step(q, k, v, cache, 5, mask, 0.37, window, softcap, bias)


def gather(dtype):
    table, ids = torch.randn(30, 20).to(dtype), torch.tensor([[4, 29, 0]])
    out = torch.empty(1, 3, 20, dtype=dtype)
    kernel = native.library().gs_gather_rows
    return lambda: (native.call(kernel, table, 30, 20 * table.element_size(), ids, 3, out), out)[1]


def broadcast_product(dtype):
    a, b, out = torch.randn(1, 3, 1).to(dtype), torch.randn(5).to(dtype), torch.empty(1, 3, 5, dtype=dtype)
    kernel = getattr(native.library(), f"gs_binary_broadcast_{'f32' if dtype == torch.float32 else 'bf16'}")
    return lambda: (native.call(kernel, a, b, out, 2, 1, 1, 3, 5, 0, 0, 1, 0, 0, 0, 0, 1), out)[1]


def concatenation():
    a, b, out = torch.randn(2, 3), torch.randn(2, 4), torch.empty(2, 7)
    return lambda: (native.call(native.library().gs_concat2, a, 12, b, 16, 2, out), out)[1]


def positions_as_floats():
    ids, out = torch.tensor([[0, 7, 2 ** 24 + 1]]), torch.empty(1, 3)
    return lambda: (native.call(native.library().gs_i64_to_f32, ids, out, 3), out)[1]


def row_ops(dtype):
    x, w = torch.randn(3, 48).to(dtype), torch.randn(48).to(dtype)
    heads = torch.randn(2, 3, 4, 16).to(dtype).transpose(1, 2)          # strided along heads
    angles = torch.rand(2, 3, 6) * 5                                     # partial rotary: 12 of 16 dims
    cos, sin = torch.cat((angles, angles), -1).cos().to(dtype), torch.cat((angles, angles), -1).sin().to(dtype)
    a, b = torch.randn(5, 33).to(dtype), torch.randn(5, 33).to(dtype)
    kernel = getattr(native.library(), f"gs_binary_{'f32' if dtype == torch.float32 else 'bf16'}")

    def binary(op):
        out = torch.empty_like(a)
        return lambda: (native.call(kernel, a, b, out, a.numel(), op), out)[1]
    return {"rms_norm": lambda: native_rows.rms_norm(x, w, 1e-5), "rope": lambda: native_rows.rope(heads, cos, sin),
            "embedding rows": gather(dtype),
            "silu": lambda: native_rows.silu(x * 4), "add": binary(0), "sub": binary(1), "mul": binary(2),
            "attention": attention(dtype), "attention windowed, capped": attention(dtype, window=3, softcap=0.8),
            "attention biased": attention(dtype, biased=True)}


def grouped_products(scheme, dtype=torch.float32):
    """A mixture of experts' picks by one gs_grouped call (runtime/ops/grouped.py NativePicks)."""
    torch.manual_seed(5)
    layer = GroupedLinear(4, 64, 32, bias=False).requires_grad_(False).to(dtype)
    if scheme is not None:
        layer = QuantGroupedLinear.from_float(layer, scheme)
    x, index = torch.randn(3, 64).to(dtype), torch.tensor([[2, 0], [3, 2], [1, 3]])
    return lambda: layer(x, index)


CASES = {
    **{f"grouped {name}": grouped_products(scheme) for name, scheme in
       [("f32", None), ("int8", Scheme("int8")), ("int4", Scheme("int4", 32, True)), ("int4 a8", Scheme("int4", 32, True, 8))]},
    "grouped bf16": grouped_products(None, torch.bfloat16),
    **{f"{name} {kind}{'' if sym else ' zeros'}": raw_product(name, kind, sym)
       for name, kind, sym in [("gs_q8_mm", "int8", True), ("gs_q8a8_mm", "int8", True), ("gs_q4_mm", "int4", True),
                               ("gs_q4_mm", "int4", False), ("gs_q4a8_mm", "int4", True)]},
    **{f"interleaved {kind}{' a8' if a8 else ''}": interleaved_product(kind, a8)
       for kind in ("int8", "int4") for a8 in (False, True)},
    "f32 linear": lambda: native_rows.linear(torch.randn(3, 64), torch.randn(24, 64), None),
    "router softmax": lambda: native_rows.softmax(torch.randn(2, 1, 8), -1),
    "router top-k": lambda: native_rows.topk(torch.randn(2, 8), 2, -1, True, True)[0],
    "router sum": lambda: native_rows.reduce_sum(torch.randn(2, 3, 5), 1, False),
    "positions as floats": positions_as_floats(),
    "concatenation": concatenation(),
    "broadcast product f32": broadcast_product(torch.float32),
    "broadcast product bf16": broadcast_product(torch.bfloat16),
    "bf16 linear": lambda: native_rows.linear(torch.randn(3, 64).bfloat16(), torch.randn(24, 64).bfloat16(),
                                              torch.randn(24).bfloat16()),
    **{f"{name} f32": fn for name, fn in row_ops(torch.float32).items()},
    **{f"{name} bf16": fn for name, fn in row_ops(torch.bfloat16).items()},
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_step_kernel_computes_through_a_program_what_its_direct_call_computes(case):
    calls, out = recorded(CASES[case])
    assert calls and out is not None
    assert not case.startswith("grouped") or [kernel.__name__ for kernel, _ in calls] == ["gs_grouped"]
    want = out.clone()
    out.fill_(float("nan"))         # the output buffer, scribbled on: the program must write it again
    assert run(words_of(calls), len(calls)) == (-1, 0)
    assert torch.equal(out, want), case


def test_a_position_argument_moves_by_the_runs_delta():
    # the attention step at past 5, replayed with delta 2: the call at past 7 (the cache written there)
    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    cache = (torch.zeros(1, 2, 12, 8), torch.zeros(1, 2, 12, 8))
    calls, _ = recorded(lambda: native_rows.attention_step(q, k, v, cache, 5, None, 0.5))
    (kernel, args), = calls
    position = next(i for i, a in enumerate(args) if isinstance(a, native.Position))
    later = (cache[0].clone(), cache[1].clone())
    want = native_rows.attention_step(q, k, v, later, 7, None, 0.5).clone()
    out = args[-3]                 # (..., out, scores, threads)
    out.fill_(float("nan"))
    assert run(words_of(calls, moving=[(0, position)]), 1, delta=2) == (-1, 0)
    assert torch.equal(cache[0][:, :, 7], k[:, :, 0]) and torch.equal(cache[1][:, :, 7], v[:, :, 0])
    assert torch.equal(out.transpose(1, 2), want)


def test_a_kernel_the_program_does_not_know_or_a_wrong_arity_is_refused():
    lib = native.library()
    assert lib.gs_program_kernel(b"gs_q4_dequant", 8) == -1          # not a decode step's kernel
    assert lib.gs_program_kernel(b"gs_silu_f32", 4) == -1            # gs_silu_f32 takes 3
    words = [lib.gs_program_kernel(b"gs_silu_f32", 3), 4, 0, 0, 0, 0, 0]
    assert run(words, 1) == (-2, 0)                                  # malformed at call 0, nothing run


def test_the_grouped_kernel_calls_only_matrix_products_and_refuses_an_expert_outside_the_table():
    lib = native.library()
    x, y, index = torch.randn(2, 8), torch.empty(2, 4), torch.tensor([0, 1])
    silu = [lib.gs_program_kernel(b"gs_silu_f32", 3), 3, 0, 1, 2, 32, 16, 0, 0, 8]
    status = native.call(lib.gs_grouped, x, y, index, 2, 1, 1, 2, torch.tensor(silu), torch.zeros(3, dtype=torch.int64),
                         None)
    assert status == -2                                              # not a product: nothing called
    layer = GroupedLinear(3, 64, 16, bias=False)
    with pytest.raises(IndexError, match=r"expert index out of range \[0, 3\)"):
        layer(torch.randn(1, 64), torch.tensor([[1, 3]]))
    assert not layer.expert_rows                                     # checked before any expert ran
