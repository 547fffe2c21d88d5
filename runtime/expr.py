"""Expressions inside specs: config values and tensor shapes such as `hidden // heads`.

The language is a small, safe subset of Python expressions. Specs are user text, so it is parsed by
our own tokenizer and recursive-descent parser (never by Python's eval), and evaluated with guards
that keep a mistaken spec from hanging the compiler (`10**100000`) or yielding values the generated
int64/float code cannot hold. It lives in the runtime because config defaults, checks and weight-rule
conditions are evaluated when a checkpoint is loaded; the compiler's symbolic algebra over it is
compiler/symbolic.py.
"""
from __future__ import annotations

import math
import operator
import re
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, NamedTuple

MAX_LENGTH = 1000
MAX_DEPTH = 50
INT_MIN, INT_MAX = -(2**63), 2**63 - 1   # generated code holds integers in int64


class ExprError(ValueError):
    """A malformed expression or a failed evaluation. Message only: callers add file and line."""


# name -> (fewest args, most args or None, implementation)
_FUNCTIONS: dict[str, tuple[int, int | None, Callable]] = {
    "min": (2, None, min), "max": (2, None, max), "abs": (1, 1, abs),
    "sqrt": (1, 1, math.sqrt), "floor": (1, 1, math.floor), "ceil": (1, 1, math.ceil),
    "int": (1, 1, int), "float": (1, 1, float), "round": (1, 2, round),
    "log": (1, 2, math.log), "exp": (1, 1, math.exp),
    # The size of a config.json list or mapping (a classifier's labels are `len(id2label)`).
    "len": (1, 1, len),
}
_MATH_FUNCTIONS = {"sqrt", "floor", "ceil", "log", "exp"}   # need a `math.` prefix in Python
_LITERAL_WORDS = {"true": True, "True": True, "false": False, "False": False,
                  "null": None, "None": None}
_KEYWORDS = {"and", "or", "not", "if", "else", "in"}
_BINARY_PRECEDENCE = {"or": 1, "and": 2, "==": 4, "!=": 4, "<": 4, "<=": 4, ">": 4, ">=": 4,
                      "in": 4, "not in": 4, "+": 5, "-": 5, "*": 6, "/": 6, "//": 6, "%": 6, "**": 8}
_COMPARISONS = {"==", "!=", "<", "<=", ">", ">=", "in", "not in"}
MAX_LIST = 64   # items of a list literal (`rope_type in ["default", "linear"]`)
_OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
              "//": operator.floordiv, "%": operator.mod, "<": operator.lt, "<=": operator.le,
              ">": operator.gt, ">=": operator.ge}
_ZERO_DIVISION = {"/": "division", "//": "floor division", "%": "modulo"}

_TOKEN_RE = re.compile(r"""
    (?P<space>\s+)
  | (?P<num>(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\*\*|//|==|!=|<=|>=|[-+*/%<>().,\[\]])
""", re.VERBOSE)


class _Token(NamedTuple):
    kind: str       # "lit", "name", "op" (operators and keywords) or "end"
    value: object
    pos: int        # 0-based start and end; messages say 1-based columns
    end: int


def _tokenize(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos] in "'\"":
            value, end = _scan_string(text, pos)
            tokens.append(_Token("lit", value, pos, end))
            pos = end
            continue
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise ExprError(f"unexpected character {text[pos]!r} at column {pos + 1} in {text!r}")
        kind, word, end = m.lastgroup, m.group(), m.end()
        if kind == "num":
            tokens.append(_Token("lit", _number(word, pos, text), pos, end))
        elif kind == "name" and word in _LITERAL_WORDS:
            tokens.append(_Token("lit", _LITERAL_WORDS[word], pos, end))
        elif kind == "name" and word == "in" and tokens and tokens[-1][:2] == ("op", "not"):
            tokens[-1] = _Token("op", "not in", tokens[-1].pos, end)   # one operator, as in Python
        elif kind == "name" and word in _KEYWORDS:
            tokens.append(_Token("op", word, pos, end))
        elif kind != "space":
            tokens.append(_Token(kind, word, pos, end))
        pos = end
    tokens.append(_Token("end", None, len(text), len(text)))
    return tokens


