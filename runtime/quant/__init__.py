"""Weight-only quantization: int8 per output channel, int4 group-wise (schemes.py), the modules
holding packed weights (linear.py), their CPU (cpu.py, native.py) and CUDA (triton_kernels.py)
kernels, `quantize_model` (convert.py) and quantized checkpoints (io.py)."""
from runtime.quant.config import QuantConfig
from runtime.quant.convert import quantize_model
from runtime.quant.io import load_quantized, save_quantized
from runtime.quant.linear import QuantEmbedding, QuantLinear
from runtime.quant.schemes import Scheme, dequantize, quantize

__all__ = ["QuantConfig", "Scheme", "QuantLinear", "QuantEmbedding", "quantize", "dequantize", "quantize_model",
           "save_quantized", "load_quantized"]
