"""Run-time modules holding quantized weights: `QuantLinear` (a linear, or several fused into one
matmul), `QuantGroupedLinear` (a mixture of experts' stacked linears) and `QuantEmbedding`. The stored
tensors are buffers (qweight, scales, zeros: schemes.py), so `state_dict()` is exactly what a
quantized checkpoint holds; a bias stays a float param."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from runtime.ops.grouped import ExpertRows, NativePicks, grouped_matmul, route
from runtime.quant import native as native_kernels
from runtime.quant.cpu import NATIVE_MAX_ROWS, matmul as cpu_matmul
from runtime.quant.config import Scheme
from runtime.quant.schemes import dequantize, quantize, quantize_activations


class _Quantized(nn.Module):
    """The stored tensors of one quantized [N, K] weight (of `experts` such weights stacked, each
    stored tensor then [experts, ...]), and per-layout caches built from them."""

    def __init__(self, out_features: int, in_features: int, scheme: Scheme, device=None,
                 experts: int | None = None):
        super().__init__()
        self.out_features, self.in_features, self.scheme = out_features, in_features, scheme
        self.shape_key = (scheme.name, out_features, in_features)
        self.lead = () if experts is None else (experts,)
        scheme.check_shape((out_features, in_features), type(self).__name__)
        for name, (shape, dtype) in scheme.packed_shapes(out_features, in_features).items():
            self.register_buffer(name, torch.empty(self.lead + shape, dtype=getattr(torch, dtype), device=device))
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
            shape = self.lead + shape
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
        """`.to(device)` moves the stored tensors; `.to(dtype)`, `.half()`, `.bfloat16()` cast the float
        params (a bias) but not them: their dtypes are the format (fp16 scales cast to bf16 would
        change the numbers and be read as fp16 by the kernels)."""
        self._cache.clear()        # derived layouts belong to the old device
        stored = {name: t for name, t in self._buffers.items() if t is not None}
        for name in stored:
            self._buffers[name] = None
        super()._apply(fn, recurse)
        for name, t in stored.items():
            moved = fn(t)
            self._buffers[name] = moved if moved.dtype == t.dtype else t.to(moved.device)
        return self

    # A stored tensor replaced (a loader's setattr) or overwritten (load_state_dict): the layouts
    # derived from the old one would go on computing with it.
    def __setattr__(self, name, value):
        if name in self.__dict__.get("_buffers", ()) and "_cache" in self.__dict__:
            self._cache.clear()
        super().__setattr__(name, value)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._cache.clear()

    def __getstate__(self):
        # copy.deepcopy and torch.save: the derived layouts hold kernel handles and pointers into this
        # module's tensors; a copy builds its own on first use
        return {**super().__getstate__(), "_cache": {}}

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
        y = _product(x, self)
        if self.bias is not None:
            y = y + self.bias
        return y.split(self.sizes, dim=-1) if self.sizes is not None else y

    def extra_repr(self) -> str:
        parts = f", parts={self.parts}" if self.parts else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme.name}"
                f"{parts}, bias={self.bias is not None}")


def _check_width(x: torch.Tensor, layer: _Quantized) -> None:
    if x.shape[-1] != layer.in_features:       # the kernels take K from x: they would read past the weight
        raise ValueError(f"quantized linear: expected {layer.in_features} input features, got x of shape "
                         f"{list(x.shape)}")


def _product(x: torch.Tensor, layer: _Quantized, kernel: Callable | None = None) -> torch.Tensor:
    """x @ w'.T for one quantized [N, K] weight, by the kernels of x's device (or `kernel(x)`); when
    autograd needs x's gradient, through _Backward, since the kernels record no graph."""
    _check_width(x, layer)
    if torch.is_grad_enabled() and x.requires_grad:
        return _Backward.apply(x, layer, kernel)
    return _forward(x, layer, kernel)


def _forward(x: torch.Tensor, layer: _Quantized, kernel: Callable | None) -> torch.Tensor:
    if kernel is not None:
        return kernel(x)
    if x.is_cuda:
        from runtime.quant.triton_kernels import matmul     # imports triton: only where it runs
        # int8 activations on CUDA: x' (in x's dtype) through the float kernel, not yet an integer one
        return matmul(quantize_activations(x).to(x.dtype) if layer.scheme.act_bits else x, layer)
    return cpu_matmul(x, layer)


class _Backward(torch.autograd.Function):
    """The kernels' product forward; backward, x's gradient through the dequantized weight,
    grad_x = grad_y @ w' (the quantized weight is frozen: no gradient of its own). With int8
    activations the rounding of x passes the gradient through unchanged (the straight-through
    estimator quantization-aware training uses). Without it a gradient stopped at every quantized
    linear: fine-tuning a quantized model's other params (norms, a head, adapters) silently trained
    them on the residual path alone."""

    @staticmethod
    def forward(ctx, x, layer, kernel):
        ctx.layer = layer
        return _forward(x, layer, kernel)

    @staticmethod
    def backward(ctx, grad):
        w = ctx.layer.dequantized(torch.float32).to(grad.device)
        return (grad.float() @ w).to(grad.dtype), None, None


