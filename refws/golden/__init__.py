"""Golden fixtures: exact, machine-independent reference values for other backends.

- :func:`load` / :func:`cases`: read and checksum-verify stored cases (``numpy.load`` with
  ``allow_pickle=False``; nothing is ever unpickled).
- :func:`build` / :func:`verify` / :func:`merge`: the ``refws golden`` command's work.
- :func:`catalog`: the built-in case definitions; :func:`load_catalog`: a catalog file (TOML or
  JSON) of your own configurations.

The format is specified in docs/golden-format.md.
"""

from .build import BuildError, build, merge, verify
from .catalog import Case, catalog
from .catalog_file import Catalog, CatalogError, load_catalog
from .store import GoldenCase, GoldenError, cases, default_root, load

__all__ = ["load", "cases", "build", "verify", "merge", "catalog", "load_catalog", "Catalog", "CatalogError",
           "BuildError", "Case", "GoldenCase", "GoldenError", "default_root"]
