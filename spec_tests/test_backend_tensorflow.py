"""The ``tensorflow`` adapter (refws/backends/tensorflow.py) against the exact golden values.

References: the stored golden arrays (exact, independent of the adapter), judged by the runner
under the adapter's precision, and for the empty-output bugs the shapes and zeros that the
definition gives (an empty output has no elements; a weight gradient summed over no elements is
0). The CPU kernels' refusals and the bugs are pinned to the TensorFlow version they were
observed on; a version that changes one makes its test fail with a message saying so.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from refws import golden
from refws.conformance.protocol import NotExpressible, Unimplemented
from refws.conformance.runner import run_case

OBSERVED_ON = "2.21.0"

PASSING_F32 = [
    "conv/2d_pad_same",  # TF's own SAME
    "conv/same_stride2_n8_k4",
    "conv/2d_pad_same_lower",  # explicit pads of conv2d
    "conv/1d_pad_same_lower",  # tf.pad + VALID
    "conv/3d_pad_pairs_mixed",  # crops + tf.pad
    "conv/1d_s2_lhs2_rhs2",  # lhs dilation in TF, stride with dilation (raw op)
    "conv/2d_groups2",
    "conv/2d_channel_first",  # NCHW (oneDNN)
    "conv/2d_unbatched",
    "conv_transpose/2d_s2_p1_d1",  # explicit pads of conv2d_transpose
    "conv_transpose/2d_output_padding",  # output_padding > padding: VALID, crop, zero-extend
    "conv_transpose/1d_output_padding_dilation",
    "conv_transpose/3d_output_size",
    "conv_transpose/2d_unbatched",
    "conv_transpose/1d_no_bias",
]
PASSING_F64 = [
    "conv/2d_pad_same",
    "conv/2d_pad_same_lower",
    "conv/3d_pad_pairs_mixed",
    "conv_transpose/2d_s2_p1_d1",
    "conv_transpose/2d_output_padding",
]

# (precision, case, array) -> (status, what)
KNOWN = {
    ("float32", "conv/2d_zero_size_valid", "y"): (
        "fail",
        "oneDNN Conv2D returns an input-shaped tensor of uninitialised memory for an empty output",
    ),
    ("float32", "conv/3d_pad_int_neg", "y"): ("fail", "oneDNN Conv3D: the same, in 3-D"),
    ("float32", "conv/3d_groups2", "y"): ("unimplemented", "no grouped Conv3D kernel"),
    ("float32", "conv/2d_s1_lhs2_rhs2", "dx"): (
        "unimplemented",
        "explicit padding + dilation: Conv2DBackpropInput refuses dilation",
    ),
    ("float32", "conv_transpose/2d_s1_p0_d2", "y"): (
        "unimplemented",
        "explicit padding + dilation: Conv2DBackpropInput refuses dilation",
    ),
    ("float64", "conv/2d_channel_first", "y"): ("unimplemented", "no NCHW Conv2D kernel on the CPU"),
    ("float64", "conv/2d_groups2", "dx"): ("unimplemented", "no gradient for grouped convolutions on the CPU"),
    ("float64", "conv/3d_s1_lhs1_rhs2", "y"): ("unimplemented", "no dilated Conv3D kernel on the CPU"),
    ("float64", "conv/2d_s1_lhs1_rhs2", "dx"): ("unimplemented", "Conv2DBackpropInput refuses dilation"),
    ("float64", "conv_transpose/3d_s1_p0_d2", "y"): ("unimplemented", "Conv3DBackpropInputV2 refuses dilation"),
    ("float32", "conv/1d_zero_size_crop", "y"): ("not_expressible", "TF's output size would be negative"),
    ("float32", "conv_transpose/2d_groups2_bias", "y"): ("not_expressible", "no groups in conv2d_transpose"),
}


@pytest.fixture(scope="module")
def tf_backend():
    pytest.importorskip("tensorflow")
    from refws.backends.tensorflow import TensorflowBackend

    return TensorflowBackend


@pytest.fixture(scope="module")
def f32(tf_backend):
    return tf_backend("float32")


@pytest.fixture(scope="module")
def f64(tf_backend):
    return tf_backend("float64")


def records(backend, name) -> dict:
    # db has no bound data in the store yet: the runner reports it as a store error, not the adapter's.
    return {r.array: r for r in run_case(backend, golden.load(name)) if not r.message.startswith("golden store:")}


@pytest.mark.parametrize("name", PASSING_F32)
def test_golden_cases_pass_at_float32_forward_vjp_and_jvp(f32, name):
    recs = records(f32, name)
    assert {"y", "dx", "dw", "ty"} <= set(recs)
    bad = {a: r.message for a, r in recs.items() if r.status != "pass"}
    assert not bad


@pytest.mark.parametrize("name", PASSING_F64)
def test_golden_cases_are_bit_exact_at_float64(f64, name):
    for array, r in records(f64, name).items():
        assert r.status == "pass", (array, r.message)
        assert r.max_error == 0.0, array


@pytest.mark.parametrize("key", sorted(KNOWN))
def test_known_bugs_and_refusals_are_reported(tf_backend, f32, f64, key):
    precision, name, array = key
    expected, what = KNOWN[key]
    be = f32 if precision == "float32" else f64
    r = records(be, name)[array]
    if r.status != expected:
        pytest.fail(
            f"TensorFlow {be.version} at {precision}: {name}:{array} is {r.status!r}, but was {expected!r} "
            f"on {OBSERVED_ON} ({what}). Fixed or changed upstream? Update KNOWN and "
            f"docs/findings-draft.md. {r.message}"
        )


def test_float32_empty_output_comes_back_with_the_input_shape(f32):
    """oneDNN's Conv2D (float32) for a 2x5 input and a 3x3 kernel: the output must be (2, 0, 3, 2)."""
    y = f32.conv(np.ones((2, 2, 5, 3)), np.ones((3, 3, 3, 2)), padding="VALID")
    assert y.shape == (2, 2, 5, 3), (
        f"TensorFlow {f32.version} returns {y.shape} (the input's shape on "
        f"{OBSERVED_ON}); (2, 0, 3, 2) is right: fixed upstream?"
    )


