"""Regenerate the counts table of docs/conformance.md ("What refws finds in the peers").

    python docs/findings_counts.py torch:float32 jax:float64 ...      # runs refws check for each
    python docs/findings_counts.py --reports DIR                      # reads DIR/<backend>_<precision>.json

Prints one markdown row per (backend, precision); spec_tests/test_findings_table.py checks the
committed rows against fresh runs of the backends installed, so the table cannot drift silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refws.conformance import load_backend, run
from refws.conformance.report import json_report, totals

COLUMNS = ("pass", "warn", "fail", "error", "unimplemented", "not_expressible", "skipped")


def report_for(backend: str, precision: str, reports: Path | None = None) -> dict:
    """The JSON report of ``refws check backend --precision precision`` (from ``reports`` if given)."""
    if reports is not None:
        return json.loads((reports / f"{backend}_{precision}.json").read_text())
    return json_report(run(load_backend(backend, precision)))


def row(backend: str, report: dict) -> str:
    t = totals(report)
    worst = "-" if t["worst_ratio"] is None else f"{t['worst_ratio']:.3g}"
    cells = [backend, report["version"], report["precision"], *(str(t[c]) for c in COLUMNS), worst]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="*", metavar="BACKEND:PRECISION")
    p.add_argument("--reports", type=Path, default=None, help="read <backend>_<precision>.json from here")
    args = p.parse_args(argv)
    pairs = args.pairs
    if not pairs and args.reports:  # every <backend>_<precision>.json in the folder
        pairs = [":".join(f.stem.rsplit("_", 1)) for f in sorted(args.reports.glob("*_float*.json"))]
    for pair in pairs:
        backend, _, precision = pair.partition(":")
        print(row(backend, report_for(backend, precision, args.reports)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
