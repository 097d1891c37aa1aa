"""The counts table of docs/conformance.md is what the backends installed here actually give.

Each row (backend, version, precision, status counts, worst error/bound) is regenerated: by running
the backend (the quick ones), or from ``refws check --json`` reports in ``$REFWS_CHECK_REPORTS``
(``<backend>_<precision>.json``; ``.ci/run`` writes them for torch and jax and then runs this file
again). A row whose backend is not installed, or installed at another version, is skipped with
the reason: regenerate the row with ``python docs/findings_counts.py BACKEND:PRECISION``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
from findings_counts import COLUMNS, report_for, row  # noqa: E402

QUICK = {"onnxruntime", "onnx-reference", "lax-reference", "elektronn3", "timm"}  # seconds, not minutes
MODULES = {
    "torch": "torch",
    "jax": "jax",
    "onnxruntime": "onnxruntime",
    "onnx-reference": "onnx",
    "lax-reference": "jax",
    "tensorflow": "tensorflow",
    "elektronn3": "elektronn3",
    "timm": "timm",
    "brainstate": "brainstate",
}


def _rows():
    text = (ROOT / "docs" / "conformance.md").read_text()
    block = text.split("<!-- counts:begin -->")[1].split("<!-- counts:end -->")[0]
    out = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 + len(COLUMNS) and cells[0] in MODULES:
            out.append(cells)
    return out


ROWS = _rows()


def test_the_table_has_a_row_for_every_builtin_backend_at_both_precisions():
    from refws.conformance import BUILTIN

    have = {(r[0], r[2]) for r in ROWS}
    missing = [(b, p) for b in BUILTIN for p in ("float32", "float64") if (b, p) not in have]
    assert not missing, f"docs/conformance.md counts table lacks rows for {missing}"


@pytest.mark.parametrize("cells", ROWS, ids=[f"{r[0]}-{r[2]}" for r in ROWS])
def test_row_matches_a_fresh_run(cells):
    backend, version, precision = cells[:3]
    if importlib.util.find_spec(MODULES[backend]) is None:
        pytest.skip(f"{backend} is not installed here")
    reports = os.environ.get("REFWS_CHECK_REPORTS")
    path = Path(reports) / f"{backend}_{precision}.json" if reports else None
    if path is not None and path.exists():
        report = report_for(backend, precision, Path(reports))
    elif backend in QUICK:
        try:
            report = report_for(backend, precision)
        except Exception as exc:  # noqa: BLE001 - e.g. brainstate under Python 3.11
            pytest.skip(f"{backend} cannot be loaded here: {exc}")
    else:
        pytest.skip(f"{backend} is checked from $REFWS_CHECK_REPORTS (.ci/run runs it once and sets it)")
    if report["version"] != version:
        pytest.skip(
            f"the table records {backend} {version}, installed is {report['version']}: "
            f"regenerate with python docs/findings_counts.py {backend}:{precision}"
        )
    assert row(backend, report) == "| " + " | ".join(cells) + " |"
