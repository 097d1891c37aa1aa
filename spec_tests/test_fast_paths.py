"""Spec tests for the evaluation paths of issue 15, each against the definition loops of ``naive.py``.

refws evaluates the same sums of the same products in more than one way, chosen by shape:

- the forward convolution by ``"gemm"`` (im2col columns, one matrix product per group) or by
  ``"taps"`` (one broadcast multiply-add per kernel tap and input channel, no columns);
- ``dx`` and ``dw`` by the ``"col2im"`` derivation, itself evaluated by ``"gemm"`` (products with
  the columns, col2im's scatter) or by ``"taps"`` (the same sums tap by tap), or by the ``"conv"``
  derivation (one convolution each, evaluated by whichever forward formulation its shape gets);
- ``method="auto"`` picks a derivation per half.

Each path is forced here by replacing the rule that would choose it (``unittest.mock.patch``), so
the public functions run it on every problem the strategies draw: every padding form, strides,
both dilations, groups (depthwise with multiplier included), both layouts, unbatched input,
zero-size axes, integer data compared exactly and real data within the rounding bound. The rules
themselves are checked only for what they document (which shapes get which path); their speed is
the benchmarks' business, never asserted.
"""

from __future__ import annotations

import importlib
import math
import threading
import tracemalloc
from contextlib import ExitStack, contextmanager
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refws
import refws.grads
from .naive import (
    from_channels_last,
    naive_conv,
    naive_conv_transpose_weight_grad,
    naive_conv_vjp,
    naive_explicit_pads,
    to_channels_last,
)
from .strategies import conv_problems, geometry_args
from .test_conv_transpose import transpose_problems
from .test_grads import assert_bound, n_terms, vjp_problem

conv_module = importlib.import_module("refws.conv")  # refws.conv is the function
im2col_module = importlib.import_module("refws.im2col")
FORMULATIONS = ("gemm", "taps")
METHODS = ("auto", "col2im", "conv")
# Six paths per gradient property: fewer examples each than the core properties.
FEW = settings(max_examples=max(10, settings.default.max_examples // 3))


@contextmanager
def forced(formulation=None, method=None, threads=None, runs=None):
    """Run refws with every formulation rule (forward, dx and dw by col2im) and/or both
    ``method="auto"`` rules replaced by a constant choice; ``threads``: the tap formulation runs
    every problem with more than one part on that many threads, however small; ``runs``: the
    taps' forward einsum over runs of outputs as long as the last axis allows (True) or never
    (False)."""
    with ExitStack() as stack:
        if runs is not None:
            stack.enter_context(mock.patch.object(conv_module, "TAPS_RUN_ELEMENTS", 2**30 if runs else 1))
        if threads is not None:
            stack.enter_context(mock.patch.object(conv_module, "TAPS_THREADS", threads))
            stack.enter_context(mock.patch.object(conv_module, "TAPS_PARALLEL_MIN_OPS", 0))
        if formulation is not None:
            for module, name in (
                (conv_module, "forward_formulation"),
                (refws.grads, "input_grad_formulation"),
                (refws.grads, "weight_grad_formulation"),
            ):
                stack.enter_context(mock.patch.object(module, name, lambda *args: formulation))
        if method is not None:
            for name in ("input_grad_method", "weight_grad_method"):
                stack.enter_context(mock.patch.object(refws.grads, name, lambda *args: method))
        yield


@pytest.fixture
def restore_budget():
    old = refws.get_workspace_bytes()
    yield
    refws.set_workspace_bytes(old)


# --- the forward formulations -----------------------------------------------------------------


@pytest.mark.parametrize("formulation, runs", [("gemm", None), ("taps", False), ("taps", True)])
@given(p=conv_problems())
def test_forward_formulation_matches_definition(formulation, runs, p):
    with forced(formulation, runs=runs):
        got = refws.conv(p.x, p.w, **p.kwargs)
    p.assert_close(got, err_msg=f"{formulation} runs={runs}")


@pytest.mark.parametrize(
    "formulation, threads, runs", [("gemm", None, None), ("taps", 1, False), ("taps", 1, True), ("taps", 3, True)]
)
@given(p=conv_problems(exact=True), budget=st.sampled_from([1, 700, 4096, 64 * 1024]))
def test_chunked_formulation_matches_definition(formulation, threads, runs, p, budget):
    """Small budgets split every problem into chunks of samples and output rows that reuse one
    workspace per thread (the last chunk smaller); the 1-D taps repeat their weights along the
    chunked axis (and cut it into runs of the chunk's length); three threads share the chunks out."""
    old = refws.set_workspace_bytes(budget)
    try:
        with forced(formulation, threads=threads, runs=runs):
            got = refws.conv(p.x, p.w, **p.kwargs)
    finally:
        refws.set_workspace_bytes(old)
    np.testing.assert_array_equal(got, p.expected())


@pytest.mark.parametrize("runs", [False, True])
@given(p=conv_problems(exact=True, channel_first=False, batched=True), data=st.data())
def test_taps_propagate_nan_and_inf_like_ieee(runs, p, data):
    """NaN/Inf in x give the definition's IEEE result by taps too (NaN where a term is NaN,
    inf * 0 or inf - inf), whatever order the taps sum in."""
    x = p.x.copy()
    if x.size == 0:
        return
    for _ in range(data.draw(st.integers(1, 3))):
        x[tuple(data.draw(st.integers(0, s - 1)) for s in x.shape)] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf])
        )
    with np.errstate(invalid="ignore", over="ignore"), forced("taps", runs=runs):
        expected = naive_conv(x, p.w, **p.naive_kwargs)
        got = refws.conv(x, p.w, **p.kwargs)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("formulation", [None, *FORMULATIONS])
