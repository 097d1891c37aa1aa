"""The geometry printer (refws.explain) and ``refws check --explain``.

What each output position reads is checked against the definition in ``spec_tests/naive.py``
(padded position ``o*s + t*d`` holds ``x[(p - lo) / L]`` when that is an integer inside the
input, else a zero), sizes and pads against its own reading of the padding rules, and the
transposed convolution's rows against the transposed convolution's own definition
``y[i*s - p + t*d] += x[i] w[t]`` (no refws code on the test side). The channel blocks of a
grouped convolution are checked against ``naive_conv`` with ``groups`` of one-hot inputs.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refws
import refws.golden as golden
from refws.cli import main
from refws.explain import MAX_ROWS, axis_taps, case_geometry, channel_blocks, explain, explain_case

from .naive import _source_index, as_tuple, naive_conv, naive_explicit_pads, naive_out_size
from .strategies import geometry_args


def _block(text: str, axis: int) -> str:
    return text.split(f"\naxis {axis}:")[1].split("\naxis ")[0]


def _header(text: str, axis: int) -> list:
    """The labels of one axis's padded positions (empty when the axis is not drawn)."""
    lines = [line for line in _block(text, axis).splitlines() if line.startswith("  input ")]
    return lines[0].split()[1:] if lines else []


def _rows(text: str, axis: int) -> dict:
    """``{o: summary}`` of one axis's rows in ``explain``'s text."""
    block = _block(text, axis)
    out = {}
    for line in block.splitlines():
        m = re.match(r"^[> ] o=(\d+)\s.*?(reads .*)$", line)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


@given(geometry_args())
def test_taps_sizes_and_pads_follow_the_definition(args):
    g = refws.conv_geometry(args.in_spatial, args.kernel_spatial, **args.kwargs)
    assert g.padding == args.pads
    for axis, (n, k) in enumerate(zip(args.in_spatial, args.kernel_spatial)):
        s, L, d, (lo, hi) = args.stride[axis], args.lhs_dilation[axis], args.rhs_dilation[axis], args.pads[axis]
        out = naive_out_size(n, k, s, (lo, hi), L, d)
        assert g.out_spatial[axis] == out
        for o in range(out):
            taps = axis_taps(g, axis, o)
            assert [t.tap for t in taps] == list(range(k))
            for t in taps:
                src = _source_index(o * s + t.tap * d, n, lo, L)
                assert t.padded == o * s + t.tap * d
                assert t.source == src
                assert (t.kind == "input") == (src is not None)
    text = explain(args.in_spatial, args.kernel_spatial, **args.kwargs)
    assert f"explicit pads {args.pads}; output {g.out_spatial}" in text
    for axis in range(len(args.in_spatial)):
        rows = _rows(text, axis)
        out = g.out_spatial[axis]
        assert set(rows) == (set(range(out)) if out <= MAX_ROWS else set(rows) & set(range(out)))
        for o, summary in rows.items():
            read = [str(t.source) for t in axis_taps(g, axis, o) if t.kind == "input"]
            assert summary.startswith(f"reads x[{', '.join(read)}]" if read else "reads no input")


def test_the_lax_reference_case_spelled_out():
    text = explain((9, 9), (3, 3), padding="SAME", rhs_dilation=2, at=(0, 8))
    assert "padding 'SAME' -> explicit pads ((2, 2), (2, 2)); output (9, 9)" in text
    assert "dilated kernel  k_d = (k - 1)*d + 1 = (3 - 1)*2 + 1 = 5" in text
    assert "SAME: out = ceil(n / s) = 9, total = max((out - 1)*s + k_d - n, 0) = 4, split (2, 2)" in text
    assert "output          out = floor((n_L + lo + hi - k_d) / s) + 1 = floor((9 + 2 + 2 - 5) / 1) + 1 = 9" in text
    assert _header(text, 0) == _header(text, 1) == ["p", "p"] + [str(i) for i in range(9)] + ["p", "p"]
    rows = [line for line in text.splitlines() if "o=0 " in line]
    assert rows[0].startswith("> o=0") and rows[0].endswith("reads x[0, 2]; tap 0 on padding")
    assert rows[1].startswith("  o=0")  # axis 1 marks o=8, not o=0
    assert [line for line in text.splitlines() if "o=8 " in line][1].startswith("> o=8")


