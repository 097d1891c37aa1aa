"""The ONNX adapters (refws/backends/onnx.py): onnxruntime and the reference evaluator.

References: the stored golden arrays (exact, independent of the adapters), judged by the runner
under each adapter's precision, and for the depthwise-bias bug a scatter definition of the
transposed convolution written here. The known bugs and refusals are pinned to the versions they
were observed on; a version that changes one makes its test fail with a message saying so.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from refws import golden
from refws.conformance.protocol import NotExpressible, Unimplemented
from refws.conformance.runner import run_case

ORT_OBSERVED_ON = "1.32.0"
ONNX_OBSERVED_ON = "1.23.2"

PASSING = [
    "conv/2d_pad_same",  # auto_pad SAME_UPPER
    "conv/2d_pad_same_lower",  # auto_pad SAME_LOWER
    "conv/same_stride2_n9_k4",  # SAME_UPPER, stride 2, even kernel
    "conv/2d_pad_valid",  # auto_pad VALID
    "conv/3d_pad_pairs_mixed",  # crops in NumPy, the rest as the node's pads
    "conv/2d_s2_lhs2_rhs2",  # lhs dilation in NumPy, rhs dilation as dilations
    "conv/1d_unbatched_channel_first",
    "conv/3d_channel_first_groups",
    "conv/2d_depthwise",
    "conv_transpose/2d_aniso",
    "conv_transpose/3d_output_size",  # output_size -> output_padding
    "conv_transpose/1d_output_padding",
    "conv_transpose/2d_unbatched",
    "conv_transpose/2d_channel_first",
    "conv_transpose/1d_no_bias",
]

# (backend, precision, case) -> (status of y, what)
KNOWN = {
    ("onnxruntime", "float32", "conv/2d_s1_lhs1_rhs2"): (
        "unimplemented",
        "auto_pad=SAME_UPPER with dilation > 1 refused",
    ),
    ("onnxruntime", "float32", "conv/1d_depthwise_mult2"): (
        "unimplemented",
        "auto_pad=SAME_UPPER with dilation > 1 refused",
    ),
    ("onnxruntime", "float32", "conv_transpose/2d_output_padding_dilation"): (
        "unimplemented",
        "output_padding 2 >= stride 1 (< dilation 3) refused",
    ),
    ("onnxruntime", "float32", "conv/2d_zero_size_valid"): (
        "unimplemented",
        "an empty output ONNX's formula gives is refused ('Invalid input shape')",
    ),
    ("onnxruntime", "float64", "conv/2d_pad_same"): ("unimplemented", "no float64 Conv kernel on the CPU"),
    ("onnxruntime", "float64", "conv_transpose/1d_no_bias"): (
        "unimplemented",
        "no float64 ConvTranspose kernel on the CPU",
    ),
    ("onnx-reference", "float64", "conv_transpose/2d_groups2_bias"): (
        "unimplemented",
        "ConvTranspose group > 1: reshape error",
    ),
    ("onnx-reference", "float64", "conv_transpose/1d_depthwise_bias"): (
        "unimplemented",
        "ConvTranspose group > 1: reshape error",
    ),
    ("onnx-reference", "float64", "conv_transpose/3d_output_padding_dilation"): (
        "unimplemented",
        "output_padding 2 >= stride 1 (< dilation 3): col2im size error",
    ),
    ("onnxruntime", "float32", "conv/1d_zero_size_crop"): ("not_expressible", "ONNX's output size would be negative"),
    ("onnx-reference", "float32", "conv/1d_zero_size_crop"): (
        "not_expressible",
        "ONNX's output size would be negative",
    ),
}


@pytest.fixture(scope="module")
def onnx_backends():
    pytest.importorskip("onnx")
    from refws.backends import onnx as module

    return module


@pytest.fixture(scope="module")
def ort_backend(onnx_backends):
    pytest.importorskip("onnxruntime")
    return onnx_backends.OnnxRuntimeBackend


def make(onnx_backends, name, precision):
    if name == "onnxruntime":
        pytest.importorskip("onnxruntime")
        return onnx_backends.OnnxRuntimeBackend(precision)
    return onnx_backends.OnnxReferenceBackend(precision)


def y_record(backend, name):
    recs = {r.array: r for r in run_case(backend, golden.load(name))}
    return recs["y"]


@pytest.mark.parametrize("backend_name", ["onnxruntime", "onnx-reference"])
@pytest.mark.parametrize("name", PASSING)
def test_golden_cases_pass_at_float32(onnx_backends, backend_name, name):
    y = y_record(make(onnx_backends, backend_name, "float32"), name)
    assert y.status == "pass", y.message


@pytest.mark.parametrize("name", PASSING)
def test_reference_evaluator_is_bit_exact_at_float64(onnx_backends, name):
    y = y_record(onnx_backends.OnnxReferenceBackend("float64"), name)
    assert y.status == "pass", y.message
    assert y.max_error == 0.0


@pytest.mark.parametrize("key", sorted(KNOWN))
def test_known_refusals_are_reported(onnx_backends, key):
    backend_name, precision, name = key
    expected, what = KNOWN[key]
    be = make(onnx_backends, backend_name, precision)
    y = y_record(be, name)
    observed_on = ORT_OBSERVED_ON if backend_name == "onnxruntime" else ONNX_OBSERVED_ON
    if y.status != expected:
        pytest.fail(
            f"{backend_name} {be.version} at {precision}: {name} is {y.status!r}, but was {expected!r} on "
            f"{observed_on} ({what}). Fixed or changed upstream? Update KNOWN and docs/findings-draft.md. "
            f"{y.message}"
        )


def _depthwise_transpose_by_definition(x, w, b, stride):
    """``y[n, i*s + t, c] += x[n, i, c] * w[t, 0, c]``, plus ``b[c]`` (group = channels, 1-D)."""
    n, length, c = x.shape
    k = w.shape[0]
    y = np.zeros((n, (length - 1) * stride + k, c))
    for i in range(length):
        for t in range(k):
            y[:, i * stride + t, :] += x[:, i, :] * w[t, 0, :]
    return y + b


def test_reference_evaluator_depthwise_transpose_adds_the_first_bias_to_every_channel(onnx_backends):
    """onnx 1.23.2's ConvTranspose with group = C_in = C_out runs each group with the whole B and
    keeps B[0]: channel c is off by exactly b[0] - b[c]. Without a bias it is right."""
    rng = np.random.default_rng(1)
    x = rng.integers(-8, 8, (2, 5, 3)).astype(float)
    w = rng.integers(-8, 8, (3, 1, 3)).astype(float)
    b = np.array([1.0, 2.0, 5.0])
    be = onnx_backends.OnnxReferenceBackend("float64")
    exact = _depthwise_transpose_by_definition(x, w, b, 2)
    no_bias = be.conv_transpose(x, w, stride=2, groups=3)
    np.testing.assert_array_equal(no_bias, exact - b)
    got = be.conv_transpose(x, w, stride=2, groups=3, bias=b)
    if np.array_equal(got, exact):
        pytest.fail(
            f"onnx {be.version}: depthwise ConvTranspose with bias is right now (wrong on "
            f"{ONNX_OBSERVED_ON}): update docs/findings-draft.md and this test"
        )
    np.testing.assert_array_equal(got - exact, np.broadcast_to(b[0] - b, got.shape))


def test_onnxruntime_depthwise_transpose_with_bias_is_right(ort_backend):
    rng = np.random.default_rng(1)
    x = rng.integers(-8, 8, (2, 5, 3)).astype(float)
    w = rng.integers(-8, 8, (3, 1, 3)).astype(float)
    b = np.array([1.0, 2.0, 5.0])
    got = ort_backend("float32").conv_transpose(x, w, stride=2, groups=3, bias=b)
    np.testing.assert_array_equal(got, _depthwise_transpose_by_definition(x, w, b, 2))


def test_string_padding_is_the_nodes_auto_pad(onnx_backends):
    """SAME stays the node's auto_pad (its padding logic is judged); pairs become pads, crops go to NumPy."""
    _, attrs, _ = onnx_backends.conv_node_args((1, 9, 2), (3, 2, 2), padding="same")
    assert attrs["auto_pad"] == "SAME_UPPER" and "pads" not in attrs
    _, attrs, _ = onnx_backends.conv_node_args((1, 9, 2), (3, 2, 2), padding="SAME_LOWER")
    assert attrs["auto_pad"] == "SAME_LOWER"
    _, attrs, prepare = onnx_backends.conv_node_args((1, 9, 2), (3, 2, 2), padding=[(2, -1)])
    assert attrs["pads"] == [2, 0] and "auto_pad" not in attrs
    assert prepare(np.arange(9.0).reshape(1, 1, 9)).ravel().tolist() == list(range(8))


