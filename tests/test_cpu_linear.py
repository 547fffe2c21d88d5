"""The CPU routing of `runtime.ops.linear`: same numbers as F.linear, threaded where MKL is not."""
import pytest
import torch
import torch.nn.functional as F

from runtime import measure, native
from runtime.ops import linear_layers as fused
from runtime.ops import native_rows


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("rows", [1, 5, fused.SPLIT_ROWS, fused.SPLIT_ROWS + 1])
@pytest.mark.parametrize("out", [96, 97])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fp32_linear_equals_f_linear_for_any_rows_threads_and_width(threads, n_threads, rows, out, with_bias):
    threads(n_threads)
    g = torch.Generator().manual_seed(rows * 1000 + out)
    x = torch.randn(1, rows, 80, generator=g)
    w = torch.randn(out, 80, generator=g)
    b = torch.randn(out, generator=g) if with_bias else None
    got = fused.linear(x, w, b)
    assert got.shape == (1, rows, out)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=0, atol=1e-5)


def count_bmm(monkeypatch) -> list:
    calls = []
    real = torch.bmm

    def counting(a, b):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return real(a, b)
    monkeypatch.setattr(fused.torch, "bmm", counting)
    return calls


def test_fp32_rows_past_the_c_kernels_reach_on_two_threads_run_one_gemm_entry_per_thread(threads, monkeypatch):
    threads(2)
    calls = count_bmm(monkeypatch)
    rows = native_rows.LINEAR_ROWS[torch.float32] + 1
    fused.linear(torch.randn(1, rows, 64), torch.randn(128, 64), None)
    assert calls == [((2, rows, 64), (2, 64, 64))]


@pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.unavailable_reason()}")
def test_a_single_fp32_row_takes_the_c_product(threads, monkeypatch):
    threads(2)
    calls = count_bmm(monkeypatch)
    x, w = torch.randn(1, 1, 64), torch.randn(128, 64)
    got = fused.linear(x, w, None)
    assert calls == []
    torch.testing.assert_close(got, F.linear(x, w), rtol=0, atol=1e-5)


def test_many_rows_strided_weights_and_one_thread_stay_on_f_linear(threads, monkeypatch):
    calls = count_bmm(monkeypatch)
    threads(2)
    fused.linear(torch.randn(fused.SPLIT_ROWS + 1, 64), torch.randn(128, 64), None)
    fused.linear(torch.randn(1, 64), torch.randn(64, 128).t(), None)
    threads(1)
    fused.linear(torch.randn(1, 64), torch.randn(128, 64), None)
    assert calls == []


def test_fused_linear_parts_are_the_separate_linears(threads):
    threads(2)
    m = fused.FusedLinear(48, {"q": 32, "k": 16, "v": 16}, bias=True)
    x = torch.randn(1, 1, 48)
    q, k, v = m(x)
    w, b = m.weight.split([32, 16, 16]), m.bias.split([32, 16, 16])
    for got, wi, bi in zip((q, k, v), w, b):
        torch.testing.assert_close(got, F.linear(x, wi, bi), rtol=0, atol=1e-5)


def record_gemm_dtypes(monkeypatch) -> list:
    dtypes = []
    real_bmm, real_linear = torch.bmm, F.linear
    monkeypatch.setattr(fused.torch, "bmm", lambda a, b: dtypes.append((a.dtype, b.dtype)) or real_bmm(a, b))
    monkeypatch.setattr(fused.F, "linear", lambda x, w, b=None: dtypes.append((x.dtype, w.dtype)) or real_linear(x, w, b))
    return dtypes


def bf16_operands():
    g = torch.Generator().manual_seed(0)
    # more rows than the C matrix-vector kernel takes (native_rows.LINEAR_ROWS): a GEMM's business
    rows = native_rows.LINEAR_ROWS[torch.bfloat16] + 7
    return torch.randn(rows, 80, generator=g).bfloat16(), torch.randn(96, 80, generator=g).bfloat16()


def test_bf16_rows_are_one_fp32_gemm_rounded_once_where_bf16_measured_slower(threads, monkeypatch):
    threads(2)
    monkeypatch.setattr(fused, "reduced_precision_gemm_is_slow", lambda dtype: True)
    dtypes = record_gemm_dtypes(monkeypatch)
    x, w = bf16_operands()
    got = fused.linear(x, w, None)
    assert dtypes == [(torch.float32, torch.float32)]
    assert got.dtype == torch.bfloat16
    # at most one bf16 rounding step apart (fp32 summation order may differ), never bf16 accumulation error
    torch.testing.assert_close(got, F.linear(x.float(), w.float()).bfloat16(), rtol=2 ** -8, atol=1e-6)


def test_bf16_rows_stay_a_bf16_gemm_where_bf16_measured_faster(threads, monkeypatch):
    threads(2)
    monkeypatch.setattr(fused, "reduced_precision_gemm_is_slow", lambda dtype: False)
    dtypes = record_gemm_dtypes(monkeypatch)
    x, w = bf16_operands()
    assert fused.linear(x, w, None).dtype == torch.bfloat16
    assert dtypes == [(torch.bfloat16, torch.bfloat16)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_reduced_precision_probe_is_measured_once_per_process(dtype, monkeypatch):
    first = measure.reduced_precision_gemm_is_slow(dtype)
    monkeypatch.setattr(measure, "fastest", lambda *a, **k: pytest.fail("measured a second time"))
    assert measure.reduced_precision_gemm_is_slow(dtype) is first
