"""Triton code generation for fused groups (templates) and ahead-of-time compiles; the emitted
module's dispatch is runtime/kernels.py."""
