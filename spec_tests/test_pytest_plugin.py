"""The pytest plugin: inert without its option; with it, one test per (case, array), usual tooling.

Runs pytest in a subprocess (the plugin is installed through the ``pytest11`` entry point) with
adapters written here: a correct float32 convolution (the example adapter) and a wrong one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WRONG = textwrap.dedent("""
    import numpy as np
    import refws

    class Flipped:                   # a true convolution instead of a cross-correlation
        name, precision = "flipped", "float64"

        def conv(self, x, w, stride, padding, lhs_dilation, rhs_dilation, groups, *, channel_first):
            nd = w.ndim - 2
            return refws.conv(x, w[(slice(None, None, -1),) * nd], stride, padding, lhs_dilation,
                              rhs_dilation, groups, channel_first=channel_first)
""")


def _pytest(tmp_path, *args):
    (tmp_path / "wrong_backend.py").write_text(WRONG)
    env_path = f"{tmp_path}:{ROOT}"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path), *args]
    return subprocess.run(
        cmd,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": env_path},
    )


def test_inert_without_the_option(tmp_path):
    (tmp_path / "test_nothing.py").write_text("def test_one():\n    pass\n")
    r = _pytest(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout and "refws::" not in r.stdout


def test_correct_adapter_passes_and_unexpressible_cases_skip(tmp_path):
    r = _pytest(
        tmp_path,
        "--refws-backend",
        "examples.adapters.numpy_float32:NumpyFloat32",
        "--refws-suite",
        "conv",
        "-k",
        "2d_pad or channel_first",
        "-rs",
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
    assert "not_expressible: this example takes batched channels-last input only" in r.stdout


def test_wrong_adapter_fails_with_refws_description_and_k_x_work(tmp_path):
    r = _pytest(
        tmp_path, "--refws-backend", "wrong_backend:Flipped", "--refws-suite", "conv", "-k", "2d_pad_same and :y", "-x"
    )
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 failed" in r.stdout  # -x stops at the first failure
    assert "not equal to refws within the rigorous float64 bound" in r.stdout
    assert "mismatched elements" in r.stdout and "worst element" in r.stdout


def test_unloadable_backend_is_a_usage_error(tmp_path):
    r = _pytest(tmp_path, "--refws-backend", "no_such_module_xyz:Backend")
    assert r.returncode == 4, r.stdout + r.stderr  # pytest's usage-error exit code
    assert "no_such_module_xyz" in r.stdout + r.stderr