@pytest.mark.parametrize("groups, c_out", [(1, 8), (4, 8), (16, 32)])
def test_no_input_channels_give_empty_sums(formulation, groups, c_out):
    """C_in = 0 (Cg = 0): every output is a sum of no terms, 0, whichever formulation (it used to
    raise from deep inside gemm and return uninitialised memory by taps); the definition agrees."""
    x, w = np.ones((2, 32, 32, 0)), np.ones((3, 3, 0, c_out))
    with forced(formulation):
        got = refws.conv(x, w, padding="SAME", groups=groups)
    np.testing.assert_array_equal(got, np.zeros((2, 32, 32, c_out)))
    pads = naive_explicit_pads("SAME", (32, 32), (3, 3))
    np.testing.assert_array_equal(got, naive_conv(x, w, pads=pads, groups=groups))


@given(data=st.data())
def test_window_runs_view_matches_its_definition(data):
    """``view[n, o', q, t, r*C + c] = padded[n, o'*s + t'*d, q*run + r + t_last*d_last, c]``, element by element."""
    ndim = data.draw(st.integers(1, 3))
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(ndim))
    dil = tuple(data.draw(st.integers(1, 2)) for _ in range(ndim))
    stride = (*(data.draw(st.integers(1, 3)) for _ in range(ndim - 1)), 1)
    out = tuple(data.draw(st.integers(1, 4)) for _ in range(ndim - 1))
    run = data.draw(st.integers(1, 3))
    out = (*out, run * data.draw(st.integers(1, 3)))
    sizes = tuple(
        (o - 1) * s + (k - 1) * d + 1 + data.draw(st.integers(0, 1)) for o, s, k, d in zip(out, stride, kernel, dil)
    )
    c, n = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    step = data.draw(st.integers(1, 2))  # every other channel of a wider array: evenly strided, not contiguous
    padded = np.arange(n * math.prod(sizes) * c * step, dtype=np.float64).reshape(n, *sizes, c * step)[..., ::step]
    assert im2col_module.runs_fit(padded)
    view = im2col_module.window_runs_view(padded, kernel, out, stride, dil, run)
    assert view.shape == (n, *out[:-1], out[-1] // run, *kernel, run * c)
    for index in np.ndindex(*view.shape):
        b, o, q, t, z = index[0], index[1:ndim], index[ndim], index[ndim + 1 : 2 * ndim + 1], index[-1]
        r, ch = divmod(z, c)
        src = (*(oi * si + ti * di for oi, si, ti, di in zip(o, stride, t, dil)), q * run + r + t[-1] * dil[-1])
        assert view[index] == padded[(b, *src, ch)], index


@pytest.mark.parametrize(
    "padded, stride, out, run",
    [
        (np.zeros((1, 5, 6, 2)), (1, 2), (3, 2), 2),  # stride 2 along the last axis
        (np.zeros((1, 5, 6, 2)), (1, 1), (3, 4), 3),  # runs of 3 do not divide 4 outputs
        (np.zeros((1, 5, 12, 2))[:, :, ::2], (1, 1), (3, 4), 2),  # last spatial axis not contiguous
    ],
)
def test_window_runs_view_refuses_what_it_cannot_view(padded, stride, out, run):
    with pytest.raises(ValueError, match="window_runs_view"):
        im2col_module.window_runs_view(padded, (3, 3), out, stride, (1, 1), run)


def test_output_runs_views_the_output_side_and_refuses_what_it_cannot():
    """``output_runs(out, run)[n, a, q, r*C + c] = out[n, a, q*run + r, c]``, written through."""
    out = np.zeros((2, 3, 6, 4))
    runs = conv_module.output_runs(out, 3)
    assert runs.shape == (2, 3, 2, 12)
    runs[1, 2, 1, 2 * 4 + 3] = 7.0
    assert out[1, 2, 1 * 3 + 2, 3] == 7.0 and np.count_nonzero(out) == 1
    with pytest.raises(ValueError, match="output_runs"):
        conv_module.output_runs(out, 4)  # runs of 4 do not divide 6
    with pytest.raises(ValueError, match="output_runs"):
        conv_module.output_runs(np.zeros((2, 3, 12, 4))[:, :, ::2], 3)  # positions not next to each other


def test_taps_run_is_the_largest_divisor_within_the_run_length():
    for last in range(1, 70):
        for channels in (1, 3, 32, 100, 2000):
            run = conv_module.taps_run(last, channels)
            most = max(1, conv_module.TAPS_RUN_ELEMENTS // channels)
            fitting = [d for d in range(1, last + 1) if last % d == 0 and d <= most]
            assert run == max(fitting, default=1), (last, channels)


@pytest.mark.parametrize("stride, runs_used", [(1, True), ((2, 1), True), ((1, 2), False)])
def test_taps_forward_reads_runs_where_the_last_stride_is_one(stride, runs_used):
    """Depthwise 3x3: the einsum reads runs of outputs exactly when the last axis has stride 1;
    either way the result is the definition's."""
    rng = np.random.default_rng(15)
    x, w = rng.integers(-8, 9, (2, 9, 12, 16)).astype(float), rng.integers(-8, 9, (3, 3, 1, 16)).astype(float)
    assert conv_module.forward_formulation(9, 1, 1, 16) == "taps"
    with mock.patch.object(conv_module, "window_runs_view", wraps=conv_module.window_runs_view) as spy:
        got = refws.conv(x, w, stride=stride, padding="SAME", groups=16)
    assert (spy.call_count > 0) == runs_used
    pads = naive_explicit_pads("SAME", (9, 12), (3, 3), stride)
    np.testing.assert_array_equal(got, naive_conv(x, w, stride=stride, pads=pads, groups=16))


@pytest.mark.parametrize(
    "x_shape, w_shape, groups, stride",
    [
        ((2, 9, 1), (3, 1, 300), 1, 2),  # 300 written channels: weights not repeated along the axis
        ((1, 3, 80, 2), (3, 3, 1, 200), 2, 1),  # repeated weights would exceed their memory limit
        ((2, 6, 5, 12), (2, 3, 3, 8), 4, 2),  # 3 channels per group read, 2 written: both repeated
    ],
)
def test_taps_with_and_without_repeated_weights(x_shape, w_shape, groups, stride):
    rng = np.random.default_rng(3)
    x = rng.integers(-4, 5, size=x_shape).astype(np.float64)
    w = rng.integers(-4, 5, size=w_shape).astype(np.float64)
    pads = ((1, 1),) * (len(x_shape) - 2)
    with forced("taps"):
        got = refws.conv(x, w, stride=stride, padding=1, groups=groups)
    np.testing.assert_array_equal(got, naive_conv(x, w, stride=stride, pads=pads, groups=groups))


@pytest.mark.parametrize("read, written", [(1, 1), (1, 3), (3, 1), (2, 2), (4, 2), (2, 4)])
@pytest.mark.parametrize(
    "spatial, kernel, stride, rhs",
    [((11,), (3,), 2, 1), ((7, 6), (3, 2), 1, 2), ((4, 5, 4), (2, 3, 2), (1, 2, 1), 1)],
)
def test_taps_forward_over_either_side(read, written, spatial, kernel, stride, rhs):
    """The taps' forward sums over the read channels of a group (read >= written) or over its
    written channels (read < written): both against the definition loop, exactly (integer data),
    1-D to 3-D, with strides and rhs dilation, in whole problems and in chunks of rows. Each
    sample runs twice, so the einsum's output and product workspaces hold an earlier chunk."""
    rng = np.random.default_rng(9)
    groups = 3
    x = rng.integers(-4, 5, size=(2, *spatial, groups * read)).astype(np.float64)
    w = rng.integers(-4, 5, size=(*kernel, read, groups * written)).astype(np.float64)
    kw = dict(stride=stride, padding="SAME", rhs_dilation=rhs, groups=groups)
    pads = refws.conv_geometry(spatial, kernel, stride, "SAME", 1, rhs).padding
    expected = naive_conv(x, w, stride=stride, pads=pads, rhs_dilation=rhs, groups=groups)
    old = refws.set_workspace_bytes(2**30)
    try:
        for budget in (2**30, 512):
            refws.set_workspace_bytes(budget)
            with forced("taps"):
                for _ in range(2):
                    np.testing.assert_array_equal(refws.conv(x, w, **kw), expected)
    finally:
        refws.set_workspace_bytes(old)


def test_grouped_gather_with_a_used_staging_buffer():
    """gather_windows with groups copies the input group-major first, into the staging buffer
    when given one (larger than needed, full of garbage): the same columns as tap by tap."""
    rng = np.random.default_rng(10)
    padded = rng.standard_normal((2, 7, 6, 12))
    args = ((3, 2), (3, 2), (2, 2), (1, 2), 4)  # kernel, out, stride, rhs dilation, groups
    staging = np.full(padded.size + 17, np.nan)
    got = im2col_module.gather_windows(padded, *args, staging=staging)
    np.testing.assert_array_equal(got, im2col_module.gather_windows_by_taps(padded, *args))


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize(
    "padding, stride, lhs",
    [("VALID", 1, 1), ("SAME", 1, 1), (1, 1, 1), ("VALID", 2, 1), ([(0, 0), (-1, 2)], 1, 1), (0, 1, 2)],
)
@pytest.mark.parametrize("channel_first", [False, True])
def test_one_by_one_kernels(formulation, padding, stride, lhs, channel_first):
    """1x1 kernels: with stride 1 the gemm reads the padded input itself as its columns, and
    without padding or lhs dilation the input is not copied at all (also for channel-first
    input, whose canonical view is not contiguous)."""
    rng = np.random.default_rng(4)
    x_cl = rng.integers(-4, 5, size=(3, 5, 4, 6)).astype(np.float64)
    w = rng.integers(-4, 5, size=(1, 1, 6, 7)).astype(np.float64)
    x = from_channels_last(x_cl, channel_first, True)
    g = refws.conv_geometry((5, 4), (1, 1), stride, padding, lhs, 1)
    with forced(formulation):
        got = refws.conv(x, w, stride=stride, padding=padding, lhs_dilation=lhs, channel_first=channel_first)
    expected = naive_conv(x_cl, w, stride=stride, pads=g.padding, lhs_dilation=lhs)
    np.testing.assert_array_equal(to_channels_last(got, channel_first, True), expected)


def test_conv_canonical_refuses_an_unknown_formulation():
    x, w = np.zeros((1, 4, 2)), np.zeros((3, 2, 2))
    with pytest.raises(ValueError, match=r"formulation='im2col': expected one of \('gemm', 'taps'\)"):
        conv_module.conv_canonical(x, w, refws.conv_geometry((4,), (3,)), 1, "im2col")


# --- the gradient paths -------------------------------------------------------------------------


def _check_vjp(p, got_dx, got_dw, what):
    dy, nkw = vjp_problem(p)
    dy_cl = to_channels_last(dy, p.channel_first, p.batched)
    dx_cl, dw = naive_conv_vjp(p.x_cl, p.w, dy_cl, **nkw)
    dx = from_channels_last(dx_cl, p.channel_first, p.batched)
    assert got_dx.shape == p.x.shape and got_dw.shape == p.w.shape
    if p.exact:
        np.testing.assert_array_equal(got_dx, dx, err_msg=f"dx, {what}")
        np.testing.assert_array_equal(got_dw, dw, err_msg=f"dw, {what}")
    else:
        abs_dx_cl, abs_dw = naive_conv_vjp(np.abs(p.x_cl), np.abs(p.w), np.abs(dy_cl), **nkw)
        assert_bound(
            got_dx, dx, from_channels_last(abs_dx_cl, p.channel_first, p.batched), n_terms(p), err_msg=f"dx, {what}"
        )
        assert_bound(got_dw, dw, abs_dw, n_terms(p), err_msg=f"dw, {what}")


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("method", METHODS)
@FEW
@given(p=conv_problems())
def test_vjp_paths_match_definition(method, formulation, p):
    """Every derivation with every formulation: col2im's by gemm or taps, conv's through the
    forward formulations, and auto's choice with either."""
    dy, _ = vjp_problem(p)
    with forced(formulation):
        got_dx, got_dw = refws.conv_vjp(p.x, p.w, dy, **p.kwargs, method=method)
    _check_vjp(p, got_dx, got_dw, f"{method}/{formulation}")


@pytest.mark.parametrize("chosen", ["col2im", "conv"])
@FEW
@given(p=conv_problems())
def test_auto_with_either_choice_matches_definition(chosen, p):
    """``method="auto"`` runs whichever derivation its rule names, for dx and dw alike."""
    dy, _ = vjp_problem(p)
    with forced(method=chosen):
        got_dx, got_dw = refws.conv_vjp(p.x, p.w, dy, **p.kwargs)
    _check_vjp(p, got_dx, got_dw, f"auto -> {chosen}")


@pytest.mark.parametrize("formulation, threads", [("gemm", None), ("taps", 1), ("taps", 3)])
@FEW
@given(p=conv_problems(exact=True), budget=st.sampled_from([1, 700, 4096]))
def test_chunked_vjp_matches_definition(formulation, threads, p, budget):
    """The col2im paths under small budgets: dw adds up its chunks' sums, dx scatters row chunks
    into one padded gradient per block of samples; three threads share chunks and blocks out."""
    dy, _ = vjp_problem(p)
    old = refws.set_workspace_bytes(budget)
    try:
        with forced(formulation, threads=threads):
            got_dx, got_dw = refws.conv_vjp(p.x, p.w, dy, **p.kwargs, method="col2im")
    finally:
        refws.set_workspace_bytes(old)
    _check_vjp(p, got_dx, got_dw, f"col2im/{formulation}, budget {budget}")


@pytest.mark.parametrize("formulation", FORMULATIONS)
@FEW
@given(p=transpose_problems())
def test_conv_transpose_vjp_paths(formulation, p):
    """conv_transpose_vjp (default method "auto"): dx is a forward convolution of dy, dw the weight
    gradient of that convolution (input dy, cotangent x); both through every formulation, against
    the scatter definition's weight gradient and the convolution's definition loop."""
    y = refws.conv_transpose(p.x, p.w, **p.kwargs)
    dy_cl = np.random.default_rng(p.seed).integers(-4, 5, size=to_channels_last(y, p.channel_first, p.batched).shape)
    with forced(formulation):
        dx, dw = refws.conv_transpose_vjp(p.x, p.w, p.to_layout(dy_cl.astype(np.float64)), **p.kwargs)
    channel_first = lambda a: np.moveaxis(a, -1, 1)  # noqa: E731
    dw_torch = naive_conv_transpose_weight_grad(
        channel_first(p.x_cl), channel_first(dy_cl), p.w.shape[:-2], p.stride, p.padding, p.dilation, p.groups
    )
    np.testing.assert_array_equal(dw, np.moveaxis(dw_torch, (0, 1), (-1, -2)))  # (*k, C_out/G, C_in)
    pads = [(q, q - op) for q, op in zip(p.padding, p.output_padding)]
    dx_cl = naive_conv(dy_cl, p.w, stride=p.stride, pads=pads, rhs_dilation=p.dilation, groups=p.groups)
    np.testing.assert_array_equal(dx, p.to_layout(dx_cl))


# --- the rules: what they document ------------------------------------------------------------


@pytest.mark.parametrize(
    "cg, cog, groups, expected",
    [
        (1, 1, 16, "taps"),
        (1, 1, 32, "taps"),
        (1, 1, 8, "gemm"),
        (1, 1, 2, "gemm"),
        (1, 2, 16, "taps"),
        (2, 1, 32, "taps"),
        (2, 2, 16, "taps"),
        (1, 4, 16, "taps"),
        (4, 1, 64, "taps"),
        (1, 3, 16, "taps"),
        (2, 2, 8, "gemm"),
        (4, 1, 15, "gemm"),
        (2, 4, 16, "gemm"),
        (4, 2, 32, "gemm"),
        (8, 1, 32, "gemm"),
        (1, 8, 32, "gemm"),
        (4, 4, 16, "gemm"),
        (32, 64, 1, "gemm"),
        (1, 64, 32, "gemm"),
    ],
)
def test_forward_rule(cg, cog, groups, expected):
    """The documented rule without runs (a strided last axis): taps when Cg * Cog <= 4 and there
    are at least 16 groups; symmetric, so the conv derivation's dx (roles exchanged) gets the same."""
    for last_stride, outputs in ((2, 10**6), (1, 0)):
        assert conv_module.forward_formulation(9, cg, cog, groups, last_stride, outputs) == expected
        assert conv_module.forward_formulation(9, cog, cg, groups, last_stride, outputs) == expected


@pytest.mark.parametrize(
    "cg, cog, groups, last_stride, outputs, expected",
    [
        (4, 1, 8, 1, 2048, "taps"),
        (4, 2, 8, 1, 2048, "taps"),
        (8, 1, 4, 1, 2048, "taps"),
        (2, 2, 8, 1, 512, "taps"),
        (1, 1, 4, 1, 1000, "taps"),
        (1, 2, 4, 1, 4096, "taps"),
        (2, 2, 8, 1, 511, "gemm"),  # too few outputs
        (2, 2, 8, 2, 4096, "gemm"),  # strided last axis: no runs
        (4, 1, 2, 1, 4096, "gemm"),  # 2 groups
        (1, 4, 8, 1, 4096, "gemm"),  # 4 written per group
        (8, 2, 4, 1, 4096, "gemm"),  # 16 channel pairs
        (1, 1, 16, 2, 1, "taps"),  # the 16-group rule needs no runs
    ],
)
def test_forward_rule_with_runs(cg, cog, groups, last_stride, outputs, expected):
    """With stride 1 along the last axis, at least 4 groups and 512 output positions: taps when a
    group writes at most 2 channels and has at most 8 channel pairs."""
    assert conv_module.forward_formulation(9, cg, cog, groups, last_stride, outputs) == expected


@pytest.mark.parametrize(
    "x_shape, stride, expected",
    [((2, 32, 32, 32), 1, "taps"), ((2, 32, 32, 32), (1, 2), "gemm"), ((2, 7, 7, 32), 1, "gemm")],
)
def test_conv_asks_the_forward_rule_with_its_last_stride_and_outputs(x_shape, stride, expected):
    """refws.conv passes the last axis's stride and N * prod(out_spatial): 4 -> 1 with 8 groups is
    taps on a 2x32x32 map, gemm with a strided last axis or on a 2x7x7 map; the result is the definition's."""
    rng = np.random.default_rng(16)
    x, w = rng.integers(-8, 9, x_shape).astype(float), rng.integers(-8, 9, (3, 3, 4, 8)).astype(float)
    with mock.patch.object(conv_module, "forward_formulation", wraps=conv_module.forward_formulation) as spy:
        got = refws.conv(x, w, stride=stride, padding="SAME", groups=8)
    assert [conv_module.forward_formulation(*c.args) for c in spy.call_args_list] == [expected]
    pads = naive_explicit_pads("SAME", x_shape[1:3], (3, 3), stride)
    np.testing.assert_array_equal(got, naive_conv(x, w, stride=stride, pads=pads, groups=8))


@pytest.mark.parametrize(
    "cg, cog, groups, dw, dx",
    [
        (1, 1, 1, "taps", "taps"),  # depthwise without multiplier: dw by taps for any number of groups
        (1, 1, 4, "taps", "taps"),
        (1, 2, 8, "taps", "taps"),
        (1, 2, 4, "gemm", "taps"),
        (2, 2, 2, "gemm", "taps"),
        (2, 2, 8, "taps", "taps"),
        (2, 4, 8, "taps", "taps"),
        (4, 2, 16, "taps", "taps"),
        (4, 1, 4, "gemm", "taps"),
        (1, 4, 7, "gemm", "taps"),
        (8, 1, 32, "gemm", "gemm"),
        (1, 8, 32, "gemm", "gemm"),
        (4, 4, 16, "gemm", "gemm"),
        (5, 1, 64, "gemm", "gemm"),
        (32, 64, 1, "gemm", "gemm"),
    ],
)
def test_col2im_rules(cg, cog, groups, dw, dx):
    """The documented col2im rules: taps when Cg <= 4, Cog <= 4 and Cg * Cog <= 8; for dw also 8
    groups or more, or Cg = Cog = 1; for dx with any number of groups (and symmetric)."""
    assert refws.grads.weight_grad_formulation(9, cg, cog, groups) == dw
    assert refws.grads.input_grad_formulation(9, cg, cog) == dx
    assert refws.grads.input_grad_formulation(9, cog, cg) == dx


@pytest.mark.parametrize("stride, expected", [(1, "conv"), ((1, 1), "conv"), ((1, 2), "col2im"), (3, "col2im")])
def test_auto_rule(stride, expected):
    """dx by the conv derivation when every stride is 1 (and the kernel is no larger than the
    columns); dw always by col2im."""
    g = refws.conv_geometry((9, 8), (3, 3), stride, "SAME", 1, 2)
    assert refws.grads.input_grad_method(g, 2, 3, 4, 2) == expected
    assert refws.grads.weight_grad_method(g, 2, 3, 4) == "col2im"


@pytest.mark.parametrize(
    "spatial, kernel, n_batch, cog, expected",
    [
        ((7, 7), (3, 3), 2, 512, "col2im"),  # Cog 512 > N*O = 98
        ((7, 7), (3, 3), 2, 98, "conv"),  # Cog = N*O: not more
        ((7, 7), (3, 3), 2, 99, "col2im"),
        ((7, 7), (3, 3), 1, 50, "col2im"),  # N*O = 49
        ((7, 7), (1, 1), 2, 512, "conv"),  # one tap: nothing to flip
        ((14, 14), (3, 3), 2, 256, "conv"),  # N*O = 392
        ((4, 4, 4), (3, 3, 3), 1, 65, "col2im"),  # N*O = 64
        ((4, 4, 4), (3, 3, 3), 1, 64, "conv"),
    ],
)
def test_auto_rule_large_kernels(spatial, kernel, n_batch, cog, expected):
    """Stride 1: col2im when the kernel has more than one tap and Cog > N * prod(out_spatial)
    (the flipped kernel would outweigh the columns)."""
    g = refws.conv_geometry(spatial, kernel, 1, "SAME", 1, 1)
    assert refws.grads.input_grad_method(g, 1, 8, cog, n_batch) == expected
    assert refws.grads.input_grad_method(g, 4, 8, cog, n_batch) == expected  # per group: Cog


def test_auto_is_the_default_and_refuses_nothing_else():
    x, w = np.ones((1, 5, 2)), np.ones((3, 2, 3))
    dy = np.ones((1, 5, 3))
    a = refws.conv_vjp(x, w, dy)
    b = refws.conv_vjp(x, w, dy, method="auto")
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match=r"method='fast': expected one of \('col2im', 'conv'\) or 'auto'"):
        refws.conv_vjp(x, w, dy, method="fast")


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_forcing_reaches_the_path(formulation):
    """Guard for the tests above: a forced formulation is the one that runs, in conv and in both
    halves of the col2im derivation."""
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((2, 6, 5, 4)), rng.standard_normal((3, 3, 2, 4))
    dy = rng.standard_normal((2, 6, 5, 4))
    spies = {
        f"{cls.__name__}.{name}": mock.patch.object(cls, name, autospec=True, side_effect=getattr(cls, name))
        for cls in (conv_module.GemmChunk, conv_module.TapsChunk)
        for name in ("forward", "scatter", "weight_grad")
    }
    with ExitStack() as stack, forced(formulation):
        calls = {name: stack.enter_context(spy) for name, spy in spies.items()}
        refws.conv(x, w, groups=2)
        refws.conv_vjp(x, w, dy, groups=2, method="col2im")
    ran = {name for name, spy in calls.items() if spy.call_count}
    cls = "TapsChunk" if formulation == "taps" else "GemmChunk"
    assert ran == {f"{cls}.forward", f"{cls}.scatter", f"{cls}.weight_grad"}


def test_results_do_not_depend_on_the_number_of_threads(restore_budget):
    """Real-valued data, where a different order of the sums would show in the last bits: the
    taps give the same bytes on 1, 2 and 3 threads (forward, dx and dw)."""
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((5, 9, 8, 6)), rng.standard_normal((3, 2, 2, 9))
    dy = rng.standard_normal((5, 5, 8, 9))
    kw = dict(stride=(2, 1), padding="SAME", groups=3)
    refws.set_workspace_bytes(4096)
    results = []
    for threads in (1, 2, 3):
        with forced("taps", threads=threads):
            results.append((refws.conv(x, w, **kw), *refws.conv_vjp(x, w, dy, **kw, method="col2im")))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_run_parts_cuts_the_items_into_parts_in_order(workers):
    """The taps' threads: ``workers`` contiguous parts, every item in exactly one, results in order."""
    items = tuple(range(23))
    parts = conv_module.run_parts(lambda part: (threading.current_thread().name, list(part)), items, workers)
    assert len(parts) == workers
    assert [v for _, part in parts for v in part] == list(items)
    assert len({name for name, _ in parts}) == workers  # each part on a thread of its own


@pytest.mark.parametrize("failing", [0, 11, 22])
def test_run_parts_raises_a_failure_of_any_part(failing):
    def work(part):
        if failing in part:
            raise ValueError(f"item {failing}")
        return part

    with pytest.raises(ValueError, match=f"item {failing}"):
        conv_module.run_parts(work, tuple(range(23)), 3)


@pytest.mark.parametrize("threads", [1, 2])
def test_taps_peak_memory_stays_under_budget(restore_budget, threads):
    """The taps' workspaces (padded rows, one input channel repeated over the output channels, the
    product, the repeated weights) stay within a budget of half their preferred chunk, shared
    among the threads (slack: the kernel and 256 KiB of bookkeeping)."""
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((2, 64, 64, 16)), rng.standard_normal((3, 3, 1, 64))
    budget = im2col_module.PREFERRED_TAPS_CHUNK_BYTES // 2
    refws.set_workspace_bytes(budget)
    with forced("taps", threads=threads):
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            y = refws.conv(x, w, groups=16)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    extra = peak - base - y.nbytes
    assert extra <= budget + w.nbytes + 2**18, f"{extra / 2**10:.0f} KiB"
    refws.set_workspace_bytes(2**30)
    np.testing.assert_array_equal(y, refws.conv(x, w, groups=16))


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("budget", [2**12, 2**30])
def test_results_never_share_memory_with_the_kept_workspaces(restore_budget, formulation, budget):
    """Workspaces are kept between calls; results are fresh arrays: a later call (same shapes,
    other data) leaves an earlier call's results as they were, for one chunk and for many."""
    refws.set_workspace_bytes(budget)
    rng = np.random.default_rng(8)
    shapes = [
        ((2, 9, 8, 4), (3, 3, 2, 4), dict(padding="SAME", groups=2)),
        ((2, 9, 8, 4), (1, 1, 4, 6), dict(padding="VALID")),
        ((2, 9, 8, 4), (1, 1, 4, 6), dict(padding=1, stride=2)),
    ]
    for x_shape, w_shape, kw in shapes:
        first = [rng.standard_normal(x_shape), rng.standard_normal(w_shape)]
        with forced(formulation):
            y = refws.conv(*first, **kw)
            dx, dw = refws.conv_vjp(*first, np.ones(y.shape), **kw, method="col2im")
            kept = [a.copy() for a in (y, dx, dw)]
            y2 = refws.conv(rng.standard_normal(x_shape), rng.standard_normal(w_shape), **kw)
            refws.conv_vjp(rng.standard_normal(x_shape), rng.standard_normal(w_shape), y2, **kw, method="col2im")
        for a, b in zip((y, dx, dw), kept):
            np.testing.assert_array_equal(a, b)


# --- per-call overhead: memos that must not change a result or skip a check ---------------------

geometry_module = importlib.import_module("refws.geometry")


@given(a=geometry_args())
def test_geometry_memo_returns_what_the_checks_compute(a):
    """A memo hit (the same arguments again, or in the other sequence form) is the geometry that
    the unmemoised checks and arithmetic compute, and the test-side definition's."""
    args = (a.in_spatial, a.kernel_spatial, *a.kwargs.values())
    first, again = refws.conv_geometry(*args), refws.conv_geometry(*args)
    assert again is first or geometry_module._plain_key(args) is None
    assert first == geometry_module._compute_geometry(*args)
    assert (first.padding, first.out_spatial) == (a.pads, a.out_spatial)
    relisted = [list(v) if isinstance(v, tuple) else v for v in args]
    assert refws.conv_geometry(*relisted) == first


@pytest.mark.parametrize(
    "name, value, error",
    [
        ("stride", True, TypeError),
        ("stride", 1.0, TypeError),
        ("stride", np.float64(1.0), TypeError),
        ("stride", (1, True), TypeError),
        ("rhs_dilation", [1.0, 1], TypeError),
        ("lhs_dilation", (1, 1.0), TypeError),
        ("padding", ((1, 1), (1, 1.0)), ValueError),
        ("padding", ((True, 1), (1, 1)), ValueError),
        ("padding", 1.0, TypeError),
    ],
)
def test_geometry_memo_skips_no_check(name, value, error):
    """Values equal (and hash-equal) to a memoised argument but of another type are checked every
    time: refused here after the valid call with plain ints was memoised, by conv_geometry and by
    conv."""
    kw = dict(stride=1, padding=((1, 1), (1, 1)), lhs_dilation=1, rhs_dilation=1)
    x, w = np.ones((1, 5, 5, 1)), np.ones((3, 3, 1, 1))
    refws.conv_geometry((5, 5), (3, 3), **kw)
    refws.conv(x, w, **kw)
    kw[name] = value
    with pytest.raises(error):
        refws.conv_geometry((5, 5), (3, 3), **kw)
    with pytest.raises(error):
        refws.conv(x, w, **kw)


@pytest.mark.parametrize(
    "change, error",
    [
        (dict(groups=True), TypeError),
        (dict(groups=1.0), TypeError),
        (dict(x=np.ones((1, 5, 5, 1), dtype=complex)), TypeError),
        (dict(x=np.ones((1, 5, 5, 2))), ValueError),
        (dict(w=np.ones((3, 3, 1, 1), dtype=object)), TypeError),
        (dict(w=np.ones((0, 3, 1, 1))), ValueError),
    ],
)
def test_checked_call_memo_skips_no_check(change, error):
    """refws.conv skips its operand checks only for a call whose float64 shapes and exact-int
    arguments were checked before; the same shapes with another dtype, another argument type or
    other shapes are checked (and refused) after such a call."""
    kw = dict(x=np.ones((1, 5, 5, 1)), w=np.ones((3, 3, 1, 1)), groups=1)
    refws.conv(**kw)
    refws.conv(**kw)
    with pytest.raises(error):
        refws.conv(**{**kw, **change})


def test_checked_call_memo_equal_values_of_other_types():
    """np.int64 groups, an int layout flag and array-likes are accepted as before, checked every time."""
    x, w = np.arange(50.0).reshape(2, 5, 5, 1), np.ones((3, 3, 1, 2))
    expected = refws.conv(x, w)
    for y in (
        refws.conv(x, w, groups=np.int64(1)),
        refws.conv(x.tolist(), w),
        refws.conv(x.astype(np.float32), w),
        refws.conv(x, w, channel_first=0),
    ):
        np.testing.assert_array_equal(y, expected)


def test_checked_call_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(conv_module, "_CHECKED_MAX", 8)
    conv_module._CHECKED.clear()
    for n in range(1, 30):
        assert refws.conv(np.ones((1, n, 1)), np.ones((1, 1, 1)), padding="VALID").shape == (1, n, 1)
        assert len(conv_module._CHECKED) <= 8


def test_geometry_memo_converts_integer_types_as_before():
    """numpy integers are accepted as ints (not memoised by value, computed each time), with the
    same result as plain ints."""
    plain = refws.conv_geometry((7, 6), (3, 2), 2, [(1, np.int64(0)), (0, 1)], 1, np.int32(2))
    assert plain == refws.conv_geometry((7, 6), (3, 2), 2, ((1, 0), (0, 1)), 1, 2)
    assert all(type(v) is int for field in (plain.padding[0], plain.rhs_dilation) for v in field)


def test_geometry_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(geometry_module, "_GEOMETRIES_MAX", 8)
    geometry_module._GEOMETRIES.clear()
    for n in range(1, 30):
        assert refws.conv_geometry((n,), (1,), 1, "VALID").out_spatial == (n,)
        assert len(geometry_module._GEOMETRIES) <= 8


# --- tiny problems: the gemm formulation with its buffers kept -----------------------------------

TINY_CASES = [
    ((2, 7, 7, 3), (3, 3, 3, 4), dict()),
    ((2, 7, 7, 3), (3, 3, 3, 4), dict(stride=2, padding="VALID")),
    ((1, 6, 5, 2), (2, 3, 2, 3), dict(padding=((2, -1), (0, 3)), lhs_dilation=(2, 1), rhs_dilation=(1, 2))),
    ((3, 9, 2), (4, 2, 5), dict(padding="SAME_LOWER", stride=3)),
    ((1, 4, 3, 5, 2), (2, 2, 3, 2, 3), dict(padding=1, rhs_dilation=(1, 1, 2))),
    ((2, 5, 5, 4), (1, 1, 4, 6), dict(padding="VALID")),
    ((5, 6, 2), (3, 6, 2), dict(channel_first=True, padding=2)),  # unbatched, channel-first
]


def _tiny_expected(x, w, kw):
    """The definition loop on a TINY_CASES problem (its layout and padding form read test-side)."""
    channel_first = kw.get("channel_first", False)
    batched = x.ndim == w.ndim
    x_cl = to_channels_last(x, channel_first, batched)
    geometry = {k: v for k, v in kw.items() if k in ("stride", "lhs_dilation", "rhs_dilation")}
    pads = naive_explicit_pads(kw.get("padding", "SAME"), x_cl.shape[1:-1], w.shape[:-2], **geometry)
    return from_channels_last(naive_conv(x_cl, w, pads=pads, **geometry), channel_first, batched)


def _tiny_spy():
    return mock.patch.object(conv_module._TinyGemm, "forward", autospec=True, side_effect=conv_module._TinyGemm.forward)


@pytest.mark.parametrize("x_shape, w_shape, kw", TINY_CASES)
def test_tiny_path_matches_definition_after_other_data(x_shape, w_shape, kw):
    """A small dense problem runs on buffers kept from its earlier calls: after a call with NaN and
    inf everywhere (which lands only where the next input is written), integer data is exact
    against the definition loop and real data byte-identical to the chunked gemm path."""
    rng = np.random.default_rng(11)
    x, w = rng.integers(-8, 9, size=x_shape).astype(float), rng.integers(-8, 9, size=w_shape).astype(float)
    with _tiny_spy() as spy:
        refws.conv(x, w, **kw)
        poison = np.where(rng.random(x_shape) < 0.5, np.nan, np.inf)
        with np.errstate(invalid="ignore"):
            assert not np.isfinite(refws.conv(poison, w, **kw)).all()
        got = refws.conv(x, w, **kw)
    assert spy.call_count == 3
    np.testing.assert_array_equal(got, _tiny_expected(x, w, kw))
    xr, wr = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    tiny = refws.conv(xr, wr, **kw)
    channel_first = kw.get("channel_first", False)
    x_cl, w_c, unbatched = conv_module.check_conv_operands(xr, wr, 1, channel_first)
    geometry_kw = {k: v for k, v in kw.items() if k != "channel_first"}
    g = refws.conv_geometry(x_cl.shape[1:-1], w_c.shape[:-2], **geometry_kw)
    chunked = from_channels_last(conv_module.conv_canonical(x_cl, w_c, g, 1, "gemm"), channel_first, not unbatched)
    assert tiny.tobytes() == chunked.tobytes()


def test_tiny_path_respects_the_budget_and_groups(restore_budget):
    """Not taken under a budget below the problem's buffers, nor for groups or the tap formulation;
    the results are the same."""
    rng = np.random.default_rng(12)
    x, w = rng.standard_normal((2, 6, 6, 4)), rng.standard_normal((3, 3, 4, 4))
    with _tiny_spy() as spy:
        expected = refws.conv(x, w)
        refws.set_workspace_bytes(1024)
        small_budget = refws.conv(x, w)
        refws.set_workspace_bytes(2**30)
        refws.conv(x, w[:, :, :2], groups=2)
        with forced("taps"):
            refws.conv(x, w)
    assert spy.call_count == 1
    np.testing.assert_allclose(small_budget, expected, rtol=0, atol=1e-13)


def test_tiny_path_buffers_are_per_thread():
    """Threads running the same small shape at once each have their own kept buffers."""
    rng = np.random.default_rng(13)
    w = rng.standard_normal((3, 3, 3, 4))
    xs = [rng.standard_normal((2, 7, 7, 3)) for _ in range(4)]
    expected = [_tiny_expected(x, w, {}) for x in xs]
    results: list = [None] * 4

    def run(i):
        results[i] = [refws.conv(xs[i], w) for _ in range(300)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        for y in got:
            np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-13)


def test_tiny_plans_are_bounded(monkeypatch):
    monkeypatch.setattr(conv_module, "TINY_PLANS", 4)
    monkeypatch.setattr(conv_module._tiny, "plans", {}, raising=False)
    w = np.ones((1, 1, 1))
    for n in range(1, 12):
        np.testing.assert_array_equal(refws.conv(np.ones((1, n, 1)), w, padding="VALID"), np.ones((1, n, 1)))
        assert len(conv_module._tiny.plans) <= 4


@pytest.mark.parametrize("spatial", [(4, 5), (40, 50)])  # below and above ZERO_WHOLE_MAX elements
@pytest.mark.parametrize("lhs", [1, 2])
def test_dilate_pad_into_a_used_workspace(spatial, lhs):
    """dilate_pad into a workspace full of garbage (zeroed whole when small, by its borders when
    large) equals the fresh zero-padded result, crops included."""
    x = np.arange(2 * math.prod(spatial) * 3, dtype=float).reshape(2, *spatial, 3) + 1
    pads = ((2, -1), (0, 3))
    lhs_dilation = (lhs, 1)
    fresh = im2col_module.dilate_pad(x, lhs_dilation, pads)
    out = np.full(fresh.shape, np.nan)
    assert (out.size <= im2col_module.ZERO_WHOLE_MAX) == (spatial == (4, 5))
    np.testing.assert_array_equal(im2col_module.dilate_pad(x, lhs_dilation, pads, out=out), fresh)


def test_cached_chunk_plans_follow_the_budget_and_preferred_sizes(monkeypatch, restore_budget):
    """Chunk plans are cached; the budget and the preferred chunk sizes chunk_plan reads are part
    of the key, so changing either gives the plan computed afresh."""
    g = refws.conv_geometry((64, 64), (3, 3))
    fresh = lambda: im2col_module.chunk_plan(g, 8, 32, 64, 1, "gemm", refws.get_workspace_bytes())  # noqa: E731
    assert conv_module.plan(g, 8, 32, 64, 1, "gemm") == fresh() == (1, 25)
    monkeypatch.setattr(im2col_module, "PREFERRED_CHUNK_BYTES", 2**19)
    assert conv_module.plan(g, 8, 32, 64, 1, "gemm") == fresh() == (1, 2)
    refws.set_workspace_bytes(2**14)
    assert conv_module.plan(g, 8, 32, 64, 1, "gemm") == fresh() == (1, 1)
