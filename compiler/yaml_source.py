"""Safe YAML loading that remembers where every value came from.

Specs are untrusted input, so only plain data is ever built: str, int, float, bool, None, dict
and list. Any other tag is refused rather than constructed (nothing in a spec can run code),
anchors and aliases are refused before composing (alias bombs cost nothing to write), and
duplicate keys are errors instead of a silent "last one wins". Every value keeps its line and
column so later passes can point at the exact spot of a mistake.
"""
from __future__ import annotations

import os
import re

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver, Resolver
from yaml.scanner import Scanner

from runtime.files import read_regular

from .errors import Problem, SpecError

PathT = tuple[str | int, ...]
Mark = tuple[int, int]

MAX_BYTES = 1_000_000   # a spec file; the largest shipped one is under 10 kB
MAX_DEPTH = 100  # far beyond any real spec; keeps the recursive composer and builder safe

_TAG = "tag:yaml.org,2002:"
_SCALARS = ("str", "int", "float", "bool", "null")


class _Resolver(BaseResolver):
    """YAML 1.1 implicit typing, but only for the types we build.

    Dropping the timestamp, merge and value resolvers keeps `2024-01-01`, `<<` and `=` plain
    strings instead of turning them into tags we would then have to refuse.
    """


_Resolver.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in rules if tag[len(_TAG):] in _SCALARS]
    for first, rules in Resolver.yaml_implicit_resolvers.items()
}
# YAML 1.1 floats need a dot and a signed exponent, so `1e-6` would be a str; authors write eps
# that way and mean a number.
_Resolver.add_implicit_resolver(
    _TAG + "float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)

try:  # libyaml is much faster on large files; both give the same events and nodes
    from yaml.cyaml import CParser

    class _Loader(CParser, _Resolver):
        def __init__(self, stream):
            CParser.__init__(self, stream)
            _Resolver.__init__(self)

except ImportError:  # pragma: no cover - depends on how PyYAML was built
    class _Loader(Reader, Scanner, Parser, Composer, _Resolver):  # type: ignore[no-redef]
        def __init__(self, stream):
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)
            _Resolver.__init__(self)


_constructor = SafeConstructor()  # only its scalar converters are used; they need no state
_CONVERT = {
    "str": _constructor.construct_yaml_str,
    "int": _constructor.construct_yaml_int,
    "float": _constructor.construct_yaml_float,
    "bool": _constructor.construct_yaml_bool,
    "null": _constructor.construct_yaml_null,
}


def format_path(path: PathT) -> str:
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class SourceMap:
    """Where each value (and each mapping key) of a loaded document starts, by YAML path."""

    def __init__(self, file: str | None, marks: dict | None = None,
                 key_marks: dict | None = None, prefix: PathT = (), files: dict | None = None):
        self.file = file
        self._marks: dict[PathT, Mark] = marks if marks is not None else {}
        self._key_marks: dict[PathT, Mark] = key_marks if key_marks is not None else {}
        self._prefix = tuple(prefix)
        # A spec resolved through `extends` mixes values of several files: path -> the file a value
        # came from, where it is not `file`.
        self._files: dict[PathT, str] = files if files is not None else {}

    def locate(self, path: PathT) -> tuple[str | None, Mark | None]:
        """The file and position of the closest thing the user actually wrote at `path`."""
        full = self._prefix + tuple(path)
        # Later passes also invent paths (e.g. a parsed expression's parts).
        for n in range(len(full), -1, -1):
            if full[:n] in self._marks:
                return self._files.get(full[:n], self.file), self._marks[full[:n]]
        return self.file, None

    def mark(self, path: PathT) -> Mark | None:
        return self.locate(path)[1]

    def file_of(self, path: PathT) -> str | None:
        return self.locate(path)[0]

    def key_mark(self, path: PathT) -> Mark | None:
        return self._key_marks.get(self._prefix + tuple(path)) or self.mark(path)

    def problem(self, path: PathT, message: str) -> Problem:
        file, (line, column) = self.locate(path)[0], self.mark(path) or (None, None)
        # The path is the full one even in a sub view: the user reads it against the file.
        shown = format_path(self._prefix + tuple(path))
        return Problem(message, file, line, column, shown or None)

    def sub(self, prefix: PathT) -> "SourceMap":
        return SourceMap(self.file, self._marks, self._key_marks, self._prefix + tuple(prefix), self._files)

    def exact(self, path: PathT) -> tuple[Mark | None, Mark | None]:
        """(value mark, key mark) recorded for exactly `path`, without falling back to a parent."""
        full = self._prefix + tuple(path)
        return self._marks.get(full), self._key_marks.get(full)


def _pos(mark) -> Mark:
    return mark.line + 1, mark.column + 1