def _scan_string(text: str, start: int) -> tuple[str, int]:
    quote, out, i = text[start], [], start + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\":
            nxt = text[i + 1:i + 2]
            if nxt not in ("\\", "'", '"'):
                raise ExprError(f"unsupported escape '\\{nxt}' at column {i + 1} in {text!r}")
            ch, i = nxt, i + 1
        out.append(ch)
        i += 1
    raise ExprError(f"unterminated string starting at column {start + 1} in {text!r}")


def _number(word: str, pos: int, text: str) -> int | float:
    if any(c in word for c in ".eE"):
        value = float(word)
        if not math.isfinite(value):
            raise ExprError(f"float literal {word} at column {pos + 1} is out of range in {text!r}")
        return value
    value = int(word)
    if value > INT_MAX:
        raise ExprError(f"integer literal at column {pos + 1} is over 2**63 in {text!r}")
    return value


class _Parser:
    """Recursive descent for the prefix/postfix levels, precedence climbing for binary operators.
    Precedences and associativity are Python's."""

    def __init__(self, text: str):
        self.text, self.tokens, self.i, self.depth = text, _tokenize(text), 0, 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def _at(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.value in ops

    def _next(self) -> _Token:
        self.i += 1
        return self.tokens[self.i - 1]

    def _expect(self, op: str) -> _Token:
        if not self._at(op):
            self._fail(f"'{op}'")
        return self._next()

    def _fail(self, expected: str | None = None):
        t = self.tok
        what = "end of expression" if t.kind == "end" else repr(self.text[t.pos:t.end])
        hint = f" (expected {expected})" if expected else ""
        raise ExprError(f"unexpected {what} at column {t.pos + 1} in {self.text!r}{hint}")

    @contextmanager
    def _deeper(self) -> Iterator[None]:
        # Every construct that recurses (brackets, prefix operators, `**`, `else` chains) goes
        # through here, bounding the Python stack; flat left-leaning chains are bounded by length.
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"expression nests deeper than {MAX_DEPTH} levels "
                            f"(at column {self.tok.pos + 1})")
        try:
            yield
        finally:
            self.depth -= 1

    def parse(self) -> Expr:
        e = self._expression()
        if self.tok.kind != "end":
            self._fail()
        return e

    def _expression(self) -> Expr:
        body = self._binary(1)
        if not self._at("if"):
            return body
        self._next()
        cond = self._binary(1)
        self._expect("else")
        with self._deeper():
            orelse = self._expression()
        return Expr("if", None, (body, cond, orelse))

    def _binary(self, min_prec: int) -> Expr:
        """Precedence climbing over or/and/not/comparisons/+ -/* / // %. One function rather
        than one per level keeps the Python stack shallow per bracket of nesting."""
        left = self._not(min_prec)
        compared = False
        while self.tok.kind == "op" and self.tok.value in _BINARY_PRECEDENCE:
            op, prec = self.tok.value, _BINARY_PRECEDENCE[self.tok.value]
            if op == "**" or prec < min_prec:
                break
            if compared and op in _COMPARISONS:
                raise ExprError(f"chained comparison at column {self.tok.pos + 1} in "
                                f"{self.text!r} is not supported; join the comparisons with 'and'")
            compared = op in _COMPARISONS
            self._next()
            left = Expr("binary", op, (left, self._binary(prec + 1)))   # left-associative
        return left

    def _not(self, min_prec: int) -> Expr:
        if not self._at("not") or min_prec > 3:   # like Python, `a == not b` is a syntax error
            return self._unary()
        self._next()
        with self._deeper():
            return Expr("unary", "not", (self._binary(3),))

    def _unary(self) -> Expr:
        if not self._at("-", "+"):
            return self._power()
        op = self._next().value
        with self._deeper():
            return Expr("unary", op, (self._unary(),))

    def _power(self) -> Expr:
        base = self._postfix()
        if not self._at("**"):
            return base
        self._next()
        with self._deeper():   # the exponent may be `-x`, and `**` is right-associative
            return Expr("binary", "**", (base, self._unary()))

    def _postfix(self) -> Expr:
        e = self._atom()
        while self._at(".", "["):
            if self._next().value == "[":
                with self._deeper():
                    index = self._expression()
                self._expect("]")
                e = Expr("index", None, (e, index))
                continue
            if self.tok.kind != "name":
                self._fail("a key name after '.'")
            e = Expr("attr", self._next().value, (e,))
        return e

    def _atom(self) -> Expr:
        t = self.tok
        if t.kind == "lit":
            self._next()
            return Expr("const", t.value)
        if t.kind == "name":
            self._next()
            return self._call(t) if self._at("(") else Expr("name", t.value)
        if self._at("("):
            self._next()
            with self._deeper():
                e = self._expression()
            self._expect(")")
            return e
        if self._at("["):
            return self._list()
        self._fail()

    def _list(self) -> Expr:
        """`[a, b, ...]`: a list literal (what `in` tests membership of)."""
        start = self._next()
        items: list[Expr] = []
        with self._deeper():
            while not self._at("]"):
                items.append(self._expression())
                if len(items) > MAX_LIST:
                    raise ExprError(f"list literal at column {start.pos + 1} has more than {MAX_LIST} items "
                                    f"in {self.text!r}")
                if not self._at(","):
                    break
                self._next()
        self._expect("]")
        return Expr("list", None, tuple(items))

    def _call(self, t: _Token) -> Expr:
        name = t.value
        if name not in _FUNCTIONS:
            raise ExprError(f"unknown function '{name}' at column {t.pos + 1} in {self.text!r} "
                            f"(known: {', '.join(sorted(_FUNCTIONS))})")
        self._expect("(")
        args: list[Expr] = []
        with self._deeper():
            if not self._at(")"):
                args.append(self._expression())
                while self._at(","):
                    self._next()
                    args.append(self._expression())
        self._expect(")")
        lo, hi, _ = _FUNCTIONS[name]
        if len(args) < lo or (hi is not None and len(args) > hi):
            wanted = f"at least {lo}" if hi is None else str(lo) if lo == hi else f"{lo} or {hi}"
            raise ExprError(f"{name}() takes {wanted} argument(s), got {len(args)} "
                            f"in {self.text!r}")
        return Expr("call", name, tuple(args))


