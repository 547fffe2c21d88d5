"""Rendering a semantic diff (`compiler.diff.diff_specs`) as text, Markdown or JSON.

Text and Markdown share one outline: sections (matches, config, checks, blocks, heads, weights) of items
marked + (added), - (removed), ~ (changed). Long lists collapse to one line of names, and a block
whose graph was rewritten is summarised by op counts, so two unrelated architectures still give a
short, structured answer.
"""
from __future__ import annotations

import json

COMPACT = 4            # more items of one kind than this are listed as names on one line
BRIEF_AFTER = 25       # a detailed outline longer than this is redone briefly
BRIEF_WIDTH = 160      # and its lines are cut to this many characters (JSON keeps everything)
SIGNS = {"+": "added", "-": "removed", "~": "changed", "=": ""}
COLOURS = {"+": "32", "-": "31", "~": "33"}


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _changes(changes: dict) -> str:
    parts = []
    for field, (old, new) in changes.items():
        if old is None:
            parts.append(f"+{field}={_show(new)}")
        elif new is None:
            parts.append(f"-{field} (was {_show(old)})")
        else:
            parts.append(f"{field} {_show(old)} -> {_show(new)}")
    return "; ".join(parts)


def _group(sign: str, what: str, names: list[str], details: list[str], compact: int,
           sep: str = ", ") -> list[tuple[str, str]]:
    if not names:
        return []
    if len(names) <= compact:
        return [(sign, d) for d in details]
    return [(sign, f"{len(names)} {what}: {sep.join(names)}")]


def _named(section: dict, what: str, describe, compact: int) -> list[tuple[str, str]]:
    items = []
    items += _group("+", what, [e["name"] for e in section["added"]],
                    [f"{e['name']}: {describe(e)}" for e in section["added"]], compact)
    items += _group("-", what, [e["name"] for e in section["removed"]],
                    [f"{e['name']}: {describe(e)}" for e in section["removed"]], compact)
    items += _group("~", what, [e["name"] for e in section["changed"]],
                    [f"{e['name']}: {_changes(e['changes'])}" for e in section["changed"]], compact)
    return items


def _config_entry(e: dict) -> str:
    source = f" from {' | '.join(e['hf'])}" if e["hf"] else ""
    default = "" if e["default"] == "(required)" else f", default {_show(e['default'])}"
    return f"{e['type']}{source}{default}"


def _fields(e: dict) -> str:
    return ", ".join(f"{k}: {_show(v)}" for k, v in e.items() if k != "name")


def _rule(r: dict) -> str:
    text = f"{_show(r['from'])} -> {_show(r['to'])}" if "to" in r else f"{_show(r['from'])} ignored ({r['ignore']})"
    if r.get("transforms"):
        text += f" [{', '.join(_show(t) for t in r['transforms'])}]"
    if r.get("when"):
        text += f" when {r['when']}"
    return text


