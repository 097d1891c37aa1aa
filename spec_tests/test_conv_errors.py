"""Spec tests for the error paths of issue 2 ("Errors"): every invalid argument raises ValueError
or TypeError whose message names the argument. The match is on the argument's name only (as a
whole word), not on the wording.
"""

from __future__ import annotations

import numpy as np
import pytest

import refws

X = np.ones((1, 5, 5, 4))  # 2-D, batched, channels-last, C_in = 4
W = np.ones((3, 3, 4, 6))  # (*kernel, C_in // groups, C_out)
EITHER = (ValueError, TypeError)


def _word(name: str) -> str:
    return rf"\b{name}\b"


# ------------------------------------------------------------------------------------------
# Operands
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape", [(4,), (5, 4), (1, 1, 5, 5, 4), (2, 1, 1, 5, 5, 4)])
def test_wrong_rank_of_x(x_shape):
    """2-D kernel: x must be rank 4 (batched) or 3 (unbatched)."""
    with pytest.raises(ValueError, match=_word("x")):
        refws.conv(np.ones(x_shape), W)


@pytest.mark.parametrize("w_shape", [(), (6,), (4, 6)])
def test_wrong_rank_of_w(w_shape):
    """w needs at least one spatial dimension: rank >= 3."""
    x = np.ones((1, 5, 4))
    with pytest.raises(ValueError, match=_word("w")):
        refws.conv(x, np.ones(w_shape))


def test_wrong_rank_of_x_channel_first():
    with pytest.raises(ValueError, match=_word("x")):
        refws.conv(np.ones((4, 5)), W, channel_first=True)


@pytest.mark.parametrize(
    "x_shape, w_shape, groups",
    [
        ((1, 5, 5, 4), (3, 3, 3, 6), 1),  # C_in 4 != 3 * 1
        ((1, 5, 5, 4), (3, 3, 2, 6), 3),  # C_in 4 != 2 * 3
        ((1, 5, 5, 4), (3, 3, 4, 6), 2),  # C_in 4 != 4 * 2
        ((5, 5, 3), (3, 3, 4, 6), 1),  # unbatched
    ],
)
def test_c_in_must_equal_w_in_times_groups(x_shape, w_shape, groups):
    with pytest.raises(ValueError, match=r"\bx\b|\bw\b|groups"):
        refws.conv(np.ones(x_shape), np.ones(w_shape), groups=groups)


def test_c_in_mismatch_channel_first():
    """Channel-first: C_in is axis 1 of x, so a channels-last-sized x is rejected."""
    with pytest.raises(ValueError, match=r"\bx\b|\bw\b|groups"):
        refws.conv(np.ones((1, 5, 5, 4)), W, channel_first=True)


@pytest.mark.parametrize("c_out, groups", [(5, 2), (6, 4), (3, 2)])
def test_c_out_must_be_divisible_by_groups(c_out, groups):
    x = np.ones((1, 5, 5, 2 * groups))
    w = np.ones((3, 3, 2, c_out))
    with pytest.raises(ValueError, match=r"groups|\bw\b"):
        refws.conv(x, w, groups=groups)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, object])
@pytest.mark.parametrize("name", ["x", "w"])
def test_complex_and_object_operands(dtype, name):
    x, w = (X.astype(dtype), W) if name == "x" else (X, W.astype(dtype))
    with pytest.raises(TypeError, match=_word(name)):
        refws.conv(x, w)


# ------------------------------------------------------------------------------------------
# groups, stride, dilations
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "groups, exc", [(0, ValueError), (-1, ValueError), (-2, ValueError), (1.5, EITHER), ("2", EITHER), (None, EITHER)]
)
def test_bad_groups(groups, exc):
    with pytest.raises(exc, match="groups"):
        refws.conv(X, W, groups=groups)


BAD_INTS = [
    (0, ValueError),
    (-1, ValueError),
    ((1, 0), ValueError),
    ((-2, 1), ValueError),  # non-positive
    (1.5, EITHER),
    ((1, 1.5), EITHER),
    ("2", EITHER),
    (None, EITHER),  # non-integer
    ((1, 1, 1), ValueError),
    ((1, 2, 3, 4), ValueError),
    ((), ValueError),  # wrong length
]