def parse_expr(text: str | int | float | bool | None) -> Expr:
    """Parse spec text. YAML has already typed bare numbers, booleans and null: constants."""
    if isinstance(text, Expr):
        return text
    if text is None or isinstance(text, (bool, int, float)):
        if isinstance(text, float) and not math.isfinite(text):
            raise ExprError(f"constant {text} is not a finite number")
        if isinstance(text, int) and not isinstance(text, bool) and not INT_MIN <= text <= INT_MAX:
            raise ExprError("integer constant does not fit in 64 bits")
        return Expr("const", text)
    if not isinstance(text, str):
        raise ExprError(f"expected an expression, got a {_type_name(text)}")
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression is longer than {MAX_LENGTH} characters ({len(text)})")
    if not text.strip():
        raise ExprError("empty expression")
    return _Parser(text).parse()


class Expr:
    """An immutable expression tree node. kind is const/name/attr/index/unary/binary/call/if/list; value is the
    constant, name, key, operator or function name; a list literal has kind list and its items as args. text and names are computed bottom-up at
    construction so that deep trees never need a recursive walk for them."""

    __slots__ = ("kind", "value", "args", "prec", "text", "names")

    def __init__(self, kind: str, value: object, args: tuple[Expr, ...] = ()):
        self.kind, self.value, self.args = kind, value, tuple(args)
        self.prec = _precedence(kind, value)
        self.text = _render(self, [(a.text, a.prec) for a in self.args], None)
        names = frozenset([value]) if kind == "name" else frozenset()
        self.names = names.union(*(a.names for a in self.args))

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def is_constant(self) -> bool:
        return not self.names

    def evaluate(self, env: Mapping[str, object]) -> object:
        # Plain loops, no comprehensions: one Python frame per tree level keeps a 1000-character
        # flat chain like `1+1+...` under the interpreter's recursion limit.
        k, v, args = self.kind, self.value, self.args
        if k == "const":
            return v
        if k == "name":
            if v in env:
                return env[v]
            raise ExprError(_unknown_name(v, env))
        if k == "attr":
            return _get_key(args[0].evaluate(env), v, args[0].text)
        if k == "index":
            return _get_item(args[0].evaluate(env), args[1].evaluate(env), self)
        if k == "if":
            return args[0].evaluate(env) if args[1].evaluate(env) else args[2].evaluate(env)
        if k == "binary" and v in ("and", "or"):
            left = bool(args[0].evaluate(env))
            return left if left == (v == "or") else bool(args[1].evaluate(env))
        values = []
        for a in args:
            values.append(a.evaluate(env))
        if k == "list":
            return values
        if k == "unary":
            return _unary(v, values[0], self)
        if k == "binary":
            return _binary(v, values[0], values[1], self)
        return _call(v, values, self)

    def to_python(self, name: Callable[[str], str] = lambda n: n) -> str:
        """Python source with the same value as evaluate(); needs `import math` where it runs.
        `name(n)` must return an atom (a name, attribute or subscript), it is not parenthesised."""
        parts = []
        for a in self.args:
            parts.append((a.to_python(name), a.prec))
        return _render(self, parts, name)

    def substitute(self, values: Mapping[str, Expr]) -> Expr:
        if self.kind == "name":
            return parse_expr(values[self.value]) if self.value in values else self
        if not self.names & values.keys():
            return self
        args = []
        for a in self.args:
            args.append(a.substitute(values))
        return Expr(self.kind, self.value, tuple(args))


