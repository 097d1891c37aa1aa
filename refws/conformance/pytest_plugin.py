"""pytest plugin: run refws's golden cases against your backend inside your own test suite.

Registered through the ``pytest11`` entry point, so it is present whenever refws is installed,
and inert unless ``--refws-backend`` is given::

    pytest --refws-backend my_pkg.module:MyBackend [--refws-precision float32]
           [--refws-suite conv] [--refws-golden DIR]

It adds one test per (case, array), named ``refws::<case>:<array>``, so ``-k``, ``-x``,
``--junitxml`` and xdist work as usual. A ``fail`` or ``error`` fails the test with refws's
description; ``not_expressible``, ``unimplemented`` and ``skipped`` are skips (with the status
and reason); ``warn`` passes with a :class:`RefwsWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # annotations only: the plugin imports refws's modules when it is used
    from _pytest._code.code import TerminalRepr, TracebackStyle

    from ..golden.store import GoldenCase
    from .runner import Record

__all__ = ["RefwsWarning"]


class RefwsWarning(UserWarning):
    """An array within the rigorous bound but above the probabilistic one (status ``warn``)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("refws", "refws golden conformance")
    group.addoption(
        "--refws-backend",
        default=None,
        metavar="MODULE:ATTR",
        help="run refws's golden cases against this adapter (a built-in name such as torch, "
        "or package.module:Attribute)",
    )
    group.addoption("--refws-precision", default=None, help="passed to the adapter's factory (e.g. float32)")
    group.addoption("--refws-suite", default=None, help="only this golden suite")
    group.addoption("--refws-golden", default=None, metavar="DIR", help="golden store (default: refws's)")


class _Session:
    """The loaded backend and each case's records, computed once per case and shared by its items."""

    def __init__(self, config: pytest.Config) -> None:
        from .registry import load_backend

        opt = config.getoption
        self.backend = load_backend(opt("--refws-backend"), opt("--refws-precision"))
        self.root, self.suite = opt("--refws-golden"), opt("--refws-suite")
        self.records: dict[str, dict[str, Record]] = {}

    def cases(self) -> Iterator[tuple[GoldenCase, list[str]]]:
        from .runner import calls_for, outputs_of, select_cases

        for case in select_cases(self.root, self.suite):
            yield case, [o for call in calls_for(case.suite) for o in outputs_of(case, call)]

    def record(self, case: GoldenCase, array: str) -> Record | None:
        if case.name not in self.records:
            from .runner import run_case

            self.records[case.name] = {r.array: r for r in run_case(self.backend, case)}
        return self.records[case.name].get(array)


class RefwsItem(pytest.Item):
    def __init__(self, *, state: _Session, case: GoldenCase, array: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state, self.case, self.array = state, case, array

    def runtest(self) -> None:
        r = self.state.record(self.case, self.array)
        if r is None:
            pytest.skip(f"{self.array}: no record")
        if r.status in ("not_expressible", "unimplemented", "skipped"):
            pytest.skip(f"{r.status}: {r.message}")
        if r.status == "warn":
            warnings.warn(RefwsWarning(r.message), stacklevel=1)
        if r.status in ("fail", "error"):
            raise _RefwsFailure(f"{r.status}: {r.message}")

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: TracebackStyle | None = None
    ) -> str | TerminalRepr:
        if isinstance(excinfo.value, _RefwsFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"refws::{self.case.name}:{self.array}"


class _RefwsFailure(AssertionError):
    pass


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Append the golden items before ``-k``/``-m`` deselection runs (tryfirst)."""
    if not config.getoption("--refws-backend"):
        return
    try:
        state = _Session(config)
    except Exception as exc:  # noqa: BLE001 - a usage error, shown as such
        raise pytest.UsageError(f"--refws-backend: {exc}") from exc
    for case, outputs in state.cases():
        for array in outputs:
            items.append(
                RefwsItem.from_parent(session, name=f"refws::{case.name}:{array}", state=state, case=case, array=array)
            )