def test_output_size_becomes_output_padding(onnx_backends):
    """PyTorch: 6 inputs, stride 2, k 3, p 1 give 11 outputs; output_size 12 means output_padding 1."""
    _, attrs = onnx_backends.transpose_node_args((1, 6, 3), (3, 4, 3), stride=2, padding=1, output_size=[12])
    assert attrs["output_padding"] == [1] and attrs["pads"] == [1, 1]


def test_negative_onnx_output_size_is_not_expressible(onnx_backends):
    with pytest.raises(NotExpressible, match="negative"):
        onnx_backends.OnnxReferenceBackend().conv(np.ones((1, 4, 2)), np.ones((2, 2, 2)), padding=[(-3, -1)])


def test_runtime_refusal_is_unimplemented(ort_backend):
    with pytest.raises(Unimplemented, match="float64"):
        ort_backend("float64").conv(np.ones((1, 5, 2)), np.ones((3, 2, 2)), padding="VALID")


def test_forward_only(onnx_backends):
    be = onnx_backends.OnnxReferenceBackend()
    recs = run_case(be, golden.load("conv_transpose/2d_unbatched"))
    assert {r.array: r.status for r in recs if r.array != "y"} == dict.fromkeys(("dx", "dw", "db", "ty"), "skipped")


def test_attributes_and_precision(onnx_backends):
    import onnx

    be = onnx_backends.OnnxReferenceBackend()
    assert (be.name, be.precision) == ("onnx-reference", "float32")
    assert be.version.startswith(onnx.__version__)
    with pytest.raises(ValueError, match="precision='float16'"):
        onnx_backends.OnnxReferenceBackend("float16")