class QuantGroupedLinear(ExpertRows, _Quantized):
    """The quantized form of ops.GroupedLinear (mixture of experts): `num` experts' [out, in] weights,
    each quantized as a QuantLinear's is and stored stacked (qweight [num, out, ...], scales [num,
    out, ...]); a row of one expert is quantized exactly as alone. forward(x, index) as
    GroupedLinear's: only the experts some row picks are computed, each by the quantized kernels."""

    def __init__(self, num: int, in_features: int, out_features: int, scheme: Scheme, bias: bool = False,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__(out_features, in_features, scheme, device, experts=num)
        self.num = num
        self.bias = (nn.Parameter(torch.empty(num, out_features, dtype=dtype, device=device), requires_grad=False)
                     if bias else None)
        self._count_rows(num)

    @classmethod
    def from_float(cls, module: nn.Module, scheme: Scheme, name: str = "experts",
                   stored: dict[str, torch.Tensor] | None = None) -> "QuantGroupedLinear":
        """The quantized copy of a GroupedLinear: weight [num, out, in], optional bias [num, out]."""
        w = module.weight
        num, n, k = w.shape
        out = cls(num, k, n, scheme, bias=module.bias is not None, dtype=w.dtype, device=w.device)
        if stored is None:
            # rows are output channels, quantized one by one: the experts' rows stacked are the same rows
            stored = {key: t.view(num, n, *t.shape[1:]) for key, t in quantize(w.reshape(num * n, k), scheme, name).items()}
        out.set_stored(stored)
        if module.bias is not None:
            out.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
        return out

    def _stacked(self):
        """The native kernels' weights of all experts as one (one layout, not one per expert) and the
        strides between experts, or None where the experts cannot share one."""
        def build():
            if not native_kernels.available():
                return None
            n = self.num * self.out_features
            stored = {name: t.reshape(n, *t.shape[2:]) for name, t in self.stored().items()}
            weights = native_kernels.Weights(stored, self.scheme, n, int8_activations=bool(self.scheme.act_bits))
            strides = weights.expert_strides(self.num)
            return None if strides is None else (weights, strides)
        return self.cached("stacked", build)

    def expert(self, e: int) -> _Quantized:
        """Expert e's weight, its stored tensors views of the stacked ones; its native kernels' weights
        a part of the stacked layout where there is one."""
        def build():
            one = _Quantized(self.out_features, self.in_features, self.scheme, device="meta")
            one.set_stored({name: t[e] for name, t in self.stored().items()})
            stacked = self._stacked() if self.qweight.device.type == "cpu" else None
            if stacked is not None:
                one._cache["native"] = stacked[0].expert(e, stacked[1], self.out_features)
            return one
        return self.cached(("expert", e), build)

    def _picks(self) -> NativePicks | None:
        def build():
            stacked = self._stacked()
            if stacked is None:
                return None
            weights, strides = stacked
            return NativePicks.product(weights.kernel, weights.weight_args, strides, self.in_features,
                                       self.out_features, self.num, weights)
        return self.cached(("picks", torch.get_num_threads()), build)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        _check_width(x, self)
        bias = self.bias
        if bias is None and x.is_floating_point() and NativePicks.takes(x, index, self.qweight, x.dtype,
                                                                         self.in_features):
            picks = self._picks()
            if picks is not None:     # fp32 kernels, as the sorted path's: rows widened, outputs rounded once
                if x.dtype == torch.float32:
                    return picks(x, index, self.rows_computed)
                return picks(x.float(), index, self.rows_computed).to(x.dtype)

        def product(e, rows):
            one = self.expert(e)
            native = one._cache.get("native") if rows.shape[0] <= NATIVE_MAX_ROWS else None
            # an expert's few rows of a prompt: the kernel its decode picks use, not a measured choice
            # (dequantizing a whole expert for a few rows was measured faster when hot, and cost a
            # 32-token prompt of a 6-layer mixture 24 ms in place)
            y = _product(rows, one, None if native is None else lambda r: native_kernels.matmul(r, native))
            return y if bias is None else y + bias[e]
        return route(self, x, index, lambda rows, counts: grouped_matmul(rows, counts, self.out_features, product))

    def extra_repr(self) -> str:
        return (f"num={self.num}, in_features={self.in_features}, out_features={self.out_features}, "
                f"scheme={self.scheme.name}, bias={self.bias is not None}")


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

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # the rows it hands out follow the model's dtype, as a float embedding's table would
        self.dtype = fn(torch.empty(0, dtype=self.dtype, device=self.qweight.device)).dtype
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = {name: t[ids] for name, t in self.stored().items()}
        return dequantize(rows, self.scheme, self.dtype)

    def extra_repr(self) -> str:
        return f"{self.out_features}, {self.in_features}, scheme={self.scheme.name}"
