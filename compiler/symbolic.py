"""Symbolic equality of expressions: a polynomial normal form, so tensor shapes can be compared
before any config value is known (`num_heads * head_dim // num_heads` is `head_dim`)."""
from __future__ import annotations

import re
from fractions import Fraction

from runtime.expr import INT_MAX, Expr, ExprError, _is_number, parse_expr

MAX_EXPANDED_POWER = 8
MAX_TERMS = 1000    # products of sums grow as 2**k; past this size they stay opaque atoms
MAX_CANONICAL = 100_000   # opaque atoms embed their operands' text, which can also grow as 2**k
# Constants are folded exactly up to this size; a product of large ones would otherwise reach
# Python's limit on the digits of an int converted to text (4300) when the normal form is printed.
MAX_CONSTANT_BITS = 4096


# --- symbolic equality ----------------------------------------------------------------------
# A polynomial maps a monomial (sorted tuple of (atom key, power)) to a nonzero Fraction.

Poly = dict


def same_value(a: Expr, b: Expr) -> bool:
    return canonical(a) == canonical(b)


def same_type(a, b) -> bool:
    """Two TTypes with the same dtype class and symbolically equal shapes."""
    return a.dtype == b.dtype and len(a.shape) == len(b.shape) and all(same_value(x, y) for x, y in zip(a.shape, b.shape))


class _TooComplex(Exception):
    pass


def canonical(e: Expr) -> str:
    """The polynomial normal form, text that parse_expr reads back; for pathological inputs whose
    normal form would be huge or hold a constant past int64, the expression's own text marked with
    a leading `<` - still a sound, if weaker, key for same_value."""
    e = parse_expr(e)
    try:
        return _poly_str(_canon(e))
    except _TooComplex:
        return f"<not normalised> {e.text}"


def _canon(e: Expr) -> Poly:
    k, v = e.kind, e.value
    if k == "const":
        return _const_poly(Fraction(v)) if _is_number(v) else _atom_poly(e.text)
    if k == "name":
        return _atom_poly(v)
    polys = []
    for a in e.args:
        polys.append(_canon(a))
    if k == "dims":     # a list attribute (compiler.ops.registry.Dims): equal entry by entry
        return _atom_poly("[" + ", ".join(_poly_str(p) for p in polys) + "]")
    if k == "attr":
        base = _poly_str(polys[0])
        return _atom_poly(f"{base}.{v}" if _ATOM_NAME_RE.fullmatch(base) else f"({base}).{v}")
    if k == "unary" and v != "not":
        return polys[0] if v == "+" else _add({}, polys[0], -1)
    if k == "if" and _constant(polys[1]) is not None:
        return polys[0] if _constant(polys[1]) else polys[2]
    if k == "binary":
        p, q = polys
        result = None
        if v in ("+", "-"):
            result = _add(p, q, 1 if v == "+" else -1)
        elif v == "*":
            result = _mul(p, q)
        elif v == "/" and _constant(q):
            result = {m: c / _constant(q) for m, c in p.items()}
        elif v == "//":
            result = _exact_quotient(p, q)
        elif v == "**":
            result = _power_poly(p, q)
        if result is not None:
            return result
    return _opaque(e, polys)