def test_missing_onnx_says_how_to_install(onnx_backends, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'refws\[onnx\]'"):
        onnx_backends.OnnxReferenceBackend()


def test_missing_onnxruntime_says_how_to_install(onnx_backends, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'refws\[onnx\]'"):
        onnx_backends.OnnxRuntimeBackend()


def test_registered_as_builtin():
    from refws.conformance.registry import BUILTIN

    assert BUILTIN["onnxruntime"] == "refws.backends.onnx:OnnxRuntimeBackend"
    assert BUILTIN["onnx-reference"] == "refws.backends.onnx:OnnxReferenceBackend"


def test_onnxruntime_without_opset_22_gets_opset_11_models(ort_backend, monkeypatch):
    """An onnxruntime that cannot load opset 22 (before 1.20) is given opset-11 models (same Conv)."""
    import onnx
    import onnxruntime

    real = onnxruntime.InferenceSession

    def old_runtime(model_bytes, *args, **kwargs):
        if onnx.load_from_string(model_bytes).opset_import[0].version > 21:
            raise RuntimeError("opset 22 is not supported")
        return real(model_bytes, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", old_runtime)
    be = ort_backend()
    assert be.opset == 11 and be.version.endswith("opset 11)")
    y = be.conv(np.ones((1, 5, 2)), np.ones((3, 2, 1)), padding="VALID")
    np.testing.assert_array_equal(y, np.full((1, 3, 1), 6.0))