def test_holes_crops_and_empty_outputs():
    text = explain((5,), (2,), stride=2, padding=[(2, -1)], lhs_dilation=2)
    assert _header(text, 0) == ["p", "p", "0", ".", "1", ".", "2", ".", "3", "."]  # x[4] cropped
    assert "hi = -1 crops 1 dilated position (x[4])" in text
    assert _rows(text, 0)[1] == "reads x[0]; tap 1 on a hole"
    assert _rows(text, 0)[0] == "reads no input; taps 0, 1 on padding"
    assert "floor((9 + 2 - 1 - 2) / 2) + 1 = 5" in text
    empty = explain((2,), (3,), padding="VALID")
    assert "0 (the padded input, 2, is shorter than the dilated kernel, 3)" in empty and "o=" not in empty


def test_long_axes_are_elided_and_wide_ones_not_drawn():
    text = explain((40,), (3,), padding="SAME", at=[[20]])
    rows = _rows(text, 0)
    assert set(rows) == {0, 1, 2, 3, 20, 36, 37, 38, 39}
    assert "  ..." in text and "> o=20" in text
    assert _header(text, 0) == []


def test_three_dimensions_and_marks():
    text = explain((4, 3, 5), (2, 2, 3), stride=(1, 2, 1), padding="SAME_LOWER", inputs=[[0], None, [4]])
    g = refws.conv_geometry((4, 3, 5), (2, 2, 3), (1, 2, 1), "SAME_LOWER")
    assert g.padding == naive_explicit_pads("SAME_LOWER", (4, 3, 5), (2, 2, 3), (1, 2, 1))
    assert text.count("\naxis ") == 3 and "(an odd element at the start)" in text
    failing = [line for line in text.splitlines() if line.strip().startswith("failing")]
    assert len(failing) == 2
    with pytest.raises(ValueError, match="at="):
        explain((4, 3), (2, 2), at=(1,))
    with pytest.raises(ValueError, match="o=5"):
        axis_taps(g, 0, 5)


@pytest.mark.parametrize(
    "name",
    [
        "conv_transpose/2d_output_padding",
        "conv_transpose/1d_s3_p1_d2",
        "conv_transpose/2d_aniso",
        "conv_transpose/3d_groups2_bias",
    ],
)
def test_a_transposed_case_is_its_equivalent_forward_convolution(name):
    case = golden.load(name)
    p = case.params
    g, padding, note = case_geometry(case.suite, p)
    nd = len(p["w_shape"]) - 2
    y = case["y"]
    batched = len(p["x_shape"]) == len(p["w_shape"])
    spatial_y = y.shape[1:-1] if batched else y.shape[:-1]
    assert g.out_spatial == tuple(spatial_y) and "transposed convolution" in note
    s, pad, d = (as_tuple(p[k], nd) for k in ("stride", "padding", "dilation"))
    k = p["w_shape"][:-2]
    for axis in range(nd):
        n = g.in_spatial[axis]
        for o in range(g.out_spatial[axis]):
            read = {t.source for t in axis_taps(g, axis, o) if t.kind == "input"}
            # y[o] receives x[i] through tap t exactly when o = i*s - p + t*d
            expected = {
                i
                for i in range(n)
                if (o + pad[axis] - i * s[axis]) % d[axis] == 0
                and 0 <= (o + pad[axis] - i * s[axis]) // d[axis] < k[axis]
            }
            assert read == expected, (axis, o)
    text = explain_case(case.suite, p, {"y": {"axes": [{"role": "spatial", "positions": [0]}] * nd}})
    assert "> o=0" in text and "> marks output positions with failing elements of y" in text


def test_other_suites_have_no_geometry():
    case = golden.load("ws/bit_hwio")
    assert case_geometry(case.suite, case.params) is None
    assert "no convolution geometry" in explain_case(case.suite, case.params)


def test_refws_check_explain_prints_the_geometry_marks_and_the_diagnosis(capsys):
    code = main(["check", "spec_tests.test_diagnosis:SAME_LOWER_BACKEND", "--explain", "conv/2d_pad_same"])
    out = capsys.readouterr().out
    assert code == 1
    assert "conv/2d_pad_same: geometry" in out and "padding 'SAME' -> explicit pads ((1, 1), (0, 1))" in out
    explain_part = out.split("conv/2d_pad_same: geometry")[1]
    assert "\nFAIL y: " in explain_part and "matches refws under variant same_lower" in explain_part
    assert "under same_lower: explicit pads ((1, 1), (1, 0))" in explain_part
    # SAME_LOWER moves axis 1's pad to the start: the first and last columns are wrong, marked
    axis1 = explain_part.split("axis 1:")[1]
    marked = {int(m) for m in re.findall(r"^> o=(\d+)", axis1, re.M)}
    assert marked == {0, 5} or marked == set(range(6))


