"""A quantized linear on CPU: the candidate paths, and the fastest one per shape, measured.

Paths (all compute x @ w'.T with w' the dequantized weight of schemes.py; they differ only in
summation order and, for bf16/fp16 activations, where the one rounding of the output happens):
  native      our C kernels (runtime/csrc/matmul.c): weights read once per 4 activation rows, fp32 arithmetic;
              on AVX-512 VNNI builds on the 16-row interleaved layouts (gs_q4_mm16, gs_q8_mm16: a column's
              weights for 16 rows per vector, int4 by a byte shift and a permute of the 16 levels, int8 by
              shift, mask and convert; at one row int4 reads 24-29 GB/s, 2.5x its table kernel, int8 1.5x
              its row kernel).
              A matrix-vector design, so offered up to 64 rows only.
  dequant     w' materialised in the activation dtype, then the dense linear (runtime/ops/linear_layers.py:
              MKL, split across threads for few rows, fp32 GEMM for bf16 where that measured faster).
  torch_int8  torch._weight_int8pack_mm (bf16/fp16 activations; with fp32 ones it runs ~8x slower).
  torch_int4  torch._weight_int4pack_mm_for_cpu, on its own packed layout built at first use
              (bf16/fp16 activations, ~40x slower with fp32 ones; N a multiple of 16).
With int8 activations (a scheme's act_bits) the product is x' @ w'.T, x' = schemes.quantize_activations(x):
  native      the integer kernels of runtime/csrc/matmul.c (gs_q8a8_mm, gs_q4a8_mm), up to 64 rows; on
              the 16-row interleaved layout (AVX-512 VNNI) at any number of rows, 1.4-2x dequant at 512;
  dequant     x' and w' materialised in fp32, then the dense linear;
torch's kernels are not offered (they take float activations).
The first call of each (scheme, N, K, rows bucket, dtype) times the candidates on its own input
(`runtime.measure.fastest`) and keeps the fastest for the process; `choices()` shows what was kept.
"""
from __future__ import annotations

import torch

from runtime.ops.linear_layers import linear as dense_linear
from runtime.measure import fastest
from runtime.quant import native
from runtime.quant.schemes import dequantize, quantize_activations, unpack_int4

NATIVE_MAX_ROWS = 64
# Up to this many rows the dequant path is not offered where native is: it writes and reads back
# the whole weight in the activation dtype (9 bytes per int8 weight moved for fp32, against the
# native kernel's 1 byte per 4 rows), which no GEMM speed can repay for so few rows.
DEQUANT_MIN_ROWS = 4
ROW_BUCKETS = (1, 2, 4, 8, 16, 64, 256)

_CHOICES: dict[tuple, object] = {}
_FORCED: str | None = None


def choices() -> dict[tuple, str]:
    """(scheme name, N, K, rows up to, dtype name) -> the path measured fastest in this process."""
    names = {fn: name for name, fn in PATHS.items()}
    return {(*shape, rows, str(dtype)): names[fn] for (shape, rows, dtype), fn in _CHOICES.items()}


def force(path: str | None) -> None:
    """Pin every quantized CPU linear to one path (tests, benchmarks); None measures again."""
    global _FORCED
    if path is not None and path not in PATHS:
        raise ValueError(f"unknown CPU path {path!r} (known: {', '.join(PATHS)})")
    _FORCED = path
    _CHOICES.clear()


def _bucket(rows: int) -> int:
    if rows == 1:
        return 1
    for b in ROW_BUCKETS:
        if rows <= b:
            return b
    return 1 << 30


def _native(x, layer):
    weights = layer.cached("native", lambda: native.Weights(layer.stored(), layer.scheme, layer.out_features,
                                                            int8_activations=bool(layer.scheme.act_bits)))
    return native.matmul(x, weights)


def _dequant(x, layer):
    stored = layer.stored()
    w = (native.dequantize(stored, layer.scheme, layer.in_features) if native.available()
         else dequantize(stored, layer.scheme))
    if layer.scheme.act_bits:
        return dense_linear(quantize_activations(x), w, None).to(x.dtype)
    return dense_linear(x, w.to(x.dtype), None)


def _torch_int8(x, layer):
    scales = layer.cached(("int8pack_scales", x.dtype), lambda: layer.scales.to(x.dtype))
    y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), layer.qweight, scales)
    return y.view(*x.shape[:-1], layer.out_features)


def _int4pack(layer, dtype):
    def build():
        q = unpack_int4(layer.qweight).to(torch.int32)
        packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
        s = layer.scales.float()
        zero = layer.zeros.float() if layer.zeros is not None else 8.0
        # torch's form is (q - 8) * s + z'; ours is (q - zero) * s, so z' = (8 - zero) * s
        scale_zeros = torch.stack([s, (8 - zero) * s], dim=-1).transpose(0, 1).contiguous().to(dtype)
        return packed, scale_zeros
    return layer.cached(("int4pack", dtype), build)


def _torch_int4(x, layer):
    packed, scale_zeros = _int4pack(layer, x.dtype)
    y = torch._weight_int4pack_mm_for_cpu(x.reshape(-1, x.shape[-1]).contiguous(), packed, layer.scheme.group,
                                          scale_zeros)
    return y.view(*x.shape[:-1], layer.out_features)


PATHS = {"native": _native, "dequant": _dequant, "torch_int8": _torch_int8, "torch_int4": _torch_int4}


def candidates(layer, dtype: torch.dtype, rows: int) -> list[str]:
    out = []
    if native.available() and (rows <= NATIVE_MAX_ROWS or (layer.scheme.act_bits and native.interleaved())):
        out.append("native")
    if rows > DEQUANT_MIN_ROWS or not out:
        out.append("dequant")
    if dtype in (torch.bfloat16, torch.float16) and not layer.scheme.act_bits:
        if layer.scheme.kind == "int8":
            out.append("torch_int8")
        elif layer.out_features % 16 == 0:         # its packing's requirement
            out.append("torch_int4")
    return out


def matmul(x: torch.Tensor, layer) -> torch.Tensor:
    """x @ w'.T for a QuantLinear `layer` on CPU, by the fastest path for this shape."""
    if _FORCED is not None:
        return PATHS[_FORCED](x, layer)
    rows = x.numel() // max(x.shape[-1], 1)
    key = (layer.shape_key, _bucket(rows), x.dtype)
    path = _CHOICES.get(key)
    if path is not None:
        return path(x, layer)
    names = candidates(layer, x.dtype, rows)
    if len(names) == 1:
        _CHOICES[key] = PATHS[names[0]]
        return PATHS[names[0]](x, layer)
    # few rows: cheap to time well; many rows: each run is a full GEMM, so once each
    name, y = fastest({n: (lambda f=PATHS[n]: f(x, layer)) for n in names}, repeat=3 if rows <= 16 else 1)
    _CHOICES[key] = PATHS[name]
    return y
