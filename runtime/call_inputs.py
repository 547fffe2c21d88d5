"""A forward or generate call's tensors checked against the runtime contract, once per call.

Each input is converted to a tensor on the model's device and checked for what its contract record
declares: its dtype class (an int input takes integer ids, never floats or bools), a non-empty batch and
sequence, and, for int inputs whose values pick rows of tables (`below`: an embedding's vocabulary, a
position table, a token-type table), that every value lies in [0, the smallest table). A padding mask
is bool or integer (or float) 0/1 of the shape of its sequence's inputs. A failure is an InputError
naming the argument and what was expected; nothing here depends on an input's name.
"""
from __future__ import annotations

import torch

from runtime.errors import InputError
from runtime.expr import ExprError
from runtime.interface import Input


def as_tensor(model: str, what: str, value, device) -> torch.Tensor:
    """`value` (a tensor, a nested list of numbers, a numpy array) as a tensor on `device`; one made
    under inference_mode (generate's output) is copied when autograd is on, which may not save
    inference tensors for backward."""
    try:
        t = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise InputError(f"{model}: {what} must be a tensor (or a nested list of numbers), got "
                         f"{type(value).__name__}: {err}") from None
    return t.clone() if t.is_inference() and torch.is_grad_enabled() else t


def table_bounds(inputs, config: dict) -> dict[str, tuple[int, str]]:
    """Input name -> (the smallest table its values index, that size's expression) for this config."""
    out = {}
    for inp in inputs:
        sizes = []
        for expr in inp.below:
            try:
                size = expr.evaluate(config)
            except ExprError:
                continue
            if isinstance(size, int) and not isinstance(size, bool):
                sizes.append((size, str(expr)))
        if sizes:
            out[inp.name] = min(sizes)
    return out


def check_input(model: str, inp: Input, t: torch.Tensor, bound: tuple[int, str] | None) -> None:
    """An input tensor already converted: its dtype class, no empty dim, ids inside their tables."""
    if inp.dtype == "float":
        if not t.is_floating_point():
            raise InputError(f"{model}: input {inp.name} takes a float tensor, got {t.dtype}")
    elif inp.dtype == "int":
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise InputError(f"{model}: input {inp.name} takes an int tensor (integer ids), got {t.dtype}")
    elif t.is_floating_point() or t.is_complex():
        raise InputError(f"{model}: input {inp.name} takes a {inp.dtype} tensor, got {t.dtype}")
    if t.numel() == 0:
        raise InputError(f"{model}: input {inp.name} is empty ({list(t.shape)}): a call needs at least one "
                         "example and one position")
    if bound is not None:
        check_range(model, inp.name, t, *bound)


def check_range(model: str, what: str, t: torch.Tensor, size: int, expr: str) -> None:
    """Every value of the int tensor `t` lies in [0, size); otherwise the first one that does not, named."""
    low, high = torch.aminmax(t)
    if int(low) >= 0 and int(high) < size:
        return
    bad = ((t < 0) | (t >= size)).nonzero()[0].tolist()
    named = f" ({expr})" if expr != str(size) else ""
    raise InputError(f"{model}: {what} holds {int(t[tuple(bad)])} at {bad}; its values index a table of "
                     f"{size}{named} rows, so they must be in [0, {size})")


def check_mask(model: str, kwarg: str, m: torch.Tensor, want: tuple[int, int], seq: str,
               values: bool = True) -> torch.Tensor:
    """A padding mask [B, length] (or [length] for one example) of 0/1 values -> bool, True = real.
    values=False skips the check of its values (while tracing, where it would be a guard on data)."""
    m = m[None] if m.dim() == 1 else m
    if tuple(m.shape) != want:
        raise InputError(f"{model}: {kwarg} must be [{want[0]}, {want[1]}] like the inputs along {seq}, "
                         f"got {list(m.shape)}")
    if m.is_complex():
        raise InputError(f"{model}: {kwarg} must hold 0 and 1 (bool or integer), got {m.dtype}")
    if values and m.dtype != torch.bool:
        off = (m != 0) & (m != 1)
        if bool(off.any()):
            at = off.nonzero()[0].tolist()
            raise InputError(f"{model}: {kwarg} must hold only 0 (padding) and 1 (a real position), got "
                             f"{m[tuple(at)].item()!r} at {at}")
    return m.bool()