def outline(d: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(section title, [(sign, text)])] for every non-empty part of the diff: in detail when that
    stays short, else briefly (names instead of details, op counts instead of op lines)."""
    detailed = _outline(d, brief=False)
    if sum(len(items) for _, items in detailed) <= BRIEF_AFTER:
        return detailed
    cut = lambda t: t if len(t) <= BRIEF_WIDTH else t[:BRIEF_WIDTH - 4] + " ..."  # noqa: E731
    return [(title, [(sign, cut(text)) for sign, text in items]) for title, items in _outline(d, brief=True)]


def _outline(d: dict, brief: bool) -> list[tuple[str, list[tuple[str, str]]]]:
    compact = 1 if brief else COMPACT
    out = []
    if d["matches"]:
        out.append(("matches", [("~", f"{k}: {_show(a)} -> {_show(b)}") for k, (a, b) in d["matches"].items()]))
    config = _named(d["config"], "entries", _config_entry, compact)
    if config:
        out.append(("config", config))
    checks = d["checks"]
    items = _group("+", "checks", [c["that"] for c in checks["added"]], [c["that"] for c in checks["added"]],
                   compact, "; ")
    items += _group("-", "checks", [c["that"] for c in checks["removed"]], [c["that"] for c in checks["removed"]],
                    compact, "; ")
    items += [("~", f"{c['that']}: message {_show(c['else'][0])} -> {_show(c['else'][1])}") for c in checks["changed"]]
    if items:
        out.append(("checks", items))
    blocks = d["blocks"]
    for b in blocks["added"]:
        out.append((f"block {b['name']} (new)", [("+", f"params: {', '.join(b['params']) or '-'}"),
                                                ("+", "ops: " + _counts(b["ops"]))]))
    for b in blocks["removed"]:
        out.append((f"block {b['name']} (gone)", [("-", f"params: {', '.join(b['params']) or '-'}"),
                                                 ("-", "ops: " + _counts(b["ops"]))]))
    for b in blocks["changed"]:
        title = f"block {b['block']}" + (f" (was {b['was']})" if "was" in b else "")
        out.append((title, _block_items(b, compact, brief) or [("=", "same declarations")]))
    heads = d.get("heads")
    if heads:
        # one section: a head that only serves other architectures is one line, not a section
        items = [("~", f"base_prefix {_show(heads['base_prefix'][0])!r} -> {_show(heads['base_prefix'][1])!r}")
                 ] if "base_prefix" in heads else []
        for h in heads["added"]:
            items.append(("+", f"{h['name']} (new): architectures {_show(h['architectures'])}; "
                               f"params: {', '.join(h['params']) or '-'}; ops: {_counts(h['ops'])}"))
        for h in heads["removed"]:
            items.append(("-", f"{h['name']}: architectures {_show(h['architectures'])}"))
        for h in heads["changed"]:
            if "architectures" in h:
                items.append(("~", f"{h['head']}: architectures {_show(h['architectures'][0])} -> "
                                   f"{_show(h['architectures'][1])}"))
            items += [(s, f"{h['head']}: {t}") for s, t in _block_items(h, compact, brief)]
        if items:
            out.append(("heads", items))
    weights = d["weights"]
    froms = lambda rules: [_show(r["from"]) for r in rules]  # noqa: E731
    items = _group("+", "rules", froms(weights["added"]), [_rule(r) for r in weights["added"]], compact)
    items += _group("-", "rules", froms(weights["removed"]), [_rule(r) for r in weights["removed"]], compact)
    items += _group("~", "rules", [_show(c["from"]) for c in weights["changed"]],
                    [f"{_show(c['from'])}: {_changes(c['changes'])}" for c in weights["changed"]], compact)
    if items:
        out.append(("weights", items))
    return out


def _block_items(b: dict, compact: int, brief: bool) -> list[tuple[str, str]]:
    items = []
    if "inputs" in b:
        items += _named(b["inputs"], "inputs", _fields, compact)
        items = [(s, f"input {t}" if not t[0].isdigit() else t) for s, t in items]
    if "params" in b:
        params = _named(b["params"], "params", _fields, compact)
        items += [(s, f"param {t}" if not t[0].isdigit() else t) for s, t in params]
    if "ops" in b:
        items += _ops(b["ops"], brief)
    if "outputs" in b:
        items.append(("~", f"outputs {_show(b['outputs'][0])} -> {_show(b['outputs'][1])}"))
    if "generate" in b:
        items.append(("~", f"generate {_show(b['generate'][0])} -> {_show(b['generate'][1])}"))
    return items


def _counts(ops: dict) -> str:
    return ", ".join(f"{op}" + (f" x{n}" if n > 1 else "") for op, n in ops.items()) or "-"


def _ops(ops: dict, brief: bool) -> list[tuple[str, str]]:
    s = ops["summary"]
    lines = [("+", f"op {t}") for t in ops["added"]] + [("-", f"op {t}") for t in ops["removed"]]
    lines += [("~", f"op {c['line']}: {_changes(c['changes'])}") for c in ops["changed"]]
    if not (s["rewritten"] or (brief and len(lines) > 1)):
        return lines
    parts = [f"{s['lines'][0]} -> {s['lines'][1]} lines ({round(100 * ops['ratio'])}% aligned)"]
    if s["ops_removed"]:
        parts.append("-" + _counts(s["ops_removed"]))
    if s["ops_added"]:
        parts.append("+" + _counts(s["ops_added"]))
    if ops["changed"]:
        parts.append(f"{len(ops['changed'])} line(s) re-wired")
    return [("~", "graph " + "; ".join(parts))]


def _title(d: dict) -> str:
    a, b = d["a"], d["b"]
    return f"{a['name']} ({a['file']}) -> {b['name']} ({b['file']})"


def render_text(d: dict, colour: bool = False) -> str:
    def paint(code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if colour else text

    lines = [paint("1", _title(d))]
    if d["equal"]:
        lines.append("  no architectural difference")
    for title, items in outline(d):
        lines.append(paint("1", f"{title}:"))
        for sign, text in items:
            mark = " " if sign == "=" else sign
            lines.append(paint(COLOURS[sign], f"  {mark} {text}") if sign in COLOURS else f"  {mark} {text}")
    return "\n".join(lines) + "\n"


def render_markdown(d: dict) -> str:
    a, b = d["a"], d["b"]
    lines = [f"### `{a['name']}` → `{b['name']}`", "", f"`{a['file']}` → `{b['file']}`", ""]
    if d["equal"]:
        lines.append("No architectural difference.")
    for title, items in outline(d):
        lines.append(f"**{title}**")
        lines.append("")
        for sign, text in items:
            label = f"*{SIGNS[sign]}* " if SIGNS[sign] else ""
            lines.append(f"- {label}`{text}`")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_json(d: dict) -> str:
    return json.dumps(d, indent=2) + "\n"
