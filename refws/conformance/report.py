"""Reports of a conformance run: the text summary, the JSON document and JUnit XML.

The JSON schema (documented in docs/conformance.md)::

    {"schema": "refws-check/1", "backend": str, "version": str, "precision": str,
     "golden": str, "refws_version": str, "seconds": float, "exit_code": 0 | 1,
     "summary": {suite: {"counts": {status: int}, "worst_ratio": float | null,
                         "fingerprint": str | null, "nondeterministic": int}},
     "records": [{"case", "suite", "array", "status", "max_error", "max_ratio",
                  "max_warn_ratio", "fingerprint", "message", "nondeterministic",
                  "seconds", "where"?, "diagnosis"?}]}
"""

from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from .. import __version__
from .diagnosis import diagnosis_text
from .runner import STATUSES, Report

__all__ = ["text_report", "json_report", "junit_report", "write_atomic", "json_bytes", "totals"]

_COLUMNS = ("pass", "warn", "fail", "error", "unimplemented", "not_expressible", "skipped")
_SHORT = {"not_expressible": "not expr.", "unimplemented": "unimpl."}


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def text_report(report: Report, max_failures: int = 20) -> str:
    """The summary table per suite, then the failures and errors (at most ``max_failures`` in full)."""
    head = ["suite"] + [_SHORT.get(c, c) for c in _COLUMNS] + ["worst err/bound", "fingerprint"]
    rows = []
    summary = report.summary()
    for suite, s in summary.items():
        rows.append(
            [suite] + [str(s["counts"][c]) for c in _COLUMNS] + [_ratio(s["worst_ratio"]), s["fingerprint"] or "none"]
        )
    total = {c: sum(s["counts"][c] for s in summary.values()) for c in _COLUMNS}
    rows.append(["all"] + [str(total[c]) for c in _COLUMNS] + ["", ""])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [
        f"refws check: {report.backend} {report.version} at {report.precision} against {report.golden} "
        f"({report.seconds:.1f} s)",
        fmt.format(*head),
    ] + [fmt.format(*r) for r in rows]
    nondet = [r for r in report.records if r.nondeterministic]
    if any(r.nondeterministic is not None for r in report.records):
        lines.append(
            f"nondeterministic (bits differ between repeats): {len(nondet)} array(s)"
            + "".join(f"\n  {r.case}:{r.array}" for r in nondet[:max_failures])
        )
    bad = [r for r in report.records if r.status in ("fail", "error")]
    for r in bad[:max_failures]:
        lines.append(f"\n{r.status.upper()} {r.case}:{r.array}")
        lines.append("  " + r.message.replace("\n", "\n  "))
        if r.diagnosis is not None:
            lines.append("  diagnosis: " + diagnosis_text(r.diagnosis).replace("\n", "\n  diagnosis: "))
    if len(bad) > max_failures:
        lines.append(f"\n... and {len(bad) - max_failures} more (see --json)")
    refused = [r for r in report.records if r.status == "unimplemented"]
    if refused:
        lines.append(
            "\nunimplemented: "
            + "; ".join(f"{r.case}:{r.array} ({r.message})" for r in refused[:10])
            + (" ..." if len(refused) > 10 else "")
        )
    lines.append(
        f"\nexit {report.exit_code}: "
        + ("every expressible array passes" if report.exit_code == 0 else "failures or adapter errors")
    )
    return "\n".join(lines)


def json_report(report: Report) -> dict[str, Any]:
    """The JSON document (see the module docstring)."""
    return {
        "schema": "refws-check/1",
        "backend": report.backend,
        "version": report.version,
        "precision": report.precision,
        "golden": report.golden,
        "refws_version": __version__,
        "seconds": round(report.seconds, 3),
        "exit_code": report.exit_code,
        "summary": report.summary(),
        "records": [r.to_json() for r in report.records],
    }


def junit_report(report: Report) -> bytes:
    """JUnit XML: one ``testsuite`` per suite, one ``testcase`` per (case, array)."""
    root = ET.Element("testsuites", name=f"refws check {report.backend}")
    for suite, recs in report.by_suite().items():
        counts = {s: sum(1 for r in recs if r.status == s) for s in STATUSES}
        ts = ET.SubElement(
            root,
            "testsuite",
            name=f"refws.{suite}",
            tests=str(len(recs)),
            failures=str(counts["fail"]),
            errors=str(counts["error"]),
            skipped=str(counts["not_expressible"] + counts["unimplemented"] + counts["skipped"]),
            time=f"{sum(r.seconds for r in recs):.3f}",
        )
        for r in recs:
            tc = ET.SubElement(
                ts, "testcase", classname=f"refws.{suite}", name=f"{r.case}:{r.array}", time=f"{r.seconds:.6f}"
            )
            if r.status == "fail":
                first = r.message.splitlines()[0] if r.message else "fail"
                ET.SubElement(tc, "failure", message=first).text = r.message
            elif r.status == "error":
                ET.SubElement(tc, "error", message=r.message).text = r.message
            elif r.status in ("not_expressible", "unimplemented", "skipped"):
                ET.SubElement(tc, "skipped", message=f"{r.status}: {r.message}")
            elif r.status == "warn":
                ET.SubElement(tc, "system-out").text = r.message
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_bytes(report: Report) -> bytes:
    return (json.dumps(json_report(report), indent=1, sort_keys=True) + "\n").encode()


def totals(report: dict[str, Any]) -> dict[str, Any]:
    """From a JSON report (:func:`json_report`): status counts over all suites, and the worst
    ``error / bound`` over the arrays that pass or warn (the findings table's columns)."""
    counts = {s: 0 for s in STATUSES}
    for suite in report["summary"].values():
        for status, n in suite["counts"].items():
            counts[status] += n
    ratios = [r["max_ratio"] for r in report["records"] if r["status"] in ("pass", "warn")]
    return dict(counts, worst_ratio=max(ratios) if ratios else None)
