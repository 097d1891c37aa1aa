"""The timm adapter (refws/backends/timm.py): timm's StdConv2d / ScaledStdConv2d weight standardization.

The references are the ``ws`` golden cases of the ``timm_std`` / ``timm_scaled`` presets, built here
from the catalog and judged by the runner as ``refws check timm`` judges them. timm computes what
those presets say, so every case it can express must pass (no false alarms) at float64 and float32;
``timm_std`` with a gain (StdConv2d has none), the other presets and the conv suite are not
expressible.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import numpy as np
import pytest

from refws.conformance import NotExpressible, Unimplemented, load_backend
from refws.golden.catalog import WS_PRESET_NAMES
from spec_tests.test_backend_elektronn3 import assert_all_pass, golden_statuses, golden_store, message_without

SCALED = [
    "ws/timm_scaled_hwio",
    "ws/timm_scaled_oihw",
    "ws/timm_scaled_linear",
    "ws/timm_scaled_dhwio",
    "ws/timm_scaled_hwio_no_gain",
    "ws/timm_scaled_hwio_tiny",
    "ws/timm_scaled_hwio_constant",
    "ws/timm_scaled_oihw_eps_1e-2",
]
STD = ["ws/timm_std_hwio_no_gain"]
STD_WITH_GAIN = ["ws/timm_std_oihw", "ws/timm_std_hwio_tiny"]
OTHER = ["ws/brainstate_oihw", "ws/bit_hwio_no_gain"]
NAMES = SCALED + STD + STD_WITH_GAIN + OTHER


@pytest.fixture(scope="module")
def timm():
    pytest.importorskip("torch")
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (pip install 'refws[timm]')")
    from refws.backends.timm import TimmBackend

    try:
        return {p: TimmBackend(p) for p in ("float64", "float32")}
    except ImportError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return golden_store(tmp_path_factory, NAMES, "timm_golden")


def test_the_presets_cover_the_ws_catalog():
    assert {"timm_std", "timm_scaled"} <= set(WS_PRESET_NAMES)


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("name", SCALED + STD)
def test_its_presets_pass(timm, store, name, precision):
    assert_all_pass(golden_statuses(timm[precision], store, name, precision), name)


@pytest.mark.parametrize("name", STD_WITH_GAIN + OTHER)
def test_what_timm_cannot_say_is_not_expressible(timm, store, name):
    rec = golden_statuses(timm["float64"], store, name, "float64")
    assert {r.status for r in rec.values()} == {"not_expressible"}
    reason = "has no gain" if name in STD_WITH_GAIN else "compute only the presets"
    assert all(reason in r.message for r in rec.values())


def test_conv_is_not_expressible(timm):
    x, w = np.ones((1, 3, 3, 2)), np.ones((3, 3, 2, 2))
    for call in (
        lambda b: b.conv(x, w),
        lambda b: b.conv_vjp(x, w, np.ones((1, 3, 3, 2))),
        lambda b: b.conv_jvp(x, w, x, w),
    ):
        with pytest.raises(NotExpressible, match="no plain convolution"):
            call(timm["float64"])


def test_standardized_weight_is_timms_forward(timm):
    """The value read from the identity input equals timm's own layer output on a real input:
    StdConv2d(x) == conv2d(x, w_hat) with w_hat from the adapter (OIHW weight, out_axis 0)."""
    import torch

    rng = np.random.default_rng(3)
    w, x = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=(2, 3, 6, 6))
    w_hat = timm["float64"].weight_standardize(w, None, 1e-6, out_axis=0, spec="timm_std")
    layer = timm["float64"]._std(3, 4, 3, padding=0, bias=False, eps=1e-6).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w))
        want = layer(torch.tensor(x))
    got = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w_hat))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-13)


def test_one_weight_per_channel_is_unimplemented(timm):
    with pytest.raises(Unimplemented, match="one weight element per output channel"):
        timm["float64"].weight_standardize(np.ones((1, 4)), np.ones(4), None, out_axis=-1, spec="timm_scaled")


def test_float32_computes_in_float32(timm):
    w = np.arange(24.0).reshape(2, 3, 4) + 2.0**-30
    assert timm["float32"].weight_standardize(w, None, None, out_axis=-1, spec="timm_std").dtype == np.float32


def test_registered_and_versioned(timm):
    be = load_backend("timm", precision="float32")
    assert (be.name, be.precision) == ("timm", "float32")
    assert be.version.split()[0] == importlib.metadata.version("timm")
    if be.loaded_from != "timm.layers":  # timm's package __init__ needs torchvision
        assert "torchvision" in be.loaded_from and be.version.endswith("loaded without torchvision")


def test_missing_timm_says_how_to_install():
    assert "pip install 'refws[timm]'" in message_without("timm", "timm:TimmBackend")
