"""Triton code generation for fused groups (templates), the emitted module's dispatch, AOT compiles."""
