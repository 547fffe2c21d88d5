"""Test-session setup shared by every test module."""
import os

import torch

# Without a GPU the emitted Triton kernels are tested through Triton's interpreter, which has to be
# on before anything (transformers' modeling code does) imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Every compile in the suite checks the IR's invariants after each pass (compiler/verify.py).
os.environ.setdefault("GRAPHSPEC_VERIFY", "1")
