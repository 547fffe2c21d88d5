"""Weight-only quantization: int8 per output channel, int4 group-wise (schemes.py), the modules
holding packed weights (linear.py), their CPU (cpu.py, native.py) and CUDA (triton_kernels.py)
kernels, `quantize_model` (convert.py) and quantized checkpoints (io.py).

Lazy (PEP 562): `runtime.quant.config` is pure Python and the compiler imports it without torch."""
from __future__ import annotations

import importlib

_WHERE = {"QuantConfig": "config", "Scheme": "config", "quantize_model": "convert", "load_quantized": "io",
          "save_quantized": "io", "QuantLinear": "linear", "QuantEmbedding": "linear", "quantize": "schemes",
          "dequantize": "schemes", "quantize_activations": "schemes"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'runtime.quant' has no attribute {name!r}")
    return getattr(importlib.import_module(f"runtime.quant.{_WHERE[name]}"), name)