def _exact_quotient(p: Poly, q: Poly) -> Poly | None:
    """p // q when q is one integer-coefficient monomial dividing every term of p exactly
    (`(heads * head_dim) // heads` is head_dim), or a positive integer k dividing every term but the
    constant c, which then floors on its own: `(2 * n - 1) // 2` is `n - 1`, shapes being integers (a
    convolution's output length); None when the division is not exact."""
    if len(q) != 1:
        return None
    (qm, qc), = q.items()
    if qc.denominator != 1 or not qc:
        return None
    out: Poly = {}
    constant = p.get((), Fraction(0))
    if not qm and qc > 0 and constant.denominator == 1 and constant % qc:
        rest = _exact_quotient({m: c for m, c in p.items() if m}, q)
        return None if rest is None else _add(rest, _const_poly(Fraction(constant // qc)), 1)
    for m, c in p.items():
        powers = dict(m)
        for atom, n in qm:
            if powers.get(atom, 0) < n:
                return None
            powers[atom] -= n
        coeff = c / qc
        if c.denominator != 1 or coeff.denominator != 1:
            return None
        out[tuple(sorted((a, n) for a, n in powers.items() if n))] = coeff
    return out


def _bits(c: Fraction) -> int:
    return max(c.numerator.bit_length(), c.denominator.bit_length())


def _const_poly(c: Fraction) -> Poly:
    return {(): c} if c else {}


def _atom_poly(key: str) -> Poly:
    return {((key, 1),): Fraction(1)}


def _constant(p: Poly) -> Fraction | None:
    return p.get((), Fraction(0)) if all(m == () for m in p) else None


def _add(p: Poly, q: Poly, sign: int = 1) -> Poly:
    out = dict(p)
    for m, c in q.items():
        out[m] = out.get(m, 0) + sign * c
        if not out[m]:
            del out[m]
    return out


def _mul(p: Poly, q: Poly) -> Poly | None:
    if len(p) * len(q) > MAX_TERMS:
        return None
    out: Poly = {}
    for m1, c1 in p.items():
        for m2, c2 in q.items():
            powers = dict(m1)
            for atom, n in m2:
                powers[atom] = powers.get(atom, 0) + n
            m = tuple(sorted(powers.items()))
            out[m] = out.get(m, 0) + c1 * c2
            if not out[m]:
                del out[m]
    return out


def _power_poly(p: Poly, q: Poly) -> Poly | None:
    k = _constant(q)
    if k is None or k.denominator != 1:
        return None
    k, base = int(k), _constant(p)
    if base is not None:   # exact, but refuse constants too big to fold quickly
        if (base == 0 and k < 0) or _bits(base) * abs(k) > MAX_CONSTANT_BITS:
            return None
        return _const_poly(base ** k)
    if not 0 <= k <= MAX_EXPANDED_POWER:
        return None
    out: Poly | None = {(): Fraction(1)}
    for _ in range(k):
        out = _mul(out, p)
        if out is None:
            return None
    return out


def _opaque(e: Expr, polys: list[Poly]) -> Poly:
    """An atom for a non-polynomial node, keyed by its text over canonical operands; folded to a
    number when every operand is constant and it evaluates cleanly."""
    consts = [_constant(p) for p in polys]
    if all(c is not None and _bits(c) <= MAX_CONSTANT_BITS for c in consts):
        try:
            args = tuple(Expr("const", int(c) if c.denominator == 1 else float(c)) for c in consts)
            value = Expr(e.kind, e.value, args).evaluate({})
            if _is_number(value):
                return _const_poly(Fraction(value))
        except (ExprError, OverflowError):
            pass   # e.g. `1 // 0`: stays an atom; evaluate() reports it when it matters
    parts = [_poly_str(p) for p in polys]
    k, v = e.kind, e.value
    if k == "call":
        return _atom_poly(f"{v}({', '.join(sorted(parts) if v in ('min', 'max') else parts)})")
    if k == "if":
        return _atom_poly(f"({parts[0]}) if ({parts[1]}) else ({parts[2]})")
    if k == "unary":
        return _atom_poly(f"not ({parts[0]})")
    if k == "index":
        return _atom_poly(f"({parts[0]})[{parts[1]}]")
    if k == "list":
        return _atom_poly(f"[{', '.join(parts)}]")
    if v in (">", ">="):   # a > b is b < a
        v, parts = v.replace(">", "<"), parts[::-1]
    if v in ("==", "!=", "and", "or", "+", "*"):   # commutative (ours and/or return bools)
        parts = sorted(parts)
    return _atom_poly(f"({parts[0]}) {v} ({parts[1]})")


_ATOM_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def _poly_str(p: Poly) -> str:
    if not p:
        return "0"
    out, size = [], 0
    for mono, c in sorted(p.items(), key=lambda t: (t[0] == (), t[0])):
        factors = [(a if _ATOM_NAME_RE.fullmatch(a) else f"({a})") + (f"**{n}" if n != 1 else "")
                   for a, n in mono]
        if abs(c.numerator) > INT_MAX or c.denominator > INT_MAX:
            raise _TooComplex     # the normal form is text in the expression language, which has int64 literals
        if abs(c) != 1 or not factors:
            factors.insert(0, str(abs(c)) if c.denominator == 1 else f"({abs(c)})")
        term = "*".join(factors)
        size += len(term) + 3
        if size > MAX_CANONICAL:
            raise _TooComplex
        if not out:
            out.append(f"-{term}" if c < 0 else term)
        else:
            out.append(f" {'-' if c < 0 else '+'} {term}")
    return "".join(out)
