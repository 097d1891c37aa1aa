"""The built-in torch adapter (refws/backends/torch.py) against the exact golden values.

The references are the stored golden arrays, which are exact (bilinear outputs) or correctly
rounded (WS and layer outputs), so they are independent of the adapter. The bounds are the ones
docs/golden-format.md and docs/conformance.md state, applied by ``refws.testing.check_golden``
from the stored bound data (``terms``, ``__absbound``, ``__wsbound``): rigorous for bilinear
outputs, first-order where a weight standardization is involved. At float64 torch is bit-exact
on the bilinear outputs (no rounding happens at all), which is asserted separately.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import refws.golden as golden  # noqa: E402
from refws.backends.torch import TorchBackend  # noqa: E402
from refws.conformance.protocol import NotExpressible, Unimplemented  # noqa: E402
from refws.testing import check_golden  # noqa: E402


CASES = {
    "conv": [
        "conv/2d_aniso",
        "conv/1d_unbatched_channel_first",
        "conv/3d_pad_pairs_mixed",
        "conv/2d_depthwise_mult2",
        "conv/same_lower_stride2_k4",
        "conv/2d_zero_batch",
        "conv/3d_channel_first_groups",
    ],
    "conv_transpose": [
        "conv_transpose/1d_output_padding_dilation",
        "conv_transpose/2d_groups4_bias_output_padding",
        "conv_transpose/3d_output_size",
        "conv_transpose/2d_unbatched",
        "conv_transpose/2d_channel_first",
        "conv_transpose/1d_no_bias",
    ],
    "ws": [
        "ws/qiao_hwio_constant",
        "ws/elektronn3_oihw",
        "ws/timm_scaled_linear",
        "ws/brainstate_hwio_tiny",
        "ws/bit_hwio_no_gain",
        "ws/timm_std_oihw_eps_1e-2",
    ],
    "brainstate": [
        "brainstate/Conv2d_lhs_dilation_pairs",
        "brainstate/ScaledWSConv2d_channel_first_unbatched",
        "brainstate/ScaledWSLinear_mask",
        "brainstate/Linear_no_bias",
        "brainstate/ScaledWSConv1d_no_gain",
        "brainstate/Conv3d_groups_stride",
        "brainstate/ConvTranspose2d_pairs_neg_mask",
        "brainstate/ConvTranspose3d_s3_valid_groups2_channel_first",
    ],
    "elektronn3": [
        "elektronn3/WSConv2d_reflect",
        "elektronn3/WSConv3d_circular",
        "elektronn3/WSConv1d_same_dilation",
        "elektronn3/WSConvTranspose2d_output_size",
        "elektronn3/WSConvTranspose3d_groups_dilation_no_bias",
    ],
}

_BACKENDS = {}


def backend(precision) -> TorchBackend:
    if precision not in _BACKENDS:
        _BACKENDS[precision] = TorchBackend(precision)
    return _BACKENDS[precision]


def _without(params, *keys):
    return {k: v for k, v in params.items() if k not in keys}


def outputs(be, case) -> dict:
    """Every output of ``case`` the adapter computes, by golden name (as the protocol's runner calls it)."""
    p = case.params
    if case.suite == "conv":
        kw = _without(p, "x_shape", "w_shape", "note")
        (dx, dw), (_, ty) = (
            be.conv_vjp(case["x"], case["w"], case["dy"], **kw),
            be.conv_jvp(case["x"], case["w"], case["tx"], case["tw"], **kw),
        )
        return dict(y=be.conv(case["x"], case["w"], **kw), dx=dx, dw=dw, ty=ty)
    if case.suite == "conv_transpose":
        kw = _without(p, "x_shape", "w_shape", "note", "bias")
        b, tb = (case["b"], case["tb"]) if p["bias"] else (None, None)
        grads = be.conv_transpose_vjp(case["x"], case["w"], case["dy"], bias=b, **kw)
        _, ty = be.conv_transpose_jvp(case["x"], case["w"], case["tx"], case["tw"], bias=b, tbias=tb, **kw)
        out = dict(y=be.conv_transpose(case["x"], case["w"], bias=b, **kw), dx=grads[0], dw=grads[1], ty=ty)
        if b is not None:
            out["db"] = grads[2]
        return out
    if case.suite == "ws":
        kw = dict(eps=p["eps"], out_axis=p["out_axis"], spec=p["spec"])
        gain, tgain = (case["gain"], case["tgain"]) if p["gain"] else (None, None)
        dw, dgain = be.weight_standardize_vjp(case["w"], case["dw_hat"], gain, **kw)
        _, tw_hat = be.weight_standardize_jvp(case["w"], case["tw"], gain, tgain, **kw)
        out = dict(w_hat=be.weight_standardize(case["w"], gain, **kw), dw=dw, tw_hat=tw_hat)
        if gain is not None:
            out["dgain"] = dgain
        return out
    inputs = {
        k: v
        for k, v in case.arrays.items()
        if "__" not in k and k not in ("y", "dx", "dweight", "dbias", "dgain", "ty")
    }
    return be.layer(p, inputs)


def standardized(case) -> bool:
    """Whether the case's outputs go through a weight standardization (else they are bilinear)."""
    return case.suite in ("ws", "elektronn3") or case.params.get("cls", "").startswith("ScaledWS")


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("name", [n for names in CASES.values() for n in names])
def test_golden_case_within_documented_bound(name, precision):
    if name not in golden.store.read_manifest()["cases"]:
        pytest.skip(f"{name} is in the catalog but not yet in this golden store (rebuild golden/)")
    case = golden.load(name)
    got = outputs(backend(precision), case)
    expected = {k for k in case.arrays if "__" not in k and (k in got or k in ("y", "dx", "ty"))}
    assert expected <= set(got), f"{name}: missing outputs {expected - set(got)}"
    for array, value in got.items():
        exact = case[array]
        value = np.asarray(value, dtype=np.float64)
        assert value.shape == exact.shape, (name, array)
        assert np.all(np.isfinite(value)), (name, array)
        if precision == "float64" and not standardized(case):
            assert np.array_equal(value, exact), f"{name} {array}: float64 torch should be bit-exact"
        result = check_golden(value, case, array, precision=precision)  # the bound of docs/conformance.md
        assert result.status != "fail", result.text


def test_float32_rounds_its_inputs():
    """The float32 backend really computes in float32 (else the bound checks above prove little):
    ``1 + 2**-30`` has no float32 representation and becomes 1."""
    x, w = np.full((1, 3, 1), 1 + 2.0**-30), np.ones((1, 1, 1))
    y32, y64 = backend("float32").conv(x, w, padding="VALID"), backend("float64").conv(x, w, padding="VALID")
    assert y32.dtype == np.float32 and np.all(y32 == 1.0)
    assert y64.dtype == np.float64 and np.all(y64 == 1 + 2.0**-30)


# --- what torch cannot say, or refuses --------------------------------------------------------


def test_zero_size_output_is_not_expressible():
    case = golden.load("conv/2d_zero_size_valid")
    be, kw = backend("float64"), _without(case.params, "x_shape", "w_shape")
    calls = [
        lambda: be.conv(case["x"], case["w"], **kw),
        lambda: be.conv_vjp(case["x"], case["w"], case["dy"], **kw),
        lambda: be.conv_jvp(case["x"], case["w"], case["tx"], case["tw"], **kw),
    ]
    for call in calls:
        with pytest.raises(NotExpressible, match="zero-size outputs"):
            call()


def test_zero_size_layer_output_is_not_expressible():
    params = dict(
        library="brainstate",
        cls="Conv1d",
        x_shape=[1, 2, 1],
        mask=False,
        kwargs=dict(in_size=[2, 1], out_channels=1, kernel_size=3, padding="VALID"),
    )
    z = np.zeros
    arrays = dict(x=z((1, 2, 1)), weight=z((3, 1, 1)), dy=z((1, 0, 1)), tx=z((1, 2, 1)), tweight=z((3, 1, 1)))
    with pytest.raises(NotExpressible, match="zero-size outputs"):
        backend("float64").layer(params, arrays)


def test_not_implemented_in_torch_is_unimplemented(monkeypatch):
    def refuse(*args, **kwargs):
        raise NotImplementedError("conv2d: no kernel for this device (simulated)")

    monkeypatch.setattr(torch.nn.functional, "conv2d", refuse)
    case = golden.load("conv/2d_pad_same")
    be, kw = backend("float32"), _without(case.params, "x_shape", "w_shape")
    with pytest.raises(Unimplemented, match="simulated"):
        be.conv(case["x"], case["w"], **kw)
    with pytest.raises(Unimplemented, match="simulated"):
        be.conv_jvp(case["x"], case["w"], case["tx"], case["tw"], **kw)


# --- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["float16", "tf32", "bfloat16", None, 64])
def test_precision_is_validated(precision):
    with pytest.raises(ValueError, match="precision="):
        TorchBackend(precision)


def test_device_is_validated():
    with pytest.raises(ValueError, match="device="):
        TorchBackend(device="no_such_device")


def test_attributes():
    be = TorchBackend("float32")
    assert (be.name, be.precision, be.version) == ("torch", "float32", torch.__version__)
    assert TorchBackend().precision == "float64"


def test_cuda_float32_is_judged_as_tf32_while_cudnn_uses_it():
    """``precision`` follows cuDNN's TF32 flag on CUDA (the device is only read, never used here)."""
    be32, be64 = TorchBackend("float32"), TorchBackend("float64")
    be32.device = be64.device = torch.device("cuda")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
        assert (be32.precision, be64.precision) == ("tf32", "float64")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        assert be32.precision == "float32"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_importing_refws_does_not_import_torch():
    r = _python(
        "import sys, refws, refws.backends, refws.backends.torch; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    assert r.returncode == 0, r.stderr


def test_missing_torch_says_how_to_install():
    r = _python(
        "import sys; sys.modules['torch'] = None\n"
        "from refws.backends.torch import TorchBackend\n"
        "try:\n    TorchBackend()\nexcept ImportError as e:\n    print(e)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "pip install 'refws[torch]'" in r.stdout


def test_case_lists_cover_every_suite():
    stored = golden.store.read_manifest()["cases"]
    assert set(CASES) == {entry["suite"] for entry in stored.values()}
