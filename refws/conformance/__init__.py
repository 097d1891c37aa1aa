"""Conformance: drive a backend over the golden store and report what it finds.

- :mod:`.protocol`: what an adapter implements; :class:`NotExpressible`, :class:`Unimplemented`;
- :mod:`.registry`: the built-in adapters by name, anyone's by ``module:attribute``;
- :mod:`.runner`: :func:`run` / :func:`run_case`, records with benchdnn-style statuses;
- :mod:`.report`: the text summary, JSON and JUnit XML;
- :mod:`.pytest_plugin`: ``pytest --refws-backend module:Backend`` (inert without the option).

NumPy only: a framework is imported by its adapter (``refws.backends``), never here.
See docs/conformance.md.
"""

from .protocol import METHODS, NotExpressible, Unimplemented
from .registry import BUILTIN, BackendLoadError, load_backend
from .runner import CALLS, STATUSES, Record, Report, run, run_case

__all__ = [
    "NotExpressible",
    "Unimplemented",
    "METHODS",
    "BUILTIN",
    "BackendLoadError",
    "load_backend",
    "CALLS",
    "STATUSES",
    "Record",
    "Report",
    "run",
    "run_case",
]
