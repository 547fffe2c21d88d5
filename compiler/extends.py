"""Spec inheritance: `extends: llama` and a delta, resolved into one plain spec before validation.

A child states only what differs from its parent; the result is an ordinary spec (no `extends`)
whose every value remembers the file and line it came from, so a mistake is reported against the
child or the parent, wherever it was written. The delta language:

  spec, name          required in the child; `name` is the child's own.
  doc                 replaced when given, inherited otherwise.
  matches             never inherited: a child recognises only the checkpoints it names, so
                      `from_pretrained` cannot pick it for the parent's checkpoints by accident.
  config.NAME         a new entry is added; an existing one is merged field by field
                      (`{default: 1}` changes only the default; a parent's short form
                      `vocab_size: int` counts as `{hf: vocab_size, type: int}`); a short form in
                      the child restates the entry; `{remove: true}` removes it.
  checks[]            `{that, else}` is appended, or replaces the message of the parent check
                      with the same `that`; `{remove: THAT}` removes the parent check.
  blocks.NAME / model a new block is added whole; `{remove: true}` removes one; an existing one is
                      merged: `doc`, `options`, `outputs`, `graph`, `loss` and `last_hidden` are replaced
                      when given (inherited otherwise), `inputs` and
                      `params` merged by name (a param that names its kind, e.g. `linear:`, is
                      replaced whole, otherwise its fields are merged: `{bias: true}`;
                      `{remove: true}` removes it), and `edits` changes single graph lines:
                        - {update: T, set: {field: value}, unset: [field]}
                        - {replace: T, with: LINE or [LINES]}
                        - {insert: LINE or [LINES], after: T}   (or before: T)
                        - {remove: T}
                      T names a line by its `label:` (a name the line carries, unique in its
                      graph, which stays put when the parent gains lines: the stable way), or
                      by an output name. Values may be rebound, so when several lines bind the
                      name, `name#n` is the n-th of them (from 1, top to bottom); a bare name
                      that binds more than once is an error listing the choices.
                      Edits apply in order, each to the graph as the edits before it left it.
  heads.NAME          merged like blocks: a new head is added (after the parent's, whose order
                      is kept, so the parent's default head stays the default); `{remove: true}`
                      removes one; an existing one is merged as a block is (`architectures`,
                      like `outputs`, is replaced when given; `params`, `graph`, `edits` as above).
  init                replaced whole when given, inherited otherwise.
  weights[]           a rule whose `from` equals a parent rule's replaces it in place; other rules
                      go before the parent's (rules match first-come, so the child's more specific
                      rules win); `{remove: FROM}` removes the parent rule with that `from`.
                      `weights: {replace: [RULES]}` (and `checks: {replace: [...]}`) drops the
                      parent's list: a child whose checkpoints name every tensor its own way.

A bare `extends: name` is `name.yaml` next to the child, or else the shipped specs/name.yaml;
anything else is a path relative to the child. The parent must lie under the child's directory or
the package's specs/ directory.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.errors import Problem, SpecError
from compiler.ops.params import PARAM_KINDS
from compiler.shorthand import expand_config_entry
from compiler.yaml_source import Mark, PathT, SourceMap, format_path, load_yaml

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
MAX_CHAIN = 16
MAX_EXTENDS = 1024   # characters of an `extends` value: a name or a short relative path
_TARGET = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:#\s*([0-9]+))?\s*$")
_EDIT_KINDS = ("update", "replace", "insert", "remove")


@dataclass
class Located:
    """A value of a spec with where it was written. Mappings and lists hold Located children."""
    value: Any
    file: str | None
    mark: Mark | None
    key_mark: Mark | None = None

    def plain(self) -> Any:
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value

    def get(self, key: str, default=None):
        return self.value.get(key, default) if isinstance(self.value, dict) else default


def wrap(data: Any, sources: SourceMap, path: PathT = ()) -> Located:
    mark, key_mark = sources.exact(path)
    if isinstance(data, dict):
        value = {k: wrap(v, sources, path + (k,)) for k, v in data.items()}
    elif isinstance(data, list):
        value = [wrap(v, sources, path + (i,)) for i, v in enumerate(data)]
    else:
        value = data
    return Located(value, sources.file, mark, key_mark)


def flatten(root: Located, file: str | None) -> tuple[Any, SourceMap]:
    """Plain data and a SourceMap that knows, per path, which file each value came from."""
    marks, key_marks, files = {}, {}, {}

    def walk(loc: Located, path: PathT):
        if loc.mark is not None:
            marks[path] = loc.mark
            if loc.file != file:
                files[path] = loc.file
        if loc.key_mark is not None:
            key_marks[path] = loc.key_mark
        if isinstance(loc.value, dict):
            return {k: walk(v, path + (k,)) for k, v in loc.value.items()}
        if isinstance(loc.value, list):
            return [walk(v, path + (i,)) for i, v in enumerate(loc.value)]
        return loc.value

    data = walk(root, ())
    return data, SourceMap(file, marks, key_marks, files=files)


def _problem(loc: Located | None, message: str, path: PathT = (), fallback: Located | None = None) -> Problem:
    where = loc if loc is not None and loc.mark is not None else fallback
    file = where.file if where else None
    line, column = where.mark if where and where.mark else (None, None)
    return Problem(message, file, line, column, format_path(path) or None)


# -- finding parents ------------------------------------------------------------------------------
def parent_path(value: Any, child: Path, at: Located) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(_problem(at, "extends must be a spec name (e.g. llama) or a path to a .yaml file",
                                 ("extends",)))
    value = value.strip()
    if "\0" in value or len(value) > MAX_EXTENDS or any(len(part) > 255 for part in value.split("/")):
        raise SpecError(_problem(at, f"extends {value[:80]!r}{'...' if len(value) > 80 else ''} is not a spec name "
                                     f"or path (a NUL byte, a name over 255 or a path over {MAX_EXTENDS} characters)",
                                 ("extends",)))
    bare = "/" not in value and os.sep not in value and not value.endswith((".yaml", ".yml"))
    # a bare name is a spec next to the child, else a shipped one: a user's own folder extends llama
    candidates = [child.parent / f"{value}.yaml", SPECS_DIR / f"{value}.yaml"] if bare else [child.parent / value]
    allowed = [Path(os.path.realpath(child.parent)), Path(os.path.realpath(SPECS_DIR))]
    try:
        for candidate in candidates:
            real = Path(os.path.realpath(candidate))
            if not any(real == d or d in real.parents for d in allowed):
                raise SpecError(_problem(at, f"extends '{value}' points outside the allowed directories "
                                             f"({', '.join(str(d) for d in allowed)})", ("extends",)))
            if real.is_file():
                return real
    except OSError as err:
        raise SpecError(_problem(at, f"extends '{value}': cannot look it up: {err.strerror or err}",
                                 ("extends",))) from None
    looked = " and ".join(str(c) for c in candidates)
    shipped = ", ".join(sorted(p.stem for p in SPECS_DIR.glob("*.yaml")))
    raise SpecError(_problem(at, f"extends '{value}': no such spec (looked for {looked}"
                                 + (f"; the shipped specs are {shipped})" if bare else ")"), ("extends",)))


def source_chain(path: str | os.PathLike, text: str | None = None) -> list[Path]:
    """The spec file and every ancestor it extends, child first. Cheap: nothing is validated."""
    chain: list[Path] = []
    current, current_text = Path(path), text
    while True:
        chain.append(current)
        data, sources = load_yaml(current, current_text)
        if not isinstance(data, dict) or "extends" not in data:
            return chain
        at = wrap(data, sources)
        nxt = parent_path(data["extends"], current, at.value["extends"])
        _check_cycle(chain, nxt, at.value["extends"])
        current, current_text = nxt, None


def _check_cycle(chain: list[Path], nxt: Path, at: Located) -> None:
    seen = [Path(os.path.realpath(p)) for p in chain]
    if nxt in seen:
        cycle = " -> ".join(p.name for p in [*seen[seen.index(nxt):], nxt])
        raise SpecError(_problem(at, f"extends forms a cycle: {cycle}", ("extends",)))
    if len(chain) >= MAX_CHAIN:
        raise SpecError(_problem(at, f"extends chain is longer than {MAX_CHAIN} specs", ("extends",)))


# -- resolution -----------------------------------------------------------------------------------
def load_resolved(path: str | os.PathLike, text: str | None = None) -> tuple[Any, SourceMap]:
    """`load_yaml`, with `extends` resolved: plain data of the full spec and its positions."""
    data, sources = load_yaml(path, text)
    if not isinstance(data, dict) or "extends" not in data:
        return data, sources
    root = _resolve(Path(path), data, sources, [Path(path)])
    return flatten(root, sources.file)


def _resolve(path: Path, data: Any, sources: SourceMap, chain: list[Path]) -> Located:
    child = wrap(data, sources)
    if not isinstance(data, dict) or "extends" not in data:
        return child
    ext = child.value["extends"]
    parent_file = parent_path(data["extends"], path, ext)
    _check_cycle(chain, parent_file, ext)
    parent_data, parent_sources = load_yaml(parent_file)
    parent = _resolve(parent_file, parent_data, parent_sources, chain + [parent_file])
    if not isinstance(parent.value, dict):
        raise SpecError(_problem(ext, f"extends '{data['extends']}': the parent is not a spec mapping", ("extends",)))
    merger = _Merger()
    merged = merger.spec(parent, child)
    if merger.problems:
        raise SpecError(merger.problems)
    return merged


def _is_removal(loc: Located) -> bool:
    return isinstance(loc.value, dict) and "remove" in loc.value


class _Merger:
    def __init__(self):
        self.problems: list[Problem] = []

    def fail(self, loc: Located | None, path: PathT, message: str, fallback: Located | None = None) -> None:
        self.problems.append(_problem(loc, message, path, fallback))

    def spec(self, parent: Located, child: Located) -> Located:
        out = dict(parent.value)
        out.pop("matches", None)
        if "name" not in child.value:
            self.fail(child, (), "a spec that extends another needs its own name")
        for key, loc in child.value.items():
            if key == "extends":
                continue
            if key == "config":
                out[key] = self.named(out.get(key), loc, (key,), "config entry", self.config_entry)
            elif key == "checks":
                out[key] = self.checks(out.get(key), loc)
            elif key == "blocks":
                out[key] = self.named(out.get(key), loc, (key,), "block", self.block, self.new_block)
            elif key == "model":
                out[key] = self.block(out[key], loc, (key,)) if key in out else loc
            elif key == "heads":
                out[key] = self.named(out.get(key), loc, (key,), "head", self.block, self.new_block)
            elif key == "weights":
                out[key] = self.weights(out.get(key), loc)
            else:
                out[key] = loc    # spec, name, doc, matches and anything the schema will judge
        order = ["spec", "name", "doc", "matches", "base_prefix", "config", "checks", "blocks", "model", "heads",
                 "weights"]
        out = {k: out[k] for k in sorted(out, key=lambda k: order.index(k) if k in order else len(order))}
        return Located(out, parent.file, parent.mark, parent.key_mark)

    # -- mappings of named entries -----------------------------------------------------------------
    def named(self, parent: Located | None, child: Located, path: PathT, what: str, merge, new=None) -> Located:
        if parent is None or not isinstance(parent.value, dict) or not isinstance(child.value, dict):
            return child
        out = dict(parent.value)
        for name, loc in child.value.items():
            if _is_removal(loc):
                if set(loc.value) != {"remove"}:
                    self.fail(loc, path + (name,), f"a {what} removal is written {{remove: true}} alone")
                elif loc.value["remove"].value is not True:
                    self.fail(loc.value["remove"], path + (name, "remove"), "remove must be true")
                elif name not in out:
                    self.fail(loc, path + (name,), f"cannot remove {what} '{name}': the parent has none")
                else:
                    del out[name]
            elif name in out:
                out[name] = merge(out[name], loc, path + (name,))
            else:
                out[name] = new(loc, path + (name,)) if new else loc
        return Located(out, parent.file, parent.mark, parent.key_mark)

    @staticmethod
    def fields(parent: Located, child: Located) -> Located:
        if not isinstance(parent.value, dict) or not isinstance(child.value, dict):
            return child
        return Located({**parent.value, **child.value}, parent.file, parent.mark, child.key_mark or parent.key_mark)

    def config_entry(self, parent: Located, child: Located, path: PathT) -> Located:
        # The parent's short form (`vocab_size: int`) in its long form first, so a child's `{default: 1}`
        # changes only the default and never turns a read entry into a derived one.
        long = expand_config_entry(path[-1], parent.plain())
        if isinstance(long, dict) and isinstance(parent.value, (str, dict)):
            fields = parent.value if isinstance(parent.value, dict) else {}
            parent = Located({k: fields.get(k) or Located(v, parent.file, parent.mark) for k, v in long.items()},
                             parent.file, parent.mark, parent.key_mark)
        return self.fields(parent, child)

    def param(self, parent: Located, child: Located, path: PathT) -> Located:
        kinds = [*PARAM_KINDS, "block"]
        if isinstance(child.value, dict) and any(k in child.value for k in kinds):
            return child    # restating the kind restates the param
        return self.fields(parent, child)

    def new_block(self, child: Located, path: PathT) -> Located:
        if isinstance(child.value, dict) and "edits" in child.value:
            what = "head" if path[0] == "heads" else "block"
            self.fail(child.value["edits"], path + ("edits",),
                      f"{what} '{path[-1]}' is new in this spec, so there is no graph to edit; write its graph")
        return child

    def block(self, parent: Located, child: Located, path: PathT) -> Located:
        if not isinstance(parent.value, dict) or not isinstance(child.value, dict):
            return child
        out = dict(parent.value)
        if "graph" in child.value and "edits" in child.value:
            self.fail(child.value["edits"], path + ("edits",), "give either graph (a new graph) or edits, not both")
        for key, loc in child.value.items():
            if key == "inputs":
                out[key] = self.named(out.get(key), loc, path + (key,), "input", lambda p, c, _: c)
            elif key == "params":
                out[key] = self.named(out.get(key), loc, path + (key,), "param", self.param)
            elif key == "edits":
                if "graph" not in child.value:
                    out["graph"] = self.edits(out.get("graph"), loc, path)
            else:
                out[key] = loc
        return Located(out, parent.file, parent.mark, parent.key_mark)

    # -- graph edits ---------------------------------------------------------------------------------
    def edits(self, graph: Located | None, edits: Located, path: PathT) -> Located | None:
        if graph is None or not isinstance(graph.value, list):
            return graph
        if not isinstance(edits.value, list):
            self.fail(edits, path + ("edits",), "edits must be a list of {update|replace|insert|remove: ...}")
            return graph
        lines = list(graph.value)
        for i, edit in enumerate(edits.value):
            epath = path + ("edits", i)
            if not isinstance(edit.value, dict):
                self.fail(edit, epath, "an edit is a mapping: {update|replace|insert|remove: ...}")
                continue
            kinds = [k for k in _EDIT_KINDS if k in edit.value]
            if len(kinds) != 1:
                self.fail(edit, epath, f"an edit names exactly one of {', '.join(_EDIT_KINDS)}; this one names "
                                       f"{', '.join(kinds) or 'none'}")
                continue
            kind = kinds[0]
            allowed = {"update": {"update", "set", "unset"}, "replace": {"replace", "with"},
                       "insert": {"insert", "after", "before"}, "remove": {"remove"}}[kind]
            extra = sorted(set(edit.value) - allowed)
            if extra:
                self.fail(edit.value[extra[0]], epath + (extra[0],),
                          f"unexpected field(s) {', '.join(map(repr, extra))} in a {kind} edit; expected: "
                          f"{', '.join(sorted(allowed))}")
                continue
            getattr(self, f"edit_{kind}")(lines, edit, epath)
        return Located(lines, graph.file, graph.mark, graph.key_mark)

    def target(self, lines: list[Located], loc: Located, path: PathT) -> int | None:
        m = _TARGET.match(loc.value) if isinstance(loc.value, str) else None
        if m is None:
            self.fail(loc, path, f"a line is named by an output name, or name#n for the n-th line binding it; "
                                 f"got {loc.value!r}")
            return None
        name, nth = m.group(1), m.group(2)
        labelled = [i for i, line in enumerate(lines) if _label(line) == name]
        if len(labelled) > 1:
            self.fail(loc, path, f"label '{name}' is on {len(labelled)} lines ("
                      + ", ".join(f"{_op(lines[i])}{_at(lines[i])}" for i in labelled) + "); labels name one line")
            return None
        if labelled and nth is None:
            return labelled[0]
        hits = [i for i, line in enumerate(lines) if name in _outputs(line)]
        if not hits:
            bound = sorted({o for line in lines for o in _outputs(line)})
            labels = sorted({_label(line) for line in lines} - {None})
            self.fail(loc, path, f"no line of the graph binds '{name}' (it binds: {', '.join(bound)})"
                                 + (f" nor is labelled so (labels: {', '.join(labels)})" if labels else ""))
            return None
        if nth is None:
            if len(hits) > 1:
                choices = ", ".join(f"{name}#{k + 1} ({_op(lines[i])}{_at(lines[i])})" for k, i in enumerate(hits))
                self.fail(loc, path, f"'{name}' is bound by {len(hits)} lines; say which: {choices}")
                return None
            return hits[0]
        n = int(nth)
        if not 1 <= n <= len(hits):
            self.fail(loc, path, f"'{name}#{n}': only {len(hits)} line(s) bind '{name}'")
            return None
        return hits[n - 1]

    def new_lines(self, loc: Located, path: PathT) -> list[Located] | None:
        items = loc.value if isinstance(loc.value, list) else [loc]
        for j, item in enumerate(items):
            if not (isinstance(item.value, dict) and len(item.value) == 1):
                at = path + ((j,) if isinstance(loc.value, list) else ())
                self.fail(item, at, "a graph line is a one-key mapping: {out: {op: ..., ...}}")
                return None
        return list(items)

    def edit_update(self, lines, edit, path) -> None:
        i = self.target(lines, edit.value["update"], path + ("update",))
        if i is None:
            return
        sets, unsets = edit.value.get("set"), edit.value.get("unset")
        if sets is None and unsets is None:
            self.fail(edit, path, "an update edit needs set: {field: value} and/or unset: [field]")
            return
        (outs, body), = lines[i].value.items()
        if not isinstance(body.value, dict):
            return
        fields = dict(body.value)
        if sets is not None:
            if not isinstance(sets.value, dict):
                self.fail(sets, path + ("set",), "set is a mapping of field: value")
                return
            fields.update(sets.value)
        if unsets is not None:
            names = unsets.value if isinstance(unsets.value, list) else [unsets]
            for j, name in enumerate(names):
                if name.value == "op" or name.value not in fields:
                    self.fail(name, path + ("unset", j), f"cannot unset '{name.value}': the line has "
                              + ("to keep its op" if name.value == "op" else "no such field"))
                    continue
                del fields[name.value]
        new_body = Located(fields, body.file, body.mark, body.key_mark)
        lines[i] = Located({outs: new_body}, lines[i].file, lines[i].mark, lines[i].key_mark)

    def edit_replace(self, lines, edit, path) -> None:
        i = self.target(lines, edit.value["replace"], path + ("replace",))
        if "with" not in edit.value:
            self.fail(edit, path, "a replace edit needs with: LINE or [LINES]")
            return
        new = self.new_lines(edit.value["with"], path + ("with",))
        if i is not None and new is not None:
            lines[i:i + 1] = new

    def edit_insert(self, lines, edit, path) -> None:
        anchors = [k for k in ("after", "before") if k in edit.value]
        if len(anchors) != 1:
            self.fail(edit, path, "an insert edit needs exactly one anchor: after: NAME or before: NAME")
            return
        i = self.target(lines, edit.value[anchors[0]], path + (anchors[0],))
        new = self.new_lines(edit.value["insert"], path + ("insert",))
        if i is not None and new is not None:
            at = i + 1 if anchors[0] == "after" else i
            lines[at:at] = new

    def edit_remove(self, lines, edit, path) -> None:
        i = self.target(lines, edit.value["remove"], path + ("remove",))
        if i is not None:
            del lines[i]

    # -- lists identified by content ---------------------------------------------------------------
    def checks(self, parent: Located | None, child: Located) -> Located:
        return self.keyed_list(parent, child, "checks", "that", "check", _norm_expr, new_first=False)

    def weights(self, parent: Located | None, child: Located) -> Located:
        # The first matching rule wins, so a child's new rules go before the parent's.
        return self.keyed_list(parent, child, "weights", "from", "weight rule", _norm_names, new_first=True)

    def keyed_list(self, parent: Located | None, child: Located, section: str, key: str, what: str, norm,
                   new_first: bool) -> Located:
        """A list whose items are identified by one field: same key replaces, `{remove: KEY}` removes,
        a new key is added; `{replace: [...]}` instead of a list drops the parent's items."""
        if isinstance(child.value, dict) and set(child.value) == {"replace"}:
            return child.value["replace"]
        if parent is None or not isinstance(parent.value, list) or not isinstance(child.value, list):
            return child
        out = list(parent.value)
        added = []
        for i, item in enumerate(child.value):
            if _is_removal(item):
                j = self.find(out, key, item.value["remove"], (section, i, "remove"), what, norm)
                if j is not None:
                    del out[j]
                continue
            want = item.get(key)
            j = next((k for k, old in enumerate(out) if want is not None and norm(old.get(key)) == norm(want)), None)
            if j is None:
                (added if new_first else out).append(item)
            else:
                out[j] = item
        return Located(added + out, parent.file, parent.mark, parent.key_mark)

    def find(self, items: list[Located], key: str, want: Located, path: PathT, what: str, norm) -> int | None:
        for k, item in enumerate(items):
            if item.get(key) is not None and norm(item.get(key)) == norm(want):
                return k
        have = "; ".join(repr(item.get(key).plain()) for item in items if item.get(key) is not None)
        self.fail(want, path, f"no parent {what} has {key}: {want.plain()!r} (the parent has: {have})")
        return None


def _outputs(line: Located) -> list[str]:
    if isinstance(line.value, dict) and len(line.value) == 1:
        (outs,) = line.value
        return [o.strip() for o in str(outs).split(",")]
    return []


def _label(line: Located) -> str | None:
    if isinstance(line.value, dict) and len(line.value) == 1:
        (body,) = line.value.values()
        label = body.get("label")
        return label.value if label is not None and isinstance(label.value, str) else None
    return None


def _op(line: Located) -> str:
    (body,) = line.value.values()
    return str(body.get("op").value) if body.get("op") is not None else "?"


def _at(line: Located) -> str:
    return f" at {os.path.basename(line.file)}:{line.mark[0]}" if line.file and line.mark else ""


def _norm_expr(loc: Located | None):
    value = loc.value if isinstance(loc, Located) else loc
    return " ".join(str(value).split())


def _norm_names(loc: Located | None):
    value = loc.plain() if isinstance(loc, Located) else loc
    return tuple(value) if isinstance(value, list) else (value,)
