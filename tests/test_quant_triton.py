"""The Triton dequant-matmul kernels (runtime/quant/triton_kernels.py): under the interpreter on
small irregular shapes against schemes.dequantize + torch, and compiled ahead of time for sm_80 and
sm_90 with fp32 and bf16 activations."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from compiler.triton.aot import compile_in_child
from runtime.quant import Scheme, dequantize, quantize
from runtime.quant import triton_kernels
from tests.aot_checks import assert_compiled

SCHEMES = [Scheme("int8"), Scheme("int4", 32, True), Scheme("int4", 64, False), Scheme("int4", 128, False)]
TARGETS = ["sm_80", "sm_90"]


def stored_weight(scheme, n, k, seed=0):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05
    return quantize(w, scheme)


@pytest.mark.parametrize("launch", [triton_kernels.gemv, triton_kernels.gemm], ids=lambda f: f.__name__)
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("rows, n, k", [(1, 37, 128), (3, 70, 256), (17, 5, 128), (2, 65, 384)])
def test_kernel_equals_the_dequantized_reference(launch, scheme, rows, n, k):
    stored = stored_weight(scheme, n, k, seed=rows)
    x = torch.randn(1, rows, k)
    want = x @ dequantize(stored, scheme).T
    torch.testing.assert_close(launch(x, stored, scheme, n), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("launch", [triton_kernels.gemv, triton_kernels.gemm], ids=lambda f: f.__name__)
def test_kernel_writes_bf16_activations_rounded_once(launch):
    scheme = Scheme("int4", 32, False)
    stored = stored_weight(scheme, 40, 128)
    x = torch.randn(4, 128).bfloat16()
    got = launch(x, stored, scheme, 40)
    assert got.dtype == torch.bfloat16
    want = (x.float() @ dequantize(stored, scheme).T).bfloat16()
    # fp32 sums in another order may land on the other side of a rounding boundary: one bf16 ulp
    torch.testing.assert_close(got, want, rtol=2 ** -7, atol=1e-6)


def test_kernel_reads_strided_activation_rows():
    scheme = Scheme("int8")
    stored = stored_weight(scheme, 24, 64)
    x = torch.randn(5, 96)[:, 16:80]
    torch.testing.assert_close(triton_kernels.gemv(x, stored, scheme, 24), x @ dequantize(stored, scheme).T,
                               rtol=0, atol=2e-5)


@pytest.fixture(scope="module")
def compiled():
    jobs = triton_kernels.AOT
    halves = [{k: v for k, v in jobs.items() if v["kernel"] == kernel} for kernel in ("quant_gemv", "quant_gemm")]
    # one child process per kernel: both cores
    with ThreadPoolExecutor(2) as pool:
        results = pool.map(lambda part: compile_in_child(Path(triton_kernels.__file__), part, TARGETS), halves)
        return {name: meta for part in results for name, meta in part.items()}


@pytest.mark.parametrize("job", sorted(triton_kernels.AOT))
def test_kernel_compiles_to_ptx_and_cubin_for_sm80_and_sm90(compiled, job):
    assert_compiled(compiled, job, TARGETS)
