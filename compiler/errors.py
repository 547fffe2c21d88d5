"""The one error type of the compiler.

Every problem found in a spec becomes a `Problem` (file, line, column, YAML path, message); a
`SpecError` carries one or more of them so a user sees every mistake of a file in one run.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    message: str
    file: str | None = None
    line: int | None = None      # 1-based
    column: int | None = None    # 1-based
    path: str | None = None      # YAML path, e.g. "blocks.attention.graph[3].x"

    def __str__(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        at = f" at {self.path}" if self.path else ""
        return f"{where}:{at} {self.message}" if at else f"{where}: {self.message}"


class SpecError(Exception):
    """A spec (or an expression in it) is wrong. `problems` lists every mistake found."""

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def did_you_mean(name: str, choices) -> str:
    """`; did you mean 'x'?` for the closest choice when it is close enough to be a slip, else nothing.

    Close: at most one edit per four characters typed (at least one, for names of three or more; a
    swap of two neighbours is one edit), or the name cut short of a choice (`intermediate` for `intermediate_size`). Two real,
    different words a few letters apart are not slips: `softmax` is not a misspelt `softcap`.
    """
    best = min(((edit_distance(name, c), c) for c in map(str, choices) if _close(name, c)), default=None)
    return f"; did you mean '{best[1]}'?" if best else ""


def _close(name: str, choice: str) -> bool:
    # one or two letters are too few to tell a slip from another name
    if len(name) >= 3 and edit_distance(name, choice) <= max(1, len(name) // 4):
        return True
    short, long = sorted((name, choice), key=len)
    return len(short) >= 4 and long.startswith(short) and len(short) >= 0.6 * len(long)


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, neighbour swaps."""
    prev2, prev = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if prev2 is not None and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]
