"""refws.pad against numpy.pad and torch.nn.functional.pad, its adjoint identity, and its errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refws.pad import pad, pad_vjp

TORCH_TO_NUMPY = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
MODES = sorted(TORCH_TO_NUMPY) + ["constant", "edge", "wrap"]


@st.composite
def pad_case(draw, modes=MODES):
    """A small array, a mode, axes to pad and pads inside torch's limits for that mode."""
    mode = draw(st.sampled_from(modes))
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    k = draw(st.integers(1, ndim))
    if draw(st.booleans()):
        axes = tuple(draw(st.permutations(range(ndim)))[:k])
    else:
        axes = None
    padded = axes if axes is not None else tuple(range(ndim - k, ndim))

    def limit(n):
        return {"reflect": n - 1, "circular": n, "wrap": 2 * n + 1}.get(mode, 4)

    pads = tuple((draw(st.integers(0, limit(shape[a]))), draw(st.integers(0, limit(shape[a])))) for a in padded)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.normal(size=shape), pads, mode, axes, padded, rng


@given(pad_case())
def test_matches_numpy_pad(case):
    x, pads, mode, axes, padded, _ = case
    width = [(0, 0)] * x.ndim
    for (lo, hi), a in zip(pads, padded):
        width[a] = (lo, hi)
    want = np.pad(x, width, mode=TORCH_TO_NUMPY.get(mode, mode))
    np.testing.assert_array_equal(pad(x, pads, mode, axes=axes), want)


@given(pad_case())
def test_adjoint_identity(case):
    x, pads, mode, axes, _, rng = case
    y = pad(x, pads, mode, axes=axes)
    c = rng.normal(size=y.shape)
    dx = pad_vjp(c, pads, mode, axes=axes)
    assert dx.shape == x.shape
    # both sides sum the same products x_i c_j, grouped differently: rounding only
    bound = 8 * np.finfo(float).eps * y.size * np.abs(y).max() * np.abs(c).max()
    assert abs(np.vdot(y, c) - np.vdot(x, dx)) <= bound


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    "shape, pads",
    [
        ((2, 3, 5), ((2, 4),)),
        ((1, 2, 3, 4), ((2, 1), (0, 3))),
        ((1, 1, 3, 2, 4), ((1, 2), (1, 1), (3, 0))),
    ],
)
def test_matches_torch_padding_mode(mode, shape, pads):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = np.random.default_rng(0).normal(size=shape)
    flat = [v for lo_hi in reversed(pads) for v in lo_hi]  # torch: last axis first
    want = F.pad(torch.tensor(x), flat, mode="constant" if mode == "zeros" else mode).numpy()
    np.testing.assert_array_equal(pad(x, pads, mode), want)


def test_torch_limits_and_bad_input():
    x = np.arange(6.0).reshape(2, 3)
    with pytest.raises(ValueError, match="mode='reflect'.*pad < 3"):
        pad(x, [(3, 0)], "reflect")
    with pytest.raises(ValueError, match="mode='circular'.*pad <= 3"):
        pad(x, [(0, 4)], "circular")
    assert pad(x, [(0, 4)], "wrap").shape == (2, 7)  # numpy's name: repeated wrapping allowed
    with pytest.raises(ValueError, match="mode='mirror'"):
        pad(x, [(1, 1)], "mirror")
    with pytest.raises(ValueError, match=r"pads=.*\(lo, hi\) pairs of ints >= 0"):
        pad(x, [(-1, 1)])
    with pytest.raises(ValueError, match=r"pads=.*\(lo, hi\) pairs"):
        pad(x, [(1, 1, 1)])
    with pytest.raises(TypeError, match="pads=3"):
        pad(x, 3)
    with pytest.raises(ValueError, match="at most ndim=2"):
        pad(x, [(1, 1)] * 3)
    with pytest.raises(ValueError, match="axes="):
        pad(x, [(1, 1)], axes=(2,))
    with pytest.raises(ValueError, match="axes="):
        pad(x, [(1, 1), (1, 1)], axes=(0, -2))
    with pytest.raises(ValueError, match="mode='replicate' cannot pad axis 1 of size 0"):
        pad(np.zeros((2, 0)), [(1, 0)], "replicate")
    assert pad(np.zeros((2, 0)), [(1, 2)]).shape == (2, 3)
    with pytest.raises(ValueError, match="dy has shape"):
        pad_vjp(np.zeros((2, 2)), [(2, 1)])
