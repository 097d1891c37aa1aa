"""Spec tests for the workspace budget (issue 2, "Memory"): ``refws.set_workspace_bytes(n)`` /
``refws.get_workspace_bytes()`` (default 256 MiB), and ``conv``'s peak extra memory staying under
the budget on a problem whose full im2col is 4x the budget, with unchanged results.

Memory is measured with tracemalloc, which sees NumPy's data allocations. The bound asserted:

    peak traced memory during conv - output size <= budget + slack,
    slack = x.nbytes (one padded / dilated copy of the input) + w.nbytes + 1 MiB (bookkeeping)
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from hypothesis import given
from hypothesis import strategies as st

import refws
from .strategies import conv_problems
from .naive import naive_conv, naive_conv_at, naive_out_size, naive_same_pads

MiB = 2**20


@pytest.fixture
def restore_budget():
    old = refws.get_workspace_bytes()
    yield
    refws.set_workspace_bytes(old)


def test_default_budget_is_256_mib():
    """In a fresh interpreter, so no other test's setting leaks in."""
    out = subprocess.run(
        [sys.executable, "-c", "import refws; print(refws.get_workspace_bytes())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(out.stdout.strip()) == 256 * MiB


def test_set_get_roundtrip(restore_budget):
    for n in (4 * MiB, 12345, 3 * 2**30):
        refws.set_workspace_bytes(n)
        assert refws.get_workspace_bytes() == n


def test_tracemalloc_sees_numpy_allocations():
    """Guard: the measurement below is not vacuous."""
    tracemalloc.start()
    try:
        a = np.ones(2 * MiB)  # 16 MiB
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak >= a.nbytes


def _measure(fn):
    """(result, peak bytes traced during fn above what was traced before)."""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - base


BUDGET = 4 * MiB
N, SPATIAL, C_IN, KERNEL, C_OUT = 2, (32, 32), 64, (4, 4), 8  # SAME, stride 1: full im2col 16 MiB
PADS = tuple(naive_same_pads(s, k) for s, k in zip(SPATIAL, KERNEL))
OUT_SPATIAL = tuple(naive_out_size(s, k, 1, p) for s, k, p in zip(SPATIAL, KERNEL, PADS))
FULL_IM2COL = N * int(np.prod(OUT_SPATIAL)) * int(np.prod(KERNEL)) * C_IN * 8


@pytest.fixture(scope="module")
def big_problem():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, *SPATIAL, C_IN))
    w = rng.standard_normal((*KERNEL, C_IN, C_OUT))
    return x, w


def test_big_problem_is_4x_the_budget():
    assert FULL_IM2COL == 16 * MiB == 4 * BUDGET


def test_peak_memory_stays_under_budget_when_im2col_is_4x_budget(restore_budget, big_problem):
    """Regression: conv once kept the previous chunk alive while gathering the next (peak 7.3 MiB)."""
    x, w = big_problem
    refws.set_workspace_bytes(BUDGET)
    assert refws.get_workspace_bytes() == BUDGET
    y, peak = _measure(lambda: refws.conv(x, w, padding="SAME"))
    slack = x.nbytes + w.nbytes + 1 * MiB
    extra = peak - y.nbytes
    assert extra <= BUDGET + slack, (
        f"peak extra memory {extra / MiB:.2f} MiB > budget {BUDGET / MiB:.0f} MiB + slack "
        f"{slack / MiB:.2f} MiB (full im2col would be {FULL_IM2COL / MiB:.0f} MiB)"
    )


def test_small_budget_gives_the_same_result(restore_budget, big_problem):
    """Under the 4 MiB budget the result equals the big-budget result and the definition."""
    x, w = big_problem
    refws.set_workspace_bytes(2**30)
    reference = refws.conv(x, w, padding="SAME")
    refws.set_workspace_bytes(BUDGET)
    y = refws.conv(x, w, padding="SAME")
    assert y.shape == (N, *OUT_SPATIAL, C_OUT)
    np.testing.assert_allclose(y, reference, rtol=1e-12, atol=1e-12 * np.abs(reference).max())
    expected = naive_conv(x, w, pads=PADS)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    for index in [(0, 0, 0, 0), (1, 31, 31, 7), (0, 16, 3, 2), (1, 0, 31, 5)]:  # borders, scalar loop
        assert y[index] == pytest.approx(naive_conv_at(x, w, index, pads=PADS), rel=1e-12, abs=1e-10)


@pytest.mark.parametrize("budget", [1, 4096, 64 * 1024])
@pytest.mark.parametrize(
    "case",
    [
        dict(x=(2, 11, 9, 4), w=(3, 2, 2, 6), stride=(2, 1), pads=((1, 2), (-1, 3)), lhs=(1, 2), rhs=(2, 1), groups=2),
        dict(x=(2, 13, 6), w=(3, 1, 12), stride=3, pads=((2, 2),), lhs=2, rhs=1, groups=6),  # depthwise, x2
        dict(
            x=(1, 5, 4, 6, 3),
            w=(2, 2, 3, 3, 4),
            stride=1,
            pads=((0, 1), (1, 0), (2, -1)),
            lhs=1,
            rhs=(1, 2, 1),
            groups=1,
        ),
    ],
)
def test_results_do_not_depend_on_the_budget(restore_budget, budget, case):
    """Tiny budgets force many chunks (down to what the implementation allows as its minimum
    chunk); the result is still the definition's, exactly on integer data."""
    rng = np.random.default_rng(6)
    x = rng.integers(-4, 5, size=case["x"]).astype(np.float64)
    w = rng.integers(-4, 5, size=case["w"]).astype(np.float64)
    kw = dict(stride=case["stride"], lhs_dilation=case["lhs"], rhs_dilation=case["rhs"], groups=case["groups"])
    refws.set_workspace_bytes(budget)
    y = refws.conv(x, w, padding=case["pads"], **kw)
    np.testing.assert_array_equal(y, naive_conv(x, w, pads=case["pads"], **kw))


@given(conv_problems(exact=True), st.sampled_from([1, 700, 4096, 64 * 1024]))
def test_chunked_conv_matches_the_definition(p, budget):
    """Small budgets split every problem of the conv strategy into chunks that share one reused
    workspace (a smaller last chunk included); each chunk must overwrite what the previous left."""
    old = refws.set_workspace_bytes(budget)
    try:
        got = refws.conv(p.x, p.w, **p.kwargs)
    finally:
        refws.set_workspace_bytes(old)
    np.testing.assert_array_equal(got, p.expected())