def test_refws_check_no_diagnose_and_explain_with_a_different_case(capsys):
    code = main(
        ["check", "spec_tests.test_diagnosis:SAME_LOWER_BACKEND", "--case", "conv/2d_pad_same", "--no-diagnose"]
    )
    out = capsys.readouterr().out
    assert code == 1 and "diagnosis:" not in out and "FAIL conv/2d_pad_same:y" in out
    code = main(
        [
            "check",
            "spec_tests.test_diagnosis:SAME_LOWER_BACKEND",
            "--case",
            "conv/2d_pad_valid",
            "--explain",
            "conv/2d_pad_same",
        ]
    )
    assert code == 2 and "--explain names the one case to run" in capsys.readouterr().err


def test_marks_outside_the_output_or_input_are_refused():
    with pytest.raises(
        ValueError,
        match=r"at=\(2, 5\): position 5 along axis 1 is outside the output \(3, 5\); "
        r"expected 0 <= at\[1\] <= 4",
    ):
        explain((5, 9), (3, 3), stride=(2, 2), padding="SAME", at=(2, 5))
    with pytest.raises(ValueError, match=r"at=\[\[0, 3\]\]: position 3 along axis 0"):
        explain((5,), (3,), stride=2, at=[[0, 3]])
    with pytest.raises(ValueError, match=r"at=\(-1,\)"):
        explain((5,), (3,), at=(-1,))
    with pytest.raises(ValueError, match=r"inputs=\[\[5\]\]: position 5 along axis 0 is outside the input \(5,\)"):
        explain((5,), (3,), inputs=[[5]])
    with pytest.raises(ValueError, match=r"at=\(0,\): .* expected none \(the output is empty along axis 0\)"):
        explain((2,), (3,), padding="VALID", at=(0,))
    assert "> o=2" in explain((5,), (3,), stride=2, at=(2,))  # the last one is inside


@pytest.mark.parametrize(
    "groups, channels, match",
    [
        (4, (6, 4), r"channels=\(6, 4\): C_in=6 is not divisible by groups=4"),
        (2, (4, 3), r"channels=\(4, 3\): C_out=3 is not divisible by groups=2"),
        (1, (4,), r"channels=\(4,\): expected \(C_in, C_out\)"),
        (1, 4, r"channels=4: expected \(C_in, C_out\)"),
        (1, (0, 2), r"channels=\(0, 2\)"),
        (1, (2.0, 2), r"channels=\(2.0, 2\)"),
        (0, (2, 2), r"groups=0"),
        (-2, None, r"groups=-2"),
    ],
)
def test_bad_groups_and_channels_name_the_argument(groups, channels, match):
    with pytest.raises(ValueError, match=match):
        explain((5,), (3,), groups=groups, channels=channels)


def test_groups_must_be_an_int():
    with pytest.raises(TypeError, match="groups=1.5"):
        explain((5,), (3,), groups=1.5, channels=(3, 3))


@settings(max_examples=min(40, settings.default.max_examples))
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3))
def test_channel_blocks_follow_the_definition(groups, cg, cog):
    """Group ``g``'s output channels read exactly its input channels: ``naive_conv`` (k = 1, one
    position) of an input one-hot in channel ``c`` with an all-ones kernel is nonzero exactly in
    the output channels that read ``c``."""
    c_in, c_out = groups * cg, groups * cog
    blocks = channel_blocks(groups, c_in, c_out)
    assert [b.group for b in blocks] == list(range(groups))
    for c in range(c_in):
        x = np.zeros((1, 1, c_in))
        x[..., c] = 1.0
        y = naive_conv(x, np.ones((1, cg, c_out)), groups=groups)[0, 0]
        assert {int(co) for co in np.flatnonzero(y)} == {
            co for b in blocks if c in b.in_channels for co in b.out_channels
        }
    assert sorted(co for b in blocks for co in b.out_channels) == list(range(c_out))
    text = explain((3,), (1,), groups=groups, channels=(c_in, c_out))
    for b in blocks:
        assert (
            f"group {b.group}: y[..., {b.out_channels.start}:{b.out_channels.stop}] reads "
            f"x[..., {b.in_channels.start}:{b.in_channels.stop}]"
        ) in text
