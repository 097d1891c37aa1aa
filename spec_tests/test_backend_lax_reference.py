"""The ``lax-reference`` adapter (refws/backends/lax_reference.py) against the exact golden values.

References: the stored golden arrays (exact, independent of the adapter), judged by the runner
under the adapter's precision; at float64 lax_reference is bit-exact where it is right (12-bit
inputs: every product and partial sum is exact). The known bugs are pinned to the jax version
they were observed on: a jax that fixes one makes its test fail with a message saying so, so
that docs/findings-draft.md and the table below get updated instead of silently passing.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from refws import golden
from refws.conformance.protocol import NotExpressible
from refws.conformance.runner import run_case

OBSERVED_ON = "0.10.2"  # jax version the statuses below were measured on

PASSING = [
    "conv/2d_pad_same",
    "conv/2d_pad_same_lower",
    "conv/1d_pad_same_lowercase",
    "conv/same_stride2_n9_k4",
    "conv/1d_pad_pairs_neg",
    "conv/3d_pad_pairs",
    "conv/2d_s2_lhs2_rhs2",
    "conv/1d_unbatched_channel_first",
    "conv/2d_channel_first",
    "conv/2d_unbatched",
    "conv/2d_zero_batch",
    "conv/2d_zero_size_valid",
]

# case -> (status of y, what is wrong)
KNOWN = {
    "conv/bug_lax_reference_pad_2_minus1": ("fail", "pads (2, -1): hi % dim taken on the unpadded size, wrong shape"),
    "conv/1d_pad_pairs_mixed": ("fail", "pads (2, -1): wrong shape"),
    "conv/2d_pad_pairs_mixed": ("fail", "pads (2, -1), (-1, 2): wrong shape"),
    "conv/2d_aniso": ("fail", "pads (2, -1) after lhs dilation: wrong shape"),
    "conv/bug_lax_reference_same_rhs_dilation": ("fail", "SAME from the undilated kernel: 7x7 for 9x9"),
    "conv/2d_s1_lhs1_rhs2": ("fail", "SAME with rhs_dilation 2: pads too small"),
    "conv/3d_aniso": ("fail", "SAME with rhs_dilation (2, 1, 1): pads too small"),
    "conv/1d_zero_size_crop": ("unimplemented", "a crop to nothing: negative window view, NumPy raises"),
    "conv/2d_groups2": ("not_expressible", "no feature_group_count"),
    "conv/3d_depthwise": ("not_expressible", "no feature_group_count"),
}


@pytest.fixture(scope="module")
def lax_reference():
    pytest.importorskip("jax")
    pytest.importorskip("jax._src.lax_reference")
    from refws.backends.lax_reference import LaxReferenceBackend

    return LaxReferenceBackend


def records_by_array(backend, name) -> dict:
    return {r.array: r for r in run_case(backend, golden.load(name))}


@pytest.mark.parametrize("name", PASSING)
def test_golden_cases_pass_bit_exact_at_float64(lax_reference, name):
    y = records_by_array(lax_reference("float64"), name)["y"]
    assert y.status == "pass", y.message
    assert y.max_error == 0.0


@pytest.mark.parametrize("name", PASSING[:4])
def test_golden_cases_pass_at_float32(lax_reference, name):
    y = records_by_array(lax_reference("float32"), name)["y"]
    assert y.status == "pass", y.message


def test_gradients_are_not_offered(lax_reference):
    recs = records_by_array(lax_reference(), "conv/2d_pad_same")
    assert {a: r.status for a, r in recs.items()} == {"y": "pass", "dx": "skipped", "dw": "skipped", "ty": "skipped"}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_bugs_are_reported(lax_reference, name):
    expected, what = KNOWN[name]
    be = lax_reference()
    y = records_by_array(be, name)["y"]
    if y.status != expected:
        pytest.fail(
            f"lax_reference in {be.version}: {name} is {y.status!r}, but was {expected!r} on jax "
            f"{OBSERVED_ON} ({what}). Fixed or changed upstream? Update KNOWN and docs/findings-draft.md. "
            f"{y.message}"
        )


def test_mixed_sign_padding_bug_mechanism(lax_reference):
    """lax_reference's _pad crops ``hi`` with ``hi % n`` of the *unpadded* size: for n = 8, pads
    (2, -1) it keeps 7 of the 10 padded entries (lax keeps 9), so a 3-tap kernel gives 5, not 7."""
    y = lax_reference().conv(np.ones((1, 8, 2)), np.ones((3, 2, 3)), padding=[(2, -1)])
    n, lo, hi, k = 8, 2, -1, 3
    assert n + lo + hi - k + 1 == 7  # lax's (and refws's) output size
    assert y.shape == (1, (hi % n) - k + 1, 3), (  # the bug: padded[0 : hi % n]
        f"jax {OBSERVED_ON} gave 5 outputs here; this one gives {y.shape[1]}: fixed upstream?"
    )


def test_same_with_rhs_dilation_bug_mechanism(lax_reference):
    """SAME pads from the undilated kernel: k = 3, d = 2 needs 4 pads on 9 (lax: 9x9), gets 2 (7x7)."""
    y = lax_reference().conv(np.ones((1, 9, 9, 1)), np.ones((3, 3, 1, 2)), padding="SAME", rhs_dilation=2)
    assert y.shape == (1, 7, 7, 2), f"jax {OBSERVED_ON} gave 7x7 here, this one {y.shape[1:3]}: fixed upstream?"


def test_groups_are_not_expressible(lax_reference):
    with pytest.raises(NotExpressible, match="feature_group_count"):
        lax_reference().conv(np.ones((1, 5, 4)), np.ones((3, 2, 4)), groups=2)


def test_attributes_and_precision(lax_reference):
    import jax

    be = lax_reference()
    assert (be.name, be.precision, be.version) == ("lax-reference", "float64", f"jax {jax.__version__}")
    with pytest.raises(ValueError, match="precision='bfloat16'"):
        lax_reference("bfloat16")


def test_float32_computes_in_float32(lax_reference):
    y = lax_reference("float32").conv(np.ones((1, 5, 2)), np.ones((3, 2, 1)), padding="VALID")
    assert y.dtype == np.float32


def test_missing_jax_says_how_to_install(lax_reference, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)
    with pytest.raises(ImportError, match=r"pip install 'refws\[jax\]'"):
        lax_reference()


def test_registered_as_builtin():
    from refws.conformance.registry import BUILTIN

    assert BUILTIN["lax-reference"] == "refws.backends.lax_reference:LaxReferenceBackend"


def test_importing_refws_imports_no_framework():
    """``import refws``, ``refws.backends`` and the adapter modules themselves import no framework."""
    code = (
        "import sys, refws, refws.backends, refws.backends.lax_reference, refws.backends.onnx, "
        "refws.backends.tensorflow; "
        "print(sorted(m for m in ('jax', 'onnx', 'onnxruntime', 'tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