def _precedence(kind: str, value: object) -> int:
    if kind == "const":   # a negative number prints as `-3`, which binds like unary minus
        return 7 if _is_number(value) and repr(value).startswith("-") else 9
    if kind == "unary":
        return 3 if value == "not" else 7
    if kind == "binary":
        return _BINARY_PRECEDENCE[value]
    return 0 if kind == "if" else 9


def _wrap(part: tuple[str, int], min_prec: int) -> str:
    return part[0] if part[1] >= min_prec else f"({part[0]})"


def _render(e: Expr, parts: list[tuple[str, int]], name: Callable[[str], str] | None) -> str:
    """Source text of `e` from its children's text; Python source when `name` is given."""
    k, v, python = e.kind, e.value, name is not None
    if k == "const":
        return repr(v) if python else _literal(v)
    if k == "name":
        return name(v) if python else v
    if k == "attr":   # `3.x` would lex as the float `3.`
        base = _wrap(parts[0], 10 if e.args[0].kind == "const" else 9)
        return f"{base}[{v!r}]" if python else f"{base}.{v}"
    if k == "unary":
        return ("not " + _wrap(parts[0], 3)) if v == "not" else v + _wrap(parts[0], 7)
    if k == "index":
        return f"{_wrap(parts[0], 10 if e.args[0].kind == 'const' else 9)}[{parts[1][0]}]"
    if k == "binary":
        if python and v in ("and", "or"):   # ours return bools, Python's return an operand
            return f"bool({parts[0][0]}) {v} bool({parts[1][0]})"
        p = _BINARY_PRECEDENCE[v]
        lo, hi = (9, 7) if v == "**" else (5, 5) if p == 4 else (p, p + 1)
        return f"{_wrap(parts[0], lo)} {v} {_wrap(parts[1], hi)}"
    if k == "call":
        fn = f"math.{v}" if python and v in _MATH_FUNCTIONS else v
        return f"{fn}({', '.join(p[0] for p in parts)})"
    if k == "list":
        return f"[{', '.join(p[0] for p in parts)}]"
    return f"{_wrap(parts[0], 1)} if {_wrap(parts[1], 1)} else {_wrap(parts[2], 0)}"