def _at(file: str, mark, message: str, path: PathT = ()) -> Problem:
    line, column = _pos(mark)
    return Problem(message, file, line, column, format_path(path) or None)


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


class _Builder:
    """Turns a composed node tree into plain data, collecting every problem on the way."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []
        self.marks: dict[PathT, Mark] = {}
        self.key_marks: dict[PathT, Mark] = {}

    def fail(self, node, message: str, path: PathT) -> None:
        self.problems.append(_at(self.file, node.start_mark, message, path))

    def build(self, node, path: PathT):
        self.marks[path] = _pos(node.start_mark)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        kind = "map" if isinstance(node, MappingNode) else "seq"
        if node.tag != _TAG + kind:
            self.fail(node, f"tag {_show_tag(node.tag)!r} is not allowed (only plain YAML data)", path)
        if isinstance(node, SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        out: dict = {}
        first_line: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.fail(key_node, "mapping keys must be plain scalars, not a mapping or list", path)
                continue
            key = self.scalar(key_node, path)
            if not isinstance(key, str):
                # `1:`, `true:`, `null:` are read as a number, a bool, null: every key of a spec is a
                # name, and later passes compare and sort keys as text
                self.fail(key_node, f"mapping key {key_node.value!r} is read as {type(key).__name__}, "
                                    f"but keys are names: quote it ('{key_node.value}')", path)
                continue
            if key in first_line:
                self.fail(key_node, f"duplicate key {key!r} (first at line {first_line[key]})",
                          path + (key,))
                continue
            first_line[key] = key_node.start_mark.line + 1
            self.key_marks[path + (key,)] = _pos(key_node.start_mark)
            out[key] = self.build(value_node, path + (key,))
        return out

    def scalar(self, node: ScalarNode, path: PathT):
        kind = node.tag[len(_TAG):] if node.tag.startswith(_TAG) else None
        if kind not in _CONVERT:
            self.fail(node, f"tag {_show_tag(node.tag)!r} is not allowed (only plain YAML data)", path)
            return node.value  # keep going so every problem of the file is reported
        try:
            return _CONVERT[kind](node)
        except (ValueError, KeyError, IndexError, yaml.YAMLError):
            self.fail(node, f"{node.value!r} is not a valid !!{kind}", path)
            return node.value


def _check_events(text: str, file: str) -> None:
    """Refuse what must never reach the composer: aliases, extra documents, absurd nesting."""
    depth = documents = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            raise SpecError(_at(file, event.start_mark,
                                f"aliases (*{event.anchor}) are not allowed in specs"))
        if getattr(event, "anchor", None):
            raise SpecError(_at(file, event.start_mark,
                                f"anchors (&{event.anchor}) are not allowed in specs"))
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise SpecError(_at(file, event.start_mark,
                                    "expected one YAML document, found a second one"))
        elif isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError(_at(file, event.start_mark,
                                    f"nested more than {MAX_DEPTH} levels deep"))
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _syntax_problem(file: str, err: yaml.YAMLError) -> Problem:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or problem is None:
        return Problem(f"YAML error: {err}", file)
    message = f"YAML syntax error: {problem}"
    if err.context:
        message += f" ({err.context}"
        message += f" at line {err.context_mark.line + 1})" if err.context_mark else ")"
    return _at(file, mark, message)


def read_source(file: str | os.PathLike, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a spec file: a regular file of at most `max_bytes` (never a FIFO or a device)."""
    try:
        return read_regular(file, max_bytes)
    except FileNotFoundError:
        raise SpecError(Problem("cannot read the spec: file not found", os.fspath(file))) from None
    except OSError as err:
        raise SpecError(Problem(f"cannot read the spec: {err.strerror or err}", os.fspath(file))) from None


def _read(file: str, max_bytes: int) -> str:
    raw = read_source(file, max_bytes)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise SpecError(Problem(f"not valid UTF-8 (byte offset {err.start})", file, line)) from None


def load_yaml(path: str | os.PathLike, text: str | None = None,
              max_bytes: int = MAX_BYTES) -> tuple[object, SourceMap]:
    file = os.fspath(path)
    if text is None:
        text = _read(file, max_bytes)
    elif len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise SpecError(Problem(f"file is larger than {max_bytes} bytes", file))
    text = text.removeprefix("\ufeff")
    try:
        _check_events(text, file)
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise SpecError(_syntax_problem(file, err)) from None
    if root is None:
        return None, SourceMap(file)
    builder = _Builder(file)
    data = builder.build(root, ())
    if builder.problems:
        raise SpecError(builder.problems)
    return data, SourceMap(file, builder.marks, builder.key_marks)
