"""Triton dequant-matmul kernels for CUDA: y = x @ w'.T with w' dequantized on the fly.

A matrix-vector kernel for decode (few rows: each program owns BLOCK_N outputs of one row and
streams their weights once) and a tiled GEMM for prefill (tl.dot on BLOCK_M x BLOCK_N tiles, the
weight tile dequantized in registers). Weight formats are those of schemes.py: int8 [N, K] with an
fp32 scale per row; int4 packed two per byte along K (low nibble = even column) with fp16 scales
and optional uint8 zero points per group of GROUP columns. Arithmetic is fp32; the GEMM's dot runs
in fp32 for fp32 activations (no TF32) and in the activation dtype for bf16/fp16 ones.

Tested on CPU under TRITON_INTERPRET=1 against schemes.dequantize + torch (tests/test_quant_triton.py)
and compiled ahead of time for sm_80/sm_90 (`AOT`, through compiler/triton/aot.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

GEMV_MAX_ROWS = 16


@triton.jit
def _dequant(q_ptr, s_ptr, z_ptr, offs_n, offs_k, mask_n, mask_k, K,
             INT4: tl.constexpr, HAS_ZERO: tl.constexpr, GROUP: tl.constexpr):
    """w'[n, k] in fp32 for the tile offs_n x offs_k (0 outside the masks)."""
    n = offs_n[:, None].to(tl.int64)
    k = offs_k[None, :]
    mask = mask_n[:, None] & mask_k[None, :]
    if INT4:
        byte = tl.load(q_ptr + n * (K // 2) + k // 2, mask=mask, other=0).to(tl.int32)
        q = ((byte >> ((k % 2) * 4)) & 15).to(tl.float32)
        group = n * (K // GROUP) + k // GROUP
        scale = tl.load(s_ptr + group, mask=mask, other=0.0).to(tl.float32)
        if HAS_ZERO:
            zero = tl.load(z_ptr + group, mask=mask, other=0).to(tl.float32)
        else:
            zero = 8.0
        return (q - zero) * scale
    else:
        q = tl.load(q_ptr + n * K + k, mask=mask, other=0).to(tl.float32)
        scale = tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        return q * scale[:, None]


@triton.jit
def quant_gemv_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, y_ptr,  # pointers
    M, N, K,  # sizes
    stride_xm, stride_ym,  # strides
    INT4: tl.constexpr, HAS_ZERO: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[m, n-block] = sum_k x[m, k] * w'[n, k]: one activation row, BLOCK_N outputs per program."""
    pid_n = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        offs_k = start + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + m * stride_xm + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        w = _dequant(q_ptr, s_ptr, z_ptr, offs_n, offs_k, mask_n, mask_k, K, INT4, HAS_ZERO, GROUP)
        acc += tl.sum(w * x[None, :], axis=1)
    tl.store(y_ptr + m * stride_ym + offs_n, acc.to(y_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def quant_gemm_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, y_ptr,  # pointers
    M, N, K,  # sizes
    stride_xm, stride_ym,  # strides
    INT4: tl.constexpr, HAS_ZERO: tl.constexpr, GROUP: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[m-block, n-block] = x[m-block, :] @ w'[n-block, :].T, the weight tile dequantized in registers."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        offs_k = start + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = _dequant(q_ptr, s_ptr, z_ptr, offs_n, offs_k, mask_n, mask_k, K, INT4, HAS_ZERO, GROUP)
        if DOT_F32:
            acc += tl.dot(x.to(tl.float32), tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w).to(x.dtype))
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def _launch_args(x: torch.Tensor, stored: dict, scheme, out_features: int):
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape[0], out_features, dtype=x.dtype, device=x.device)
    zeros = stored.get("zeros")
    int4 = scheme.kind == "int4"
    flags = dict(INT4=int4, HAS_ZERO=zeros is not None, GROUP=scheme.group if int4 else 1)
    ptrs = (x2, stored["qweight"], stored["scales"], zeros if zeros is not None else stored["scales"], y)
    return x2, y, ptrs, flags


def gemv(x: torch.Tensor, stored: dict, scheme, out_features: int) -> torch.Tensor:
    x2, y, ptrs, flags = _launch_args(x, stored, scheme, out_features)
    m, k = x2.shape
    block_n = 64
    quant_gemv_kernel[(triton.cdiv(out_features, block_n), m)](
        *ptrs, m, out_features, k, x2.stride(0), y.stride(0), **flags, BLOCK_N=block_n, BLOCK_K=128)
    return y.view(*x.shape[:-1], out_features)


def gemm(x: torch.Tensor, stored: dict, scheme, out_features: int) -> torch.Tensor:
    x2, y, ptrs, flags = _launch_args(x, stored, scheme, out_features)
    m, k = x2.shape
    bm, bn, bk = (64, 64, 32) if x.is_cuda else (16, 32, 32)
    quant_gemm_kernel[(triton.cdiv(m, bm), triton.cdiv(out_features, bn))](
        *ptrs, m, out_features, k, x2.stride(0), y.stride(0), **flags,
        # fp32: exact fp32 dots (no TF32). The interpreter's bf16 dot is wrong, so it gets fp32 too.
        DOT_F32=x.dtype == torch.float32 or not x.is_cuda, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return y.view(*x.shape[:-1], out_features)


def matmul(x: torch.Tensor, layer) -> torch.Tensor:
    """x @ w'.T for a QuantLinear on a CUDA tensor: the GEMV up to GEMV_MAX_ROWS rows, else the GEMM."""
    rows = x.numel() // max(x.shape[-1], 1)
    launch = gemv if rows <= GEMV_MAX_ROWS else gemm
    return launch(x, layer.stored(), layer.scheme, layer.out_features)


def _aot(kernel: str, int4: bool, zero: bool) -> dict:
    ptrs = ["x_ptr", "q_ptr", "s_ptr", "z_ptr", "y_ptr"]
    typed = {"q_ptr": "u8" if int4 else "i8", "s_ptr": "fp16" if int4 else "fp32", "z_ptr": "u8" if int4 else "fp32"}
    constexprs = {"INT4": int4, "HAS_ZERO": zero, "GROUP": 32 if int4 else 1}
    if kernel == "quant_gemv":
        constexprs.update(BLOCK_N=64, BLOCK_K=128)
    else:
        constexprs.update(DOT_F32={"fp32": True, "bf16": False, "fp16": False}, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32)
    return {"pointers": ptrs, "typed": typed, "ints": ["M", "N", "K", "stride_xm", "stride_ym"], "floats": [],
            "constexprs": constexprs, "num_warps": 4}


# Ahead-of-time compile jobs (compiler.triton.aot): each kernel for int8, int4 symmetric and int4
# with zero points. Keys are "<kernel>[.<variant>]"; aot.py looks the kernel up as "<kernel>_kernel".
AOT = {f"{kernel}{suffix}": {"kernel": kernel, "aot": _aot(kernel, int4, zero)}
       for kernel in ("quant_gemv", "quant_gemm")
       for suffix, int4, zero in ((".int8", False, False), (".int4", True, False), (".int4_zero", True, True))}