def test_float64_weight_gradient_of_an_empty_output_is_uninitialised(f64):
    """dw of a convolution with no outputs sums nothing, so it is 0; TensorFlow's float64
    Conv2DBackpropFilter returns memory it never wrote (NaN, 1e242, ... or, by chance, 0)."""
    x, w, dy = np.ones((2, 2, 5, 3)), np.ones((3, 3, 3, 2)), np.zeros((2, 0, 3, 2))
    dws = [f64.conv_vjp(x, w, dy, padding="VALID")[1] for _ in range(5)]
    assert all(dw.shape == w.shape for dw in dws)
    if all(np.array_equal(dw, np.zeros_like(w)) for dw in dws):
        pytest.fail(f"TensorFlow {f64.version}: dw is 0 in five runs; it was uninitialised on {OBSERVED_ON}: fixed?")


def test_transposed_groups_are_not_expressible(f32):
    with pytest.raises(NotExpressible, match="no groups"):
        f32.conv_transpose(np.ones((1, 4, 4)), np.ones((3, 2, 4)), stride=2, groups=2)


def test_cpu_refusal_is_unimplemented(f64):
    with pytest.raises(Unimplemented, match="NHWC"):
        f64.conv(np.ones((1, 3, 5, 5)), np.ones((3, 3, 3, 2)), channel_first=True)


def test_attributes_and_precision(tf_backend, f32):
    import tensorflow as tf

    assert (f32.name, f32.precision, f32.version) == ("tensorflow", "float32", tf.__version__)
    assert tf_backend().precision == "float32"
    with pytest.raises(ValueError, match="precision='bfloat16'"):
        tf_backend("bfloat16")


def test_missing_tensorflow_says_how_to_install(tf_backend, monkeypatch):
    import refws.backends.tensorflow as module

    monkeypatch.setattr(module, "tf", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match=r"pip install 'refws\[tensorflow\]'"):
        tf_backend()


def test_registered_as_builtin():
    from refws.conformance.registry import BUILTIN

    assert BUILTIN["tensorflow"] == "refws.backends.tensorflow:TensorflowBackend"
