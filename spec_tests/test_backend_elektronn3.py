"""The elektronn3 adapter (refws/backends/elektronn3.py): elektronn3 0.1.1's own layers on golden cases.

The references are golden cases built here from the catalog (exact values, refws's bounds), judged
by the runner exactly as ``refws check elektronn3`` judges them. The golden elektronn3 cases encode
the layers' documented intent, so elektronn3 0.1.1 must pass the cases it computes correctly and
show its known defects as ``fail`` / ``unimplemented`` on the named cases (NOTES.md, docs/layers.md).
The defect tests are pinned to 0.1.1: a release that fixes one fails them with a message saying so.

The helpers ``golden_store`` and ``golden_statuses`` are shared with the brainstate and timm adapter
tests (they need no framework).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from refws import golden
from refws.conformance import NotExpressible, load_backend
from refws.conformance.runner import run_case

OBSERVED = "0.1.1"  # the elektronn3 release whose defects these tests pin

PASSING = [
    "elektronn3/WSConv1d_same_dilation",
    "elektronn3/WSConv2d_default",
    "elektronn3/WSConv3d_valid_stride_groups",
]
PADDING_MODE = ["elektronn3/WSConv1d_circular", "elektronn3/WSConv2d_reflect", "elektronn3/WSConv3d_replicate"]
TRANSPOSE2D = ["elektronn3/WSConvTranspose2d_default", "elektronn3/WSConvTranspose2d_groups_dilation_no_bias"]
OUTPUT_SIZE = "elektronn3/WSConvTranspose2d_output_size"
TRANSPOSE3D = ["elektronn3/WSConvTranspose3d_default", "elektronn3/WSConvTranspose3d_output_size"]
WS_PASSING = ["ws/elektronn3_oihw", "ws/elektronn3_linear", "ws/elektronn3_hwio_no_gain", "ws/elektronn3_dhwio"]
WS_CLAMPED = ["ws/elektronn3_hwio_tiny", "ws/elektronn3_hwio_constant"]
NAMES = PASSING + PADDING_MODE + TRANSPOSE2D + [OUTPUT_SIZE] + TRANSPOSE3D + WS_PASSING + WS_CLAMPED


# --- shared helpers (no framework needed) -----------------------------------------------------


def golden_store(tmp_path_factory, names, label):
    """A golden store holding exactly ``names``, built from the catalog into a temporary folder."""
    root = tmp_path_factory.mktemp(label)
    for name in names:
        golden.build(root, pattern=name)
    return root


def golden_statuses(backend, root, name, precision) -> dict:
    """``{array: Record}`` of one stored case, as ``refws check`` records it."""
    return {r.array: r for r in run_case(backend, golden.load(name, root), precision)}


def assert_all_pass(records, context):
    bad = {a: (r.status, r.message[:300]) for a, r in records.items() if r.status != "pass"}
    assert not bad, f"{context}: {bad}"
    assert all(r.max_ratio <= 1 for r in records.values())


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


def message_without(library: str, adapter: str) -> str:
    """The ImportError message of ``refws.backends.<module>:<Class>`` (``adapter``) constructed in a
    fresh interpreter where ``library`` cannot be imported."""
    module, cls = adapter.split(":")
    r = python(
        f"import sys; sys.modules[{library!r}] = None\n"
        f"from refws.backends.{module} import {cls}\n"
        f"try:\n    {cls}()\nexcept ImportError as e:\n    print(e)\n"
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


# --- elektronn3 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e3():
    pytest.importorskip("torch")
    pytest.importorskip(
        "elektronn3.modules.wsconv", reason="elektronn3 is not installed (pip install 'refws[elektronn3]')"
    )
    from refws.backends.elektronn3 import Elektronn3Backend

    return {p: Elektronn3Backend(p) for p in ("float64", "float32")} | {"fws": Elektronn3Backend(fws=True)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return golden_store(tmp_path_factory, NAMES, "e3_golden")


def _release(e3) -> str:
    return e3["float64"].version.split()[0]


def _pinned(e3, name, observed):
    """The message when a pinned defect no longer shows (a release that fixes it)."""
    return (
        f"elektronn3 {_release(e3)} on {name}: expected 0.1.1's defect ({observed}); if this release fixes "
        f"it, update docs/findings-draft-layers.md and this test (pinned to {OBSERVED})"
    )


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("name", PASSING)
def test_correct_cases_pass(e3, store, name, precision):
    assert_all_pass(golden_statuses(e3[precision], store, name, precision), name)


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("name", PADDING_MODE)
def test_wsconv_ignores_padding_mode(e3, store, name, precision):
    """WSConv*d call F.convNd directly: every padding_mode pads zeros, so border outputs are wrong."""
    rec = golden_statuses(e3[precision], store, name, precision)
    status = {a: r.status for a, r in rec.items()}
    expected = dict.fromkeys(("y", "dx", "dweight", "dgain", "ty"), "fail") | {"dbias": "pass"}
    assert status == expected, _pinned(e3, name, "padding_mode ignored")
    assert "border" in rec["y"].message  # only border outputs differ (interior is right)


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("name", TRANSPOSE2D)
def test_wsconvtranspose2d_convolves_the_raw_weight(e3, store, name, precision):
    rec = golden_statuses(e3[precision], store, name, precision)
    failing = {a for a, r in rec.items() if r.status == "fail"}
    assert failing == {"y", "dx", "dweight", "dgain", "ty"}, _pinned(e3, name, "raw weight")
    assert rec.get("dbias") is None or rec["dbias"].status == "pass"


def test_wsconvtranspose2d_output_is_the_unstandardized_transposed_conv(e3, store):
    """The diagnosis, checked independently: elektronn3's output is F.conv_transpose2d with the raw
    weight and its gain gets no gradient."""
    import torch

    case = golden.load(TRANSPOSE2D[0], store)
    inputs = {k: v for k, v in case.arrays.items() if "__" not in k}
    out = e3["float64"].layer(case.params, inputs)
    raw = torch.nn.functional.conv_transpose2d(
        torch.tensor(case["x"]), torch.tensor(case["weight"]), torch.tensor(case["bias"])
    )
    assert np.array_equal(out["y"], raw.numpy()), _pinned(e3, TRANSPOSE2D[0], "raw weight")
    assert not np.any(out["dgain"])


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_wsconvtranspose2d_ignores_output_size(e3, store, precision):
    rec = golden_statuses(e3[precision], store, OUTPUT_SIZE, precision)
    assert rec["y"].status == rec["ty"].status == "fail", _pinned(e3, OUTPUT_SIZE, "output_size ignored")
    assert "shape" in rec["y"].message
    case = golden.load(OUTPUT_SIZE, store)
    got = e3[precision].layer(case.params, {k: v for k, v in case.arrays.items() if "__" not in k})
    assert got["y"].shape[2:] != tuple(case.params["output_size"])
    # no VJP of a map whose output has another shape than the golden dy: not returned, skipped
    assert {a for a, r in rec.items() if r.status == "skipped"} == {"dx", "dweight", "dbias", "dgain"}


@pytest.mark.parametrize("name", TRANSPOSE3D)
def test_wsconvtranspose3d_raises_and_is_unimplemented(e3, store, name):
    rec = golden_statuses(e3["float64"], store, name, "float64")
    assert {r.status for r in rec.values()} == {"unimplemented"}, _pinned(e3, name, "calls conv_transpose2d")
    assert all("conv_transpose2d" in r.message for r in rec.values())


@pytest.mark.parametrize("name", [PADDING_MODE[1], OUTPUT_SIZE, TRANSPOSE3D[1]])
def test_fws_computes_the_documented_forward(e3, store, name):
    """FWS around PyTorch's own layer honours padding_mode and output_size and standardizes the
    transposed weight: y, dx, dbias pass; its other gradients are another map (skipped)."""
    rec = golden_statuses(e3["fws"], store, name, "float64")
    assert {a for a, r in rec.items() if r.status == "pass"} == {"y", "dx", "dbias"} & set(rec)
    assert {a for a, r in rec.items() if r.status == "skipped"} == {"dweight", "dgain", "ty"}


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("name", WS_PASSING)
def test_standardize_weight_passes_off_the_clamp(e3, store, name, precision):
    assert_all_pass(golden_statuses(e3[precision], store, name, precision), name)


def test_standardize_weight_clamps_with_a_float32_eps(e3, store):
    """On the clamp (var * N < eps) 0.1.1 uses torch.tensor(eps), a float32 scalar, even for a
    float64 weight: the float64 result fails by the relative 1.3e-8 of float32(1e-4) and matches
    refws with that eps; at float32 it is within the bound."""
    import refws

    tiny, constant = (golden_statuses(e3["float64"], store, n, "float64") for n in WS_CLAMPED)
    assert {a for a, r in tiny.items() if r.status == "fail"} == {"w_hat", "dw", "dgain", "tw_hat"}, _pinned(
        e3, WS_CLAMPED[0], "float32 eps"
    )
    assert {a for a, r in constant.items() if r.status == "fail"} == {"dw", "tw_hat"}, _pinned(
        e3, WS_CLAMPED[1], "float32 eps"
    )
    for name in WS_CLAMPED:
        assert_all_pass(golden_statuses(e3["float32"], store, name, "float32"), name)
    case = golden.load(WS_CLAMPED[0], store)
    kw = {"out_axis": case.params["out_axis"], "spec": "elektronn3"}
    got = e3["float64"].weight_standardize(case["w"], case["gain"], None, **kw)
    eps32 = float(np.float32(1e-4))
    want = refws.weight_standardize(case["w"], case["gain"], eps32, **kw)
    scale = np.max(np.abs(want))  # elektronn3 writes w * s - mean * s: an exact 0 comes out ~1e-21
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15 * scale)
    off = np.abs(got - case["w_hat"]) / scale
    assert np.max(off) > 1e-9  # the float64 eps, 1e-4, is a different map


def test_other_libraries_are_not_expressible(e3):
    with pytest.raises(NotExpressible, match="library='brainstate'"):
        e3["float64"].layer({"library": "brainstate", "cls": "Conv2d", "kwargs": {}}, {})
    with pytest.raises(NotExpressible, match="no WSConvTranspose1d"):
        e3["float64"].layer({"library": "elektronn3", "cls": "WSConvTranspose1d", "kwargs": {}}, {})
    with pytest.raises(NotExpressible, match="'elektronn3' preset only"):
        e3["float64"].weight_standardize(np.ones((3, 4)), None, None, out_axis=-1, spec="brainstate")


def test_parameters_of_the_wrong_layout_are_refused(e3, store):
    case = golden.load(PASSING[1], store)
    inputs = {k: v for k, v in case.arrays.items() if "__" not in k}
    inputs["weight"] = np.moveaxis(inputs["weight"], 0, -1)  # HWIO instead of OIHW
    with pytest.raises(ValueError, match="PyTorch layout"):
        e3["float64"].layer(case.params, inputs)


def test_float32_computes_in_float32(e3, store):
    case = golden.load(PASSING[1], store)
    out = e3["float32"].layer(case.params, {k: v for k, v in case.arrays.items() if "__" not in k})
    assert {v.dtype for v in out.values()} == {np.dtype(np.float32)}


def test_the_users_torch_rng_is_left_alone(e3, store):
    import torch

    case = golden.load(PASSING[1], store)
    torch.manual_seed(7)
    before = torch.rand(3)
    torch.manual_seed(7)
    e3["float64"].layer(case.params, {k: v for k, v in case.arrays.items() if "__" not in k})
    assert torch.equal(torch.rand(3), before)


def test_registered_and_versioned(e3):
    be = load_backend("elektronn3", precision="float32")
    assert (be.name, be.precision) == ("elektronn3", "float32")
    assert be.version.startswith(_release(e3) + " (torch ")
    assert load_backend("elektronn3", fws=True).name == "elektronn3-fws"
    with pytest.raises(ValueError, match="precision="):
        type(be)("float16")


# --- no framework needed ------------------------------------------------------------------------


def test_importing_refws_and_the_adapters_imports_no_framework():
    r = python(
        "import sys, refws, refws.backends\n"
        "import refws.backends.elektronn3, refws.backends.brainstate, refws.backends.timm\n"
        "frameworks = ('torch', 'elektronn3', 'brainstate', 'jax', 'timm', 'torchvision')\n"
        "hit = [m for m in frameworks if m in sys.modules]\n"
        "assert not hit, hit"
    )
    assert r.returncode == 0, r.stderr


def test_missing_elektronn3_says_how_to_install():
    assert "pip install 'refws[elektronn3]'" in message_without("elektronn3", "elektronn3:Elektronn3Backend")
