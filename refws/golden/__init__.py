"""Golden fixtures: exact, machine-independent reference values for other backends.

- :func:`load` / :func:`cases`: read and checksum-verify stored cases (``numpy.load`` with
  ``allow_pickle=False``; nothing is ever unpickled).
- :func:`build` / :func:`verify`: the ``refws golden`` command's work.
- :func:`catalog`: the case definitions.

The format is specified in docs/golden-format.md.
"""

from .build import build, verify
from .catalog import Case, catalog
from .store import GoldenCase, GoldenError, cases, default_root, load

__all__ = ["load", "cases", "build", "verify", "catalog", "Case", "GoldenCase", "GoldenError", "default_root"]
