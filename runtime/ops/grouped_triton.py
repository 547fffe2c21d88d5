"""The Triton grouped matmul for CUDA: every picked expert's rows times its weight in one launch.

Rows arrive sorted by expert (runtime/ops/grouped.py). The host cuts each expert's rows into tiles
of BLOCK_M rows and gives each tile its expert and row range; program (t, n) computes tile t's
BLOCK_N output columns against that expert's weight, so only picked experts' weights are read and
no tile mixes two experts. Arithmetic is fp32 (exact fp32 dots for fp32 rows, no TF32; the row
dtype's dot for bf16/fp16), rounded once on store.

Tested on CPU under TRITON_INTERPRET=1 against the per-expert torch matmuls
(tests/test_grouped_linear.py) and compiled ahead of time for sm_80/sm_90 (`AOT`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def grouped_matmul_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, tile_expert_ptr, tile_start_ptr, tile_end_ptr,  # pointers
    N, K,  # sizes
    stride_xm, stride_we, stride_wn, stride_ym,  # strides
    HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[tile rows, n-block] = x[tile rows, :] @ w[e, n-block, :].T (+ b[e, n-block]), e the tile's expert."""
    tile = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(tile_expert_ptr + tile).to(tl.int64)
    start = tl.load(tile_start_ptr + tile)
    end = tl.load(tile_end_ptr + tile)
    offs_m = start + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < end
    mask_n = offs_n < N
    w_base = w_ptr + e * stride_we
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_base + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :],
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        if DOT_F32:
            acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    if HAS_BIAS:
        acc += tl.load(b_ptr + e * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def tiles(counts: list[int], block_m: int) -> tuple[list[int], list[int], list[int]]:
    """(expert, first row, end row) of each tile: each picked expert's rows cut into block_m rows."""
    experts, starts, ends = [], [], []
    start = 0
    for e, n in enumerate(counts):
        for row in range(start, start + n, block_m):
            experts.append(e)
            starts.append(row)
            ends.append(start + n)
        start += n
    return experts, starts, ends


def grouped_matmul(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   counts: list[int]) -> torch.Tensor:
    """rows [M, in] sorted by expert (counts[e] rows of expert e) -> [M, out]: rows @ weight[e].T (+ bias[e])."""
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    weight = weight.contiguous()
    _, n_out, k = weight.shape
    y = torch.empty(rows.shape[0], n_out, dtype=rows.dtype, device=rows.device)
    bm, bn, bk = (64, 64, 32) if rows.is_cuda else (16, 32, 32)
    plan = tiles(counts, bm)
    if not plan[0]:
        return y
    experts, starts, ends = (torch.tensor(v, dtype=torch.int32, device=rows.device) for v in plan)
    grouped_matmul_kernel[(len(plan[0]), triton.cdiv(n_out, bn))](
        rows, weight, bias if bias is not None else weight, y, experts, starts, ends,
        n_out, k, rows.stride(0), weight.stride(0), weight.stride(1), y.stride(0),
        # fp32: exact fp32 dots (no TF32). The interpreter's bf16 dot is wrong, so it gets fp32 too.
        HAS_BIAS=bias is not None, DOT_F32=rows.dtype == torch.float32 or not rows.is_cuda,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return y


def _aot(bias: bool) -> dict:
    return {"pointers": ["x_ptr", "w_ptr", "b_ptr", "y_ptr"],
            "typed": {"tile_expert_ptr": "i32", "tile_start_ptr": "i32", "tile_end_ptr": "i32"},
            "ints": ["N", "K", "stride_xm", "stride_we", "stride_wn", "stride_ym"], "floats": [],
            "constexprs": {"HAS_BIAS": bias, "DOT_F32": {"fp32": True, "bf16": False, "fp16": False},
                           "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32},
            "num_warps": 4}


# Ahead-of-time compile jobs (compiler.triton.aot), with and without a bias; aot.py looks the kernel
# up as "<kernel>_kernel".
AOT = {f"grouped_matmul{suffix}": {"kernel": "grouped_matmul", "aot": _aot(bias)}
       for suffix, bias in ((".plain", False), (".bias", True))}
