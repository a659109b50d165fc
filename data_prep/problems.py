"""Bookkeeping of bad inputs: what was skipped or fixed, and why."""
from __future__ import annotations

import dataclasses
from typing import Dict, List

# Actions that leave the input out of the output; the others fixed it.
SKIP_ACTION = "skipped"


class SkipInput(Exception):
    """The input cannot be used; the message is the reason."""


class BadInputError(RuntimeError):
    """Raised in strict mode by the first bad input; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Problem:
    file: str     # path relative to the raw root
    reason: str
    action: str   # "skipped", "converted", "box dropped", "box clipped", ...

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ProblemLog:
    """Collects problems; in strict mode the first one raises BadInputError."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.problems: List[Problem] = []
        # Inputs left out by design (not problems): a count per reason.
        self.ignored: Dict[str, int] = {}

    def ignore(self, reason: str, count: int = 1) -> None:
        if count:
            self.ignored[reason] = self.ignored.get(reason, 0) + count

    def add(self, file: str, reason: str, action: str) -> None:
        if self.strict:
            raise BadInputError(f"{file}: {reason} (strict mode stops at the first bad input; "
                                f"without --strict it would be {action})")
        self.problems.append(Problem(file, reason, action))

    def skip(self, file: str, reason: str) -> None:
        self.add(file, reason, SKIP_ACTION)


def sorted_problems(problems) -> List[dict]:
    return [p.to_dict() for p in sorted(problems, key=lambda p: (p.file, p.reason, p.action))]
