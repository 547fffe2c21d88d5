"""Every CPU path of a quantized linear computes x @ dequantize(w).T (+ bias), on irregular shapes,
any number of rows and threads; the path kept for a shape is one that was measured."""
import pytest
import torch
import torch.nn.functional as F

from runtime.ops import FusedLinear, Linear
from runtime.quant import QuantEmbedding, QuantLinear, Scheme, dequantize, quantize, quantize_activations
from runtime import native
from runtime.quant import cpu

SCHEMES = [Scheme("int8"), Scheme("int4", 32, True), Scheme("int4", 64, False), Scheme("int4", 128, True)]
# int8 activations: integer kernels, whose result is x' @ w'.T with x' = quantize_activations(x)
A8_SCHEMES = [Scheme("int8", act_bits=8), Scheme("int4", 32, True, 8), Scheme("int4", 64, False, 8),
              Scheme("int4", 128, True, 8)]
needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.unavailable_reason()}")


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def path():
    yield cpu.force
    cpu.force(None)


def layer(scheme, n=37, k=256, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        if bias:
            dense.bias.copy_(torch.randn(n, generator=g))
    return QuantLinear.from_float(dense, scheme)


def reference(x, q: QuantLinear):
    w = dequantize(q.stored(), q.scheme).double()
    x = (quantize_activations(x) if q.scheme.act_bits else x).double()
    return F.linear(x, w, None if q.bias is None else q.bias.double()).float()


@needs_native
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9, 64])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_native_kernel_equals_the_dequantized_reference(scheme, rows, n_threads, threads, path):
    threads(n_threads)
    path("native")
    q = layer(scheme, n=37 + rows % 3)
    x = torch.randn(1, rows, 256)
    torch.testing.assert_close(q(x), reference(x, q), rtol=0, atol=2e-5)


@needs_native
@pytest.mark.parametrize("k", [100, 96])
@pytest.mark.parametrize("rows", [1, 5])
def test_int8_weights_of_any_width_take_a_kernel_that_equals_the_reference(k, rows, path):
    # widths a multiple of 32 take the interleaved layout where the build has it, others the row kernel
    path("native")
    q = layer(Scheme("int8"), n=40, k=k)
    x = torch.randn(rows, k)
    torch.testing.assert_close(q(x), reference(x, q), rtol=0, atol=2e-5)


# (scheme, width): an odd and an even number of 32-column blocks where the group allows
A8_WIDTHS = [(s, k) for s in A8_SCHEMES for k in (96, 256) if k % (s.group or 32) == 0]


@needs_native
@pytest.mark.parametrize("scheme, k", A8_WIDTHS, ids=lambda v: v.name if isinstance(v, Scheme) else str(v))
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9, 64])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_int8_activation_kernels_equal_the_reference_on_quantized_activations(scheme, k, rows, n_threads, threads,
                                                                              path):
    threads(n_threads)
    q = layer(scheme, n=37 + rows % 3, k=k)
    x = torch.randn(1, rows, k) * 3
    for name in ("native", "dequant"):
        path(name)
        torch.testing.assert_close(q(x), reference(x, q), rtol=0, atol=3e-5, msg=name)


# AVX-512 without VNNI (no interleaved layouts: the table-driven int4 kernels); AVX2; no vector extensions
@pytest.mark.parametrize("march", ["skylake-avx512", "x86-64-v3", "x86-64"])
def test_the_kernels_other_code_paths_equal_the_reference(march, monkeypatch, no_native_cache, path):
    monkeypatch.setenv(native.MARCH_VARIABLE, march)
    if not native.available():
        pytest.skip(native.unavailable_reason())
    path("native")
    for scheme in SCHEMES + A8_SCHEMES:
        for rows in (1, 4, 5):
            q = layer(scheme, n=11, k=128)
            x = torch.randn(rows, 128)
            torch.testing.assert_close(q(x), reference(x, q), rtol=0, atol=3e-5, msg=f"{march} {scheme.name}")


def test_a_bad_native_march_value_is_refused_without_running_the_compiler(monkeypatch, no_native_cache):
    monkeypatch.setenv(native.MARCH_VARIABLE, "native -o /tmp/x")
    assert "is not a -march value" in native.unavailable_reason()