@pytest.mark.parametrize("name", ["stride", "lhs_dilation", "rhs_dilation"])
@pytest.mark.parametrize("value, exc", BAD_INTS)
def test_bad_stride_and_dilations(name, value, exc):
    kwargs = {name: value}
    if name == "lhs_dilation":
        kwargs["padding"] = 1  # string padding with lhs dilation is its own error
    with pytest.raises(exc, match=name):
        refws.conv(X, W, **kwargs)


@pytest.mark.parametrize("name", ["stride", "lhs_dilation", "rhs_dilation"])
def test_bad_stride_and_dilations_in_conv_geometry(name):
    kwargs = {name: 0, "padding": 0}
    with pytest.raises(ValueError, match=name):
        refws.conv_geometry((5, 5), (3, 3), **kwargs)
    kwargs = {name: (1, 1, 1), "padding": 0}
    with pytest.raises(ValueError, match=name):
        refws.conv_geometry((5, 5), (3, 3), **kwargs)


# ------------------------------------------------------------------------------------------
# padding
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["FULL", "circular", "", "SAMEE", "LOWER"])
def test_unknown_padding_string(padding):
    with pytest.raises(ValueError, match="padding"):
        refws.conv(X, W, padding=padding)
    with pytest.raises(ValueError, match="padding"):
        refws.conv_geometry((5, 5), (3, 3), padding=padding)


MALFORMED_2D = [
    ((1, 2, 3), EITHER),  # 3 ints for N = 2
    (((1, 2, 3), (0, 0)), EITHER),  # a triple
    (((1,), (1,)), EITHER),  # singletons
    (((1, 1), (1, 1), (1, 1)), EITHER),  # 3 pairs for N = 2
    (((1, 1), 2), EITHER),  # a pair and an int
    (((1.5, 1), (1, 1)), EITHER),  # non-integer
    ((1.5, 1), EITHER),
    (1.5, EITHER),
    (None, EITHER),
    ((), EITHER),
    ((("a", 1), (1, 1)), EITHER),
]


@pytest.mark.parametrize("padding, exc", MALFORMED_2D)
def test_malformed_padding(padding, exc):
    with pytest.raises(exc, match="padding"):
        refws.conv(X, W, padding=padding)
    with pytest.raises(exc, match="padding"):
        refws.conv_geometry((5, 5), (3, 3), padding=padding)


@pytest.mark.parametrize("padding", [(1, 2, 3), ((1, 2, 3),), ((1, 1), (1, 1)), 1.5])
def test_malformed_padding_1d(padding):
    with pytest.raises(EITHER, match="padding"):
        refws.conv(np.ones((1, 5, 4)), np.ones((3, 4, 6)), padding=padding)


@pytest.mark.parametrize("padding", ["SAME", "same", "VALID", "valid", "SAME_LOWER"])
@pytest.mark.parametrize("lhs_dilation", [2, (1, 2), [3, 1]])
def test_string_padding_with_lhs_dilation(padding, lhs_dilation):
    """As in lax: string padding is not defined with lhs dilation > 1."""
    with pytest.raises(ValueError, match="padding|lhs_dilation"):
        refws.conv(X, W, padding=padding, lhs_dilation=lhs_dilation)
    with pytest.raises(ValueError, match="padding|lhs_dilation"):
        refws.conv_geometry((5, 5), (3, 3), padding=padding, lhs_dilation=lhs_dilation)
    with pytest.raises(ValueError, match="padding|lhs_dilation"):
        refws.im2col(X, (3, 3), padding=padding, lhs_dilation=lhs_dilation)


def test_string_padding_with_unit_lhs_dilation_is_fine():
    """The error is about dilation > 1, not about passing the argument."""
    assert refws.conv(X, W, padding="SAME", lhs_dilation=(1, 1)).shape == (1, 5, 5, 6)


# ------------------------------------------------------------------------------------------
# im2col shares the argument checks
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(stride=0), "stride"),
        (dict(rhs_dilation=-1), "rhs_dilation"),
        (dict(padding="FULL"), "padding"),
        (dict(padding=((1, 2, 3), (0, 0))), "padding"),
    ],
)
def test_im2col_argument_errors(kwargs, name):
    with pytest.raises(EITHER, match=name):
        refws.im2col(X, (3, 3), **kwargs)