def _literal(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(v)


# --- evaluation -----------------------------------------------------------------------------

def _is_number(x: object) -> bool:
    return isinstance(x, (int, float))   # bool included, as in Python


def _type_name(x: object) -> str:
    names = {bool: "bool", int: "int", float: "float", str: "string", type(None): "null"}
    return names.get(type(x), type(x).__name__)


def _unknown_name(n: str, env: Mapping[str, object]) -> str:
    known = sorted(str(k) for k in env)
    shown = ", ".join(known[:10]) + (f", ... ({len(known) - 10} more)" if len(known) > 10 else "")
    return f"unknown name '{n}' (available: {shown or 'none'})"


def _get_key(base: object, key: str, base_text: str) -> object:
    if not isinstance(base, Mapping):
        raise ExprError(f"cannot read '.{key}' of {base_text!r}: it is a {_type_name(base)}, "
                        f"not a mapping")
    if key not in base:
        keys = ", ".join(sorted(str(k) for k in base)[:10]) or "none"
        raise ExprError(f"{base_text!r} has no key '{key}' (keys: {keys})")
    return base[key]


def _get_item(base: object, index: object, e: Expr) -> object:
    """`list[i]` (a per-layer entry such as layer_types[layer]); Python's rules, negative i included."""
    if not isinstance(base, (list, tuple)):
        raise ExprError(f"cannot index {e.args[0].text!r}: it is a {_type_name(base)}, not a list")
    if not isinstance(index, int) or isinstance(index, bool):
        raise ExprError(f"list index {e.args[1].text!r} in {e.text!r} is a {_type_name(index)}, not an int")
    if not -len(base) <= index < len(base):
        raise ExprError(f"index {index} is out of range for {e.args[0].text!r} of length {len(base)} in {e.text!r}")
    return base[index]


def _checked(x: object, e: Expr) -> object:
    if isinstance(x, int) and not isinstance(x, bool) and not INT_MIN <= x <= INT_MAX:
        raise ExprError(f"integer result of {e.text!r} is over 2**63 (does not fit in 64 bits)")
    if isinstance(x, float) and not math.isfinite(x):
        raise ExprError(f"float overflow: {e.text!r} is not a finite number")
    return x


def _need_numbers(op: str, values: list[object], e: Expr) -> None:
    if not all(_is_number(x) for x in values):
        types = " and ".join(_type_name(x) for x in values)
        raise ExprError(f"unsupported operand type(s) for '{op}': {types} in {e.text!r}")


def _unary(op: str, x: object, e: Expr) -> object:
    if op == "not":
        return not x
    _need_numbers(op, [x], e)
    return _checked(-x if op == "-" else +x, e)


def _binary(op: str, a: object, b: object, e: Expr) -> object:
    if op in ("==", "!="):   # the only operators strings and null take part in
        return (a == b) == (op == "==")
    if op in ("in", "not in"):
        if not isinstance(b, (list, tuple, dict, str)):
            raise ExprError(f"'{op}' needs a list, mapping or string on its right, got {_type_name(b)} in {e.text!r}")
        if isinstance(b, str) and not isinstance(a, str):
            raise ExprError(f"'{op}' a string needs a string on its left, got {_type_name(a)} in {e.text!r}")
        return (a in b) == (op == "in")
    _need_numbers(op, [a, b], e)
    if op in _ZERO_DIVISION and b == 0:
        raise ExprError(f"{_ZERO_DIVISION[op]} by zero in {e.text!r}")
    try:
        result = _power(a, b, e) if op == "**" else _OPERATORS[op](a, b)
    except OverflowError:
        raise ExprError(f"float overflow in {e.text!r}") from None
    return _checked(result, e)


def _power(a: int | float, b: int | float, e: Expr) -> int | float:
    if a == 0 and b < 0:
        raise ExprError(f"zero raised to a negative power in {e.text!r}")
    if isinstance(a, int) and isinstance(b, int):
        # |a| >= 2**(bit_length-1), so this bounds the result from below without computing it.
        if b > 0 and abs(a) > 1 and (abs(a).bit_length() - 1) * b > 64:
            raise ExprError(f"{e.text!r} is too large: the integer result would be over 2**63")
        return a ** b
    if a < 0 and not float(b).is_integer():   # Python would return a complex number
        raise ExprError(f"negative number raised to a fractional power in {e.text!r}")
    return a ** b


def _call(fname: str, values: list[object], e: Expr) -> object:
    if fname == "len":
        if not isinstance(values[0], (list, dict, str)):
            raise ExprError(f"len() needs a list, mapping or string, got {_type_name(values[0])} in {e.text!r}")
        return len(values[0])
    _need_numbers(f"{fname}()", values, e)
    if fname == "round" and len(values) == 2 and not -100 <= values[1] <= 100:
        raise ExprError(f"round() digits must be between -100 and 100 in {e.text!r}")  # 10**n
    try:
        result = _FUNCTIONS[fname][2](*values)
    except (ValueError, OverflowError, ZeroDivisionError, TypeError) as err:
        raise ExprError(f"{fname}() failed in {e.text!r}: {err}") from None
    return _checked(result, e)