@pytest.mark.parametrize("scheme", A8_SCHEMES, ids=lambda s: s.name)
def test_with_int8_activations_bf16_inputs_take_only_the_integer_or_float_paths(scheme, path):
    q = layer(scheme, n=48)
    q.bias = torch.nn.Parameter(q.bias.bfloat16(), requires_grad=False)
    assert not {"torch_int8", "torch_int4"} & set(cpu.candidates(q, torch.bfloat16, 3))
    x = torch.randn(3, 256).bfloat16()
    for name in cpu.candidates(q, torch.bfloat16, 3):
        path(name)
        got = q(x)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), reference(x, q), rtol=1e-2, atol=1e-2, msg=name)


@needs_native
def test_native_int8_kernel_handles_a_width_that_is_no_multiple_of_its_vector(path):
    path("native")
    q = layer(Scheme("int8"), n=5, k=83)
    x = torch.randn(3, 83)
    torch.testing.assert_close(q(x), reference(x, q), rtol=0, atol=2e-5)


@needs_native
def test_native_kernel_reads_strided_activation_rows(path):
    path("native")
    q = layer(Scheme("int4", 32, False), n=16, k=64)
    wide = torch.randn(6, 100)
    x = wide[:, 10:74]                      # rows 100 apart, last dim contiguous
    torch.testing.assert_close(q(x), reference(x.contiguous(), q), rtol=0, atol=2e-5)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("rows", [1, 70])
