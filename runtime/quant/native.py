"""Quantized matrix products by the C kernels of runtime/csrc/matmul.c (built by runtime/native.py)."""
from __future__ import annotations

import torch

from runtime.native import available, call, library


def interleaved() -> bool:
    """Whether the int8-activation products run on the 16-row interleaved layout here (AVX-512 VNNI):
    integer kernels that beat dequantize-then-GEMM at any number of rows."""
    return available() and bool(library().gs_a8_interleaved())


class Weights:
    """A quantized weight's kernel arguments, resolved once (the tensors must outlive it). With
    `int8_activations` the kernels quantize each activation row first (schemes.quantize_activations).
    `weight_tensors`: the kernel's weight arguments as tensors (None for NULL) and numbers;
    `weight_args` the same with each tensor as its data pointer."""

    def __init__(self, stored: dict[str, torch.Tensor], scheme, out_features: int, int8_activations: bool = False):
        self.lib = library()
        self.out_features = out_features
        self.stored = stored                   # keeps the tensors alive
        qweight, scales, zeros = stored["qweight"], stored["scales"], stored.get("zeros")
        if scheme.kind == "int8" and interleaved() and qweight.shape[1] % 32 == 0:
            # AVX-512 VNNI: a second copy of the weight in the kernels' own layout (16 rows interleaved)
            n, k = qweight.shape
            self.layout = (torch.empty(((n + 15) // 16) * 16 * k, dtype=torch.uint8),)
            self.lib.gs_q8_repack16(qweight.data_ptr(), n, k, self.layout[0].data_ptr())
            self.kernel = self.lib.gs_q8a8_mm16 if int8_activations else self.lib.gs_q8_mm16
            self.weight_tensors = (self.layout[0], scales)
        elif scheme.kind == "int8":
            self.kernel = self.lib.gs_q8a8_mm if int8_activations else self.lib.gs_q8_mm
            self.weight_tensors = (qweight, scales)
        elif interleaved():
            # AVX-512 (VNNI): a second copy of the weight in the kernels' own layout (16 rows interleaved)
            n, k = out_features, qweight.shape[1] * 2
            tiles, groups = (n + 15) // 16, k // scheme.group
            self.layout = (torch.empty(tiles * 16 * k // 2, dtype=torch.uint8),
                           torch.empty(tiles * groups * 16, dtype=torch.float16),
                           None if zeros is None else torch.empty(tiles * groups * 16, dtype=torch.uint8))
            self.lib.gs_q4_repack16(*_pointers((qweight, scales, zeros)), n, k, scheme.group,
                                    *_pointers(self.layout))
            self.kernel = self.lib.gs_q4a8_mm16 if int8_activations else self.lib.gs_q4_mm16
            self.weight_tensors = (*self.layout, scheme.group)
        else:
            self.kernel = self.lib.gs_q4a8_mm if int8_activations else self.lib.gs_q4_mm
            self.weight_tensors = (qweight, scales, zeros, scheme.group)
        self.weight_args = _pointers(self.weight_tensors)

    def expert_strides(self, experts: int) -> list[int] | None:
        """For the stacked weights of `experts` experts (rows [num * N]): per weight argument, the
        bytes from one expert's to the next's (0 for a number); None where an expert's rows do not
        start a 16-row tile of the interleaved layout (N not a multiple of 16)."""
        if hasattr(self, "layout") and (self.out_features // experts) % 16:
            return None
        return [t.numel() * t.element_size() // experts if isinstance(t, torch.Tensor) else 0
                for t in self.weight_tensors]

    def expert(self, e: int, strides: list[int], out_features: int) -> "Weights":
        """Expert e's weights within the stacked ones: the same kernel and tensors, the pointers moved."""
        one = object.__new__(Weights)
        one.__dict__.update(self.__dict__)
        one.out_features = out_features
        one.weight_args = tuple(a if not step or a is None else a + e * step for a, step in zip(self.weight_args, strides))
        return one


def _pointers(values) -> tuple:
    """Kernel arguments: a tensor as its data pointer, None as NULL, a number as it is."""
    return tuple(v.data_ptr() if isinstance(v, torch.Tensor) else v for v in values)


def matmul(x: torch.Tensor, w: Weights) -> torch.Tensor:
    """x [..., K] (any float dtype) @ dequant(w).T -> [..., N] in x's dtype; fp32 arithmetic."""
    n = w.out_features
    if x.dtype == torch.float32 and x.is_contiguous() and x.shape[-1]:
        # the decode step's case, with as few torch calls as can be: each costs a microsecond
        k = x.shape[-1]
        m = x.numel() // k
        y = torch.empty(x.shape[:-1] + (n,))
        _check(call(w.kernel, x, m, k, k, *w.weight_args, n, y, n, torch.get_num_threads()), m, k)
        return y
    x2 = x.reshape(-1, x.shape[-1])
    if x2.dtype != torch.float32:
        x2 = x2.float()
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, k = x2.shape
    y = torch.empty(m, n, dtype=torch.float32)
    _check(call(w.kernel, x2, m, k, x2.stride(0), *w.weight_args, n, y, n, torch.get_num_threads()), m, k)
    y = y.view(*x.shape[:-1], n)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def _check(status: int, m: int, k: int) -> None:
    if status == -1:
        raise MemoryError(f"quantized kernel: no memory for a {m} x {k} work buffer")
    if status:
        raise RuntimeError(f"quantized kernel: not in this build of the kernels (status {status}); "
                           "the layer was prepared for another one")


def dequantize(stored: dict[str, torch.Tensor], scheme, in_features: int) -> torch.Tensor:
    """The fp32 weight [N, K], exactly `schemes.dequantize`, on all threads."""
    lib = library()
    q = stored["qweight"]
    n = q.shape[0]
    out = torch.empty(n, in_features, dtype=torch.float32)
    threads = torch.get_num_threads()
    if scheme.kind == "int8":
        lib.gs_q8_dequant(q.data_ptr(), stored["scales"].data_ptr(), n, in_features, out.data_ptr(), threads)
    else:
        zeros = stored.get("zeros")
        lib.gs_q4_dequant(q.data_ptr(), stored["scales"].data_ptr(), None if zeros is None else zeros.data_ptr(),
                          scheme.group, n, in_features, out.data_ptr(), threads)
    return out
