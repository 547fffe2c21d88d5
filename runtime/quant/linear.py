"""Run-time modules holding quantized weights: `QuantLinear` (a linear, or several fused into one
matmul) and `QuantEmbedding`. The stored tensors are buffers (qweight, scales, zeros: schemes.py),
so `state_dict()` is exactly what a quantized checkpoint holds; a bias stays a float param."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from runtime.quant.cpu import matmul as cpu_matmul
from runtime.quant.config import Scheme
from runtime.quant.schemes import dequantize, quantize, quantize_activations


class _Quantized(nn.Module):
    """The stored tensors of one quantized [N, K] weight, and per-layout caches built from them."""

    def __init__(self, out_features: int, in_features: int, scheme: Scheme, device=None):
        super().__init__()
        self.out_features, self.in_features, self.scheme = out_features, in_features, scheme
        self.shape_key = (scheme.name, out_features, in_features)
        scheme.check_shape((out_features, in_features), type(self).__name__)
        for name, (shape, dtype) in scheme.packed_shapes(out_features, in_features).items():
            self.register_buffer(name, torch.empty(shape, dtype=getattr(torch, dtype), device=device))
        if "zeros" not in self._buffers:
            self.register_buffer("zeros", None)
        self._cache: dict = {}

    def stored(self) -> dict[str, torch.Tensor]:
        return {n: b for n, b in (("qweight", self.qweight), ("scales", self.scales), ("zeros", self.zeros))
                if b is not None}

    def set_stored(self, stored: dict[str, torch.Tensor]) -> None:
        """Take over quantized tensors (shared, not copied: a tied head and embedding hold the same ones)."""
        want = self.scheme.packed_shapes(self.out_features, self.in_features)
        if set(stored) != set(want):
            raise ValueError(f"{self.scheme.name}: expected tensors {sorted(want)}, got {sorted(stored)}")
        for name, t in stored.items():
            shape, dtype = want[name]
            if tuple(t.shape) != shape or t.dtype != getattr(torch, dtype):
                raise ValueError(f"{self.scheme.name} {name}: expected {list(shape)} torch.{dtype}, got {list(t.shape)} {t.dtype}")
            self._buffers[name] = t
        self._cache.clear()

    def cached(self, key, build: Callable[[], object]):
        """A layout derived from the stored tensors (a kernel's own packing), built once."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _apply(self, fn, recurse=True):
        self._cache.clear()        # derived layouts belong to the old device
        return super()._apply(fn, recurse)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.stored(), self.scheme, dtype)


class QuantLinear(_Quantized):
    """y = x @ w'.T + bias with w' the dequantized weight; `parts` (name -> size) makes it the
    quantized form of ops.FusedLinear: forward then returns one tensor per part."""

    def __init__(self, in_features: int, out_features: int, scheme: Scheme, bias: bool = False,
                 parts: dict[str, int] | None = None, dtype: torch.dtype = torch.float32, device=None):
        super().__init__(out_features, in_features, scheme, device)
        self.parts = dict(parts) if parts else None
        self.sizes = list(self.parts.values()) if parts else None
        if self.sizes is not None and sum(self.sizes) != out_features:
            raise ValueError(f"QuantLinear: parts {self.parts} do not add up to {out_features} output features")
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None

    @classmethod
    def from_float(cls, module: nn.Module, scheme: Scheme, name: str = "linear",
                   stored: dict[str, torch.Tensor] | None = None) -> "QuantLinear":
        """The quantized copy of a linear (ops.Linear, ops.FusedLinear, nn.Linear): weight [out, in]
        and optional bias. `stored` reuses tensors already quantized from the same weight (a tie)."""
        w = module.weight
        out = cls(w.shape[1], w.shape[0], scheme, bias=module.bias is not None, parts=getattr(module, "parts", None),
                  dtype=w.dtype, device=w.device)
        out.set_stored(stored if stored is not None else quantize(w, scheme, name))
        if module.bias is not None:
            out.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
        return out

    def forward(self, x: torch.Tensor):
        if x.is_cuda:
            from runtime.quant.triton_kernels import matmul     # imports triton: only where it runs
            # int8 activations on CUDA: x' (in x's dtype) through the float kernel, not yet an integer one
            y = matmul(quantize_activations(x).to(x.dtype) if self.scheme.act_bits else x, self)
        else:
            y = cpu_matmul(x, self)
        if self.bias is not None:
            y = y + self.bias
        return y.split(self.sizes, dim=-1) if self.sizes is not None else y

    def extra_repr(self) -> str:
        parts = f", parts={self.parts}" if self.parts else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme.name}"
                f"{parts}, bias={self.bias is not None}")


class QuantEmbedding(_Quantized):
    """Rows of the dequantized table picked by ids, in `dtype` (the model's): only those rows are
    dequantized."""

    def __init__(self, num_embeddings: int, embedding_dim: int, scheme: Scheme, dtype: torch.dtype = torch.float32,
                 device=None):
        super().__init__(num_embeddings, embedding_dim, scheme, device)
        self.dtype = dtype

    @classmethod
    def from_float(cls, module: nn.Embedding, scheme: Scheme, name: str = "embedding",
                   stored: dict[str, torch.Tensor] | None = None) -> "QuantEmbedding":
        w = module.weight
        out = cls(w.shape[0], w.shape[1], scheme, dtype=w.dtype, device=w.device)
        out.set_stored(stored if stored is not None else quantize(w, scheme, name))
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = {name: t[ids] for name, t in self.stored().items()}
        return dequantize(rows, self.scheme, self.dtype)

    def extra_repr(self) -> str:
        return f"{self.out_features}, {self.in_features}, scheme={self.scheme.name}"