def test_dequantize_then_dense_path_equals_the_reference(scheme, rows, path):
    path("dequant")
    q = layer(scheme)
    x = torch.randn(rows, 256)
    torch.testing.assert_close(q(x), reference(x, q), rtol=0, atol=2e-5)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("rows", [1, 5, 33])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torch_weight_only_kernels_equal_the_reference_in_bf16_and_fp16(scheme, rows, dtype, path):
    path("torch_int8" if scheme.kind == "int8" else "torch_int4")
    q = layer(scheme, n=48)
    q.bias = torch.nn.Parameter(q.bias.to(dtype), requires_grad=False)
    x = torch.randn(rows, 256).to(dtype)
    got = q(x)
    assert got.dtype == dtype
    # one rounding of each output to 16 bits, plus torch's own rounding of the scales to `dtype`
    torch.testing.assert_close(got.float(), reference(x, q), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_every_path_gives_the_same_result_in_bf16(scheme, path):
    q = layer(scheme, n=48)
    q.bias = torch.nn.Parameter(q.bias.bfloat16(), requires_grad=False)
    x = torch.randn(3, 256).bfloat16()
    names = cpu.candidates(q, torch.bfloat16, 3)
    results = {}
    for name in names:
        path(name)
        results[name] = q(x).float()
    for name, got in results.items():
        torch.testing.assert_close(got, reference(x, q), rtol=2e-2, atol=2e-2, msg=name)


def test_the_path_kept_for_a_shape_is_measured_among_the_candidates(monkeypatch):
    cpu.force(None)
    measured = []
    real = cpu.fastest

    def spy(candidates, **kwargs):
        measured.append(sorted(candidates))
        return real(candidates, **kwargs)
    monkeypatch.setattr(cpu, "fastest", spy)
    q = layer(Scheme("int4", 32, True), n=64, k=128)
    x = torch.randn(2, 128)
    first = q(x)
    torch.testing.assert_close(q(x), first, rtol=0, atol=0)     # the second call reuses the choice
    want = sorted(cpu.candidates(q, torch.float32, 2))
    if len(want) > 1:
        assert measured == [want]
    key = ("int4-g32-sym", 64, 128, 2, "torch.float32")
    assert cpu.choices()[key] in want


def test_quantized_fused_linear_returns_each_part_like_the_separate_linears(path):
    path("dequant")
    fused = FusedLinear(64, {"q": 32, "k": 16, "v": 16}, bias=True)
    q = QuantLinear.from_float(fused, Scheme("int8"))
    x = torch.randn(2, 3, 64)
    parts = q(x)
    w = dequantize(q.stored(), q.scheme)
    for got, wi, bi in zip(parts, w.split([32, 16, 16]), fused.bias.split([32, 16, 16])):
        torch.testing.assert_close(got, F.linear(x, wi, bi), rtol=0, atol=2e-5)


def test_quantized_linear_from_ops_linear_keeps_shapes_and_bias():
    dense = Linear(64, 24, bias=True)
    q = QuantLinear.from_float(dense, Scheme("int4", 64, False))
    assert (q.in_features, q.out_features) == (64, 24)
    assert torch.equal(q.bias, dense.bias.detach())
    assert q(torch.randn(5, 64)).shape == (5, 24)


def test_an_unknown_forced_path_is_refused():
    with pytest.raises(ValueError, match="unknown CPU path 'fast'"):
        cpu.force("fast")


@pytest.fixture
def no_native_cache():
    native.library.cache_clear()
    native.unavailable_reason.cache_clear()
    cpu.force(None)
    yield
    native.library.cache_clear()
    native.unavailable_reason.cache_clear()
    cpu.force(None)


@pytest.mark.parametrize("cc, reason", [("/nonexistent/cc", "no C compiler"), ("false", "-march=native failed")])
def test_without_a_working_c_compiler_the_native_path_is_left_out_and_results_stay_right(monkeypatch, no_native_cache,
                                                                                         cc, reason):
    monkeypatch.setenv("CC", cc)
    assert reason in native.unavailable_reason()
    q = layer(Scheme("int4", 32, False), n=16, k=64)
    assert "native" not in cpu.candidates(q, torch.float32, 1)
    x = torch.randn(2, 64)
    torch.testing.assert_close(q(x), reference(x, q), rtol=0, atol=2e-5)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("kernel", ["native", "dequant"])
def test_a_quantized_linear_cast_to_bf16_casts_its_bias_and_keeps_its_stored_format(scheme, kernel, path):
    """Module.to(dtype) casts float buffers; the stored scales' dtype is the format (fp16 scales
    reinterpreted as bf16 by a cast would be other numbers, and the kernels read them as fp16)."""
    path(kernel)
    q = layer(scheme)
    before = {name: t.clone() for name, t in q.stored().items()}
    x = torch.randn(3, 256).bfloat16()
    want = reference(x.float(), q)
    q.to(torch.bfloat16)
    assert q.bias.dtype == torch.bfloat16
    assert all(t.dtype == before[name].dtype and torch.equal(t, before[name]) for name, t in q.stored().items())
    got = q(x)
    assert got.dtype == torch.bfloat16
    # the bias and the output each rounded to bf16 once
    torch.testing.assert_close(got.float(), want, rtol=2 ** -7, atol=2 ** -7)


def test_a_quantized_embedding_cast_to_bf16_hands_out_bf16_rows_of_the_same_table():
    table = torch.nn.Embedding(50, 64)
    q = QuantEmbedding.from_float(table, Scheme("int4", 32, True))
    ids = torch.tensor([[3, 49, 0]])
    want = q(ids)
    q.to(torch.bfloat16)
    assert q.scales.dtype == torch.float16
    torch.testing.assert_close(q(ids), want.bfloat16(), rtol=0, atol=0)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("width", [128, 512])
def test_rows_of_another_width_are_refused_before_any_kernel_reads_the_weight(scheme, width):
    q = layer(scheme)                 # 256 input features
    with pytest.raises(ValueError, match=rf"expected 256 input features, got x of shape \[2, {width}\]"):
        q(torch.randn(2, width))


@pytest.mark.parametrize("scheme", SCHEMES + A8_SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("kernel", ["native", "dequant"])
@pytest.mark.parametrize("rows", [1, 3, 70])
def test_the_input_gradient_goes_through_the_dequantized_weight_on_every_path(scheme, kernel, rows, path):
    """The kernels record no autograd graph; the gradient of x is grad_y @ w' (int8 activations pass
    it straight through their rounding), so what comes before a quantized linear still trains."""
    path(kernel)
    q = layer(scheme)
    x = torch.randn(rows, 256, requires_grad=True)
    weights = torch.randn(rows, q.out_features)
    (q(x) * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights @ dequantize(q.stored(), q.scheme), rtol=1e-5, atol=1e-5)
