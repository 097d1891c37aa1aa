"""The built-in jax adapter (refws/backends/jax.py) against the exact golden values.

The references are the stored golden arrays, exact (bilinear outputs) or correctly rounded (WS
and layer outputs), so they are independent of the adapter. Each case goes through the runner's
``run_case``, i.e. called exactly as ``refws check jax`` calls it and judged by the bounds
docs/golden-format.md states (``refws.testing.check_golden``: rigorous for bilinear outputs,
first-order where a weight standardization is involved). At float64 jax.lax performs no rounding
at all on the bilinear outputs, so there the error itself must be 0.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import refws.golden as golden  # noqa: E402
from refws.backends.jax import JaxBackend, judged_precision  # noqa: E402
from refws.conformance.protocol import NotExpressible, Unimplemented  # noqa: E402
from refws.conformance.runner import run_case  # noqa: E402
from refws.golden.case import SUITES  # noqa: E402

CASES = {
    "conv": [
        "conv/2d_aniso",
        "conv/1d_unbatched_channel_first",
        "conv/3d_pad_pairs_mixed",
        "conv/same_lower_stride2_k4",
        "conv/2d_pad_same_lowercase",
        "conv/1d_zero_size_crop",
        "conv/2d_zero_batch",
        "conv/3d_channel_first_groups",
    ],
    "conv_transpose": [
        "conv_transpose/1d_output_padding_dilation",
        "conv_transpose/2d_groups4_bias_output_padding",
        "conv_transpose/3d_output_size",
        "conv_transpose/2d_unbatched",
        "conv_transpose/2d_channel_first",
        "conv_transpose/2d_aniso",
    ],
    "ws": [
        "ws/qiao_hwio_constant",
        "ws/elektronn3_oihw",
        "ws/timm_scaled_linear",
        "ws/brainstate_hwio_tiny",
        "ws/bit_hwio_no_gain",
        "ws/nfnets_hwio_constant",
    ],
    "brainstate": [
        "brainstate/Conv2d_lhs_dilation_pairs",
        "brainstate/ScaledWSConv2d_channel_first_unbatched",
        "brainstate/ScaledWSLinear_mask",
        "brainstate/ConvTranspose2d_pairs_neg_mask",
        "brainstate/ConvTranspose2d_s2_same_groups2_bias",
        "brainstate/ConvTranspose3d_s3_valid_groups2_channel_first",
    ],
    "elektronn3": [
        "elektronn3/WSConv2d_reflect",
        "elektronn3/WSConv1d_circular",
        "elektronn3/WSConv1d_same_dilation",
        "elektronn3/WSConvTranspose2d_output_size",
    ],
}

_BACKENDS = {}


def backend(precision="float64", lax_precision="highest") -> JaxBackend:
    key = (precision, lax_precision)
    if key not in _BACKENDS:
        _BACKENDS[key] = JaxBackend(precision, lax_precision)
    return _BACKENDS[key]


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("name", [n for names in CASES.values() for n in names])
def test_golden_case_within_documented_bound(name, precision):
    case = golden.load(name)
    records = run_case(backend(precision), case, diagnose=None)
    assert {r.array for r in records} == set(case.terms)  # every output computed and judged
    bad = [(r.array, r.status, r.message) for r in records if r.status != "pass"]
    assert not bad, bad
    if precision == "float64" and case.suite in ("conv", "conv_transpose"):
        assert all(r.max_error == 0 for r in records), [(r.array, r.max_error) for r in records]


def test_default_lax_precision_runs_on_cpu_as_float32():
    be = backend("float32", "default")
    assert be.precision == "float32"  # CPU: no reduced-precision path
    for name in ("conv/2d_aniso", "conv_transpose/2d_aniso"):
        assert all(r.status == "pass" for r in run_case(be, golden.load(name), diagnose=None))


def test_fast_compile_gives_the_same_convolution_bits():
    case = golden.load("conv/2d_aniso")
    p = {k: case.params[k] for k in ("stride", "padding", "lhs_dilation", "rhs_dilation", "groups", "channel_first")}
    fast, default = JaxBackend("float32"), JaxBackend("float32", fast_compile=False)
    for method, args in (("conv", ("x", "w")), ("conv_vjp", ("x", "w", "dy"))):
        a, b = (getattr(be, method)(*(case[k] for k in args), **p) for be in (fast, default))
        a, b = (r if isinstance(r, tuple) else (r,) for r in (a, b))
        assert all(u.tobytes() == v.tobytes() for u, v in zip(a, b))


def test_outputs_have_the_backend_dtype():
    case = golden.load("conv/2d_aniso")
    p = {k: case.params[k] for k in ("stride", "padding", "lhs_dilation", "rhs_dilation", "groups", "channel_first")}
    assert backend("float32").conv(case["x"], case["w"], **p).dtype == np.float32
    assert backend("float64").conv(case["x"], case["w"], **p).dtype == np.float64


def test_crop_beyond_the_input_is_unimplemented_by_lax():
    x, w = np.ones((1, 4, 2)), np.ones((2, 2, 3))
    with pytest.raises(Unimplemented, match="Negative padding is larger"):
        backend().conv(x, w, padding=[[-3, -3]])
    assert backend().conv(x, w, padding=[[-3, -1]]).shape == (1, 0, 3)  # a crop to exactly 0 is fine


def test_unknown_layer_is_not_expressible():
    case = golden.load("brainstate/Conv2d_lhs_dilation_pairs")
    inputs = {k: v for k, v in case.arrays.items() if k in ("x", "weight", "bias", "dy", "tx", "tweight", "tbias")}
    for params in (dict(case.params, cls="BatchNorm2d"), dict(case.params, library="flax")):
        with pytest.raises(NotExpressible, match="jax adapter translates"):
            backend().layer(params, inputs)


def test_string_padding_with_lhs_dilation_is_refused():
    with pytest.raises(ValueError, match="lhs_dilation"):
        backend().conv(np.ones((1, 5, 2)), np.ones((3, 2, 2)), padding="SAME", lhs_dilation=2)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(precision="float16"), "precision"),
        (dict(precision=64), "precision"),
        (dict(lax_precision="high"), "lax_precision"),
        (dict(lax_precision=None), "lax_precision"),
        (dict(fast_compile="yes"), "fast_compile"),
    ],
)
def test_arguments_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=name) as info:
        JaxBackend(**kwargs)
    if name != "fast_compile":
        assert "expected one of" in str(info.value)


def test_attributes():
    be = backend("float64")
    assert (be.name, be.version, be.precision) == ("jax", jax.__version__, "float64")
    assert jax.config.jax_enable_x64


def test_declared_precision_per_platform():
    assert judged_precision("float32", "default", "gpu") == "tf32"
    assert judged_precision("float32", "default", "tpu") == "bf16x1"
    assert judged_precision("float32", "highest", "gpu") == "float32"
    assert judged_precision("float32", "default", "cpu") == "float32"
    assert judged_precision("float64", "default", "gpu") == "float64"


def test_float64_refuses_to_run_once_x64_is_turned_off():
    be = backend("float64")
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(RuntimeError, match="x64"):
            be.conv(np.ones((1, 4, 1)), np.ones((2, 1, 1)))
    finally:
        jax.config.update("jax_enable_x64", True)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_refws_does_not_import_jax():
    res = _python("import sys, refws, refws.backends, refws.conformance; print('jax' in sys.modules)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_missing_jax_says_how_to_install():
    res = _python(
        "import sys; sys.modules['jax'] = None\n"
        "from refws.backends.jax import JaxBackend\n"
        "try:\n    JaxBackend()\nexcept ImportError as e:\n    print(e)"
    )
    assert res.returncode == 0, res.stderr
    assert "pip install 'refws[jax]'" in res.stdout


def test_case_lists_cover_every_suite():
    assert set(CASES) == set(SUITES)
