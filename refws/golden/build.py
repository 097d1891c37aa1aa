"""Build the golden store from the catalog, and verify a store against a rebuild in memory."""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from .catalog import catalog
from .evaluate import evaluate
from .store import (GoldenError, case_path, default_root, manifest_bytes, manifest_entry, npz_bytes,
                    read_manifest, read_npz, sha256, write_store)

__all__ = ["select", "build_case", "build", "verify", "VerifyReport", "ulp_distance"]


def select(suite=None, pattern=None) -> list:
    """Catalog cases of one suite and/or whose name matches a shell pattern (``fnmatch``)."""
    chosen = [c for c in catalog() if (suite is None or c.suite == suite)
              and (pattern is None or fnmatch.fnmatchcase(c.name, pattern))]
    return chosen


def build_case(case):
    """``(npz bytes, manifest entry)`` of one case."""
    arrays, terms = evaluate(case)
    data = npz_bytes(arrays)
    return data, manifest_entry(case, arrays, terms, data)


def build(out=None, suite=None, pattern=None, progress=None) -> dict:
    """Evaluate the selected cases and write them (atomically) into the store at ``out``.

    A partial build (``suite`` or ``pattern``) keeps the other cases of an existing store that
    are still in the catalog. Returns a summary: cases built, cases in the store, bytes, seconds.
    """
    root = Path(out) if out is not None else default_root()
    start = time.perf_counter()
    chosen = select(suite, pattern)
    if not chosen:
        raise ValueError(f"no golden case matches suite={suite!r} pattern={pattern!r}")
    names = {c.name for c in catalog()}
    entries, keep = {}, {}
    if (suite is not None or pattern is not None) and (root / "manifest.json").exists():
        old = read_manifest(root)["cases"]
        keep = {n: e for n, e in old.items() if n in names}
        entries.update(keep)
    files = {}
    for i, case in enumerate(chosen, 1):
        files[case.name], entries[case.name] = build_case(case)
        keep.pop(case.name, None)
        if progress:
            progress(i, len(chosen), case.name)
    write_store(root, files, manifest_bytes(entries, __version__), keep)
    size = sum(case_path(root, n).stat().st_size for n in entries) + (root / "manifest.json").stat().st_size
    return dict(built=len(chosen), cases=len(entries), bytes=size, seconds=time.perf_counter() - start, root=str(root))


def ulp_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance in units in the last place between two float64 arrays of one shape."""
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0

    def ordered(v):
        i = np.ascontiguousarray(v, dtype=np.float64).view(np.int64)
        return np.where(i < 0, np.int64(-2**63) - i, i).astype(object)   # monotone in the float value

    both_nan = np.isnan(a) & np.isnan(b)
    d = np.abs(ordered(a) - ordered(b))
    d[both_nan] = 0
    return float(np.max(d))


@dataclass
class VerifyReport:
    """What ``verify`` found: per case, a list of problems; ``corrupt`` marks unreadable files."""

    checked: int = 0
    mismatches: dict = field(default_factory=dict)
    corrupt: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 2 if self.corrupt else (1 if self.mismatches else 0)


def _compare(name: str, stored: bytes, rebuilt: bytes, where: str) -> list:
    if stored == rebuilt:
        return []
    a, b = read_npz(stored, where), read_npz(rebuilt, "rebuilt " + name)
    problems = [f"array {k!r} missing from the file" for k in sorted(set(b) - set(a))]
    problems += [f"array {k!r} not in the catalog's case" for k in sorted(set(a) - set(b))]
    for k in sorted(set(a) & set(b)):
        if a[k].shape != b[k].shape:
            problems.append(f"array {k!r}: shape {a[k].shape} != rebuilt {b[k].shape}")
        elif a[k].tobytes() != b[k].tobytes():
            problems.append(f"array {k!r}: differs by up to {ulp_distance(a[k], b[k]):.0f} ulp")
    return problems or ["file bytes differ (array contents equal)"]


def verify(root=None, progress=None, complete: bool = True) -> VerifyReport:
    """Check every checksum, rebuild every case in memory and compare byte for byte.

    With ``complete`` (the default), a catalog case absent from the store is a mismatch too:
    the store is stale. ``complete=False`` checks only what is stored.
    """
    root = Path(root) if root is not None else default_root()
    start = time.perf_counter()
    report = VerifyReport()
    manifest = read_manifest(root)
    by_name = {c.name: c for c in catalog()}
    for missing in sorted(set(by_name) - set(manifest["cases"])) if complete else ():
        report.mismatches[missing] = ["in the catalog but not in the store (rebuild it)"]
    entries = {}
    stored_names = sorted(manifest["cases"])
    for i, name in enumerate(stored_names, 1):
        entry, path = manifest["cases"][name], case_path(root, name)
        report.checked += 1
        if progress:
            progress(i, len(stored_names), name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            report.corrupt[name] = [f"{path}: missing"]
            continue
        if sha256(data) != entry.get("sha256"):
            report.corrupt[name] = [f"{path}: checksum mismatch (truncated or altered)"]
            continue
        if name not in by_name:
            report.mismatches[name] = ["not in the catalog"]
            continue
        rebuilt, entries[name] = build_case(by_name[name])
        try:
            problems = _compare(name, data, rebuilt, str(path))
        except GoldenError as exc:
            report.corrupt[name] = [str(exc)]
            continue
        if entry != entries[name] and not problems:
            problems = ["manifest entry (parameters, terms or shapes) differs from the catalog's"]
        if problems:
            report.mismatches[name] = problems
    report.seconds = time.perf_counter() - start
    return report
