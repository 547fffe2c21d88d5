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
