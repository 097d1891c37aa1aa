"""A golden case: a stable name, a suite and JSON parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Case", "SUITES"]

SUITES = ("conv", "conv_transpose", "ws", "brainstate", "elektronn3")


@dataclass(frozen=True)
class Case:
    """One golden case. ``params`` holds only JSON values (lists, not tuples)."""

    name: str
    suite: str
    params: dict = field(hash=False)
