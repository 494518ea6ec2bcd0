"""The doctor's result vocabulary: one frozen `Check` per line, grouped into steps.

Every judgement in the doctor returns these, so the text and JSON renderings can never disagree
and tests can assert on a step, a check name, a status and a fix without parsing text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

STEPS = ("outbound", "config", "tls", "routing", "oauth")


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the diagnosis: what was checked, the verdict, why, and how to fix it."""

    name: str
    status: Status
    message: str
    fix: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {"name": self.name, "status": self.status.value, "message": self.message, "fix": self.fix}


def ok(name: str, message: str) -> Check:
    return Check(name, Status.OK, message)


def warn(name: str, message: str, fix: str | None = None) -> Check:
    return Check(name, Status.WARN, message, fix)


def fail(name: str, message: str, fix: str) -> Check:
    return Check(name, Status.FAIL, message, fix)


def skip(name: str, reason: str) -> Check:
    return Check(name, Status.SKIP, reason)


@dataclass(frozen=True, slots=True)
class StepResult:
    step: str
    checks: tuple[Check, ...]

    @property
    def failed(self) -> bool:
        return any(c.status is Status.FAIL for c in self.checks)


@dataclass(frozen=True, slots=True)
class Report:
    steps: tuple[StepResult, ...]

    @property
    def ok(self) -> bool:
        return not any(step.failed for step in self.steps)

    def checks(self) -> Iterable[tuple[str, Check]]:
        for step in self.steps:
            for check in step.checks:
                yield step.step, check

    def find(self, step: str, name: str) -> Check | None:
        """The first check of that name in that step (tests and callers match on names)."""
        for s, check in self.checks():
            if s == step and check.name == name:
                return check
        return None

    def as_json(self) -> dict[str, object]:
        """Exactly the documented document: {"ok", "steps": [{"step", "checks": [...]}]}."""
        return {
            "ok": self.ok,
            "steps": [{"step": s.step, "checks": [c.as_json() for c in s.checks]} for s in self.steps],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_json(), indent=2, ensure_ascii=False)

    def to_text(self) -> str:
        """One line per check: step, status, name, the reason and, where there is one, the fix."""
        lines: list[str] = []
        for step, check in self.checks():
            line = f"{step:<9} {check.status.value:<4}  {check.name}: {_one_line(check.message)}"
            if check.fix:
                line += f" -- fix: {_one_line(check.fix)}"
            lines.append(line)
        lines.append(summary(list(self.checks())))
        return "\n".join(lines)


def summary(checks: Sequence[tuple[str, Check]]) -> str:
    counts = {status: 0 for status in Status}
    for _, check in checks:
        counts[check.status] += 1
    failed = sorted({step for step, c in checks if c.status is Status.FAIL}, key=STEPS.index)
    head = "doctor: FAILED at " + ", ".join(failed) if failed else "doctor: OK"
    tail = ", ".join(f"{counts[s]} {s.value}" for s in Status)
    return f"{head} ({tail})"


def _one_line(text: str) -> str:
    return " ".join(text.split())
