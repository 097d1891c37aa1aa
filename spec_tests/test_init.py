"""Initializers: fans against literal transcriptions of brainstate's and PyTorch's rules, sample
statistics within stated confidence bounds, truncation bounds, and bad input."""

import math

import numpy as np
import pytest
from scipy import stats

from refws import init

# 5 standard errors: a correct sampler fails with probability < 1e-6 per check (and the seeds are
# fixed, so a pass is reproducible); a wrong fan or a missing 0.8796 correction is off by >= 10%,
# i.e. dozens of standard errors at these sample sizes.
Z = 5.0


def _moment_bounds(x, target_var, kurtosis):
    """Assert mean 0 and variance target_var within Z standard errors.

    SE(mean) = sigma / sqrt(n); SE(sample variance) = sigma^2 sqrt((kurtosis - 1) / n), with
    kurtosis = mu4 / sigma^4 of the sampled distribution (3 for a normal)."""
    n = x.size
    assert abs(x.mean()) <= Z * math.sqrt(target_var / n)
    assert abs(x.var() - target_var) <= Z * target_var * math.sqrt((kurtosis - 1) / n)


TRUNC = stats.truncnorm(-2, 2)
TRUNC_KURTOSIS = TRUNC.moment(4) / TRUNC.var() ** 2


def test_truncation_constant_is_the_truncated_std():
    assert init.TRUNCATED_NORMAL_STD == pytest.approx(TRUNC.std(), rel=1e-15)


@pytest.mark.parametrize("shape", [(3, 5), (3, 3, 4, 8), (2, 3, 4, 5, 6), (1, 7)])
def test_brainstate_fans(shape):
    rf = np.prod(shape) / shape[-2] / shape[-1]  # NOTES: receptive_field = prod / in / out
    assert init.compute_fans(shape) == (shape[-2] * rf, shape[-1] * rf)


@pytest.mark.parametrize("shape", [(4, 3), (8, 2, 3, 3), (6, 4, 2, 3, 5)])
def test_torch_fans(shape):
    rf = int(np.prod(shape[2:]))
    assert init.torch_fans(shape) == (shape[1] * rf, shape[0] * rf)
    torch = pytest.importorskip("torch")
    assert init.torch_fans(shape) == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


# Every nonlinearity refws.init.calculate_gain supports, with the gain of PyTorch's documented table
# (torch.nn.init.calculate_gain): 1 for linear, the convolutions and sigmoid; 5/3 tanh; sqrt(2) relu;
# sqrt(2 / (1 + a**2)) leaky_relu, a = 0.01 when not given; 3/4 selu.
GAINS = [
    ("linear", None, 1.0),
    ("conv1d", None, 1.0),
    ("conv2d", None, 1.0),
    ("conv3d", None, 1.0),
    ("conv_transpose1d", None, 1.0),
    ("conv_transpose2d", None, 1.0),
    ("conv_transpose3d", None, 1.0),
    ("sigmoid", None, 1.0),
    ("tanh", None, 5 / 3),
    ("relu", None, math.sqrt(2)),
    ("selu", None, 3 / 4),
    ("leaky_relu", None, math.sqrt(2 / (1 + 0.01**2))),
    ("leaky_relu", 0.2, math.sqrt(2 / 1.04)),
    ("leaky_relu", 0, math.sqrt(2)),
]


@pytest.mark.parametrize("name, a, gain", GAINS)
def test_calculate_gain_follows_pytorchs_table(name, a, gain):
    assert init.calculate_gain(name, a) == pytest.approx(gain, rel=1e-15)


@pytest.mark.parametrize("name, a, gain", GAINS)
def test_calculate_gain_matches_torch(name, a, gain):
    torch = pytest.importorskip("torch")
    assert init.calculate_gain(name, a) == pytest.approx(torch.nn.init.calculate_gain(name, a), rel=1e-15)


def test_calculate_gain_refuses_what_torch_refuses():
    with pytest.raises(ValueError, match="nonlinearity='gelu'"):
        init.calculate_gain("gelu")
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="gelu"):
        torch.nn.init.calculate_gain("gelu")


@pytest.mark.parametrize(
    "make, scale, mode",
    [
        (lambda: init.XavierNormal(rng=1), 1.0, "fan_avg"),
        (lambda: init.KaimingNormal(rng=2), 2.0, "fan_in"),
        (lambda: init.VarianceScaling(0.5, "fan_out", rng=3), 0.5, "fan_out"),
    ],
)
def test_brainstate_truncated_normal_statistics(make, scale, mode):
    shape = (5, 5, 40, 80)  # HWIO, 80 000 samples
    rf = 25
    fans = {"fan_in": 40 * rf, "fan_out": 80 * rf, "fan_avg": (40 + 80) * rf / 2}
    target = scale / fans[mode]
    x = make()(shape)
    assert x.shape == shape and x.dtype == np.float64
    stddev = math.sqrt(target) / 0.87962566103423978
    assert np.abs(x).max() <= 2 * stddev  # truncated to [-2, 2] standard deviations
    _moment_bounds(x, target, TRUNC_KURTOSIS)
    # the tails are really cut where they should be: |x| > 1.9 stddev is populated
    assert np.mean(np.abs(x) > 1.9 * stddev) > 0.5 * (TRUNC.sf(1.9) * 2)


def test_brainstate_other_distributions():
    shape = (200, 300)
    x = init.VarianceScaling(1.0, "fan_in", distribution="normal", rng=4)(shape)
    _moment_bounds(x, 1.0 / 200, 3.0)
    u = init.VarianceScaling(3.0, "fan_avg", distribution="uniform", rng=5)(shape)
    target = 3.0 / 250
    assert np.abs(u).max() <= math.sqrt(3 * target)
    _moment_bounds(u, target, 9 / 5)  # uniform kurtosis 1.8


@pytest.mark.parametrize(
    "shape, a, mode, nonlinearity, gain",
    [
        ((64, 32, 3, 3), 0, "fan_in", "leaky_relu", math.sqrt(2)),  # elektronn3: kaiming_normal_(weight)
        ((32, 64, 3, 3), 0.2, "fan_out", "leaky_relu", math.sqrt(2 / 1.04)),
        ((100, 500), 0, "fan_in", "tanh", 5 / 3),
    ],
)
def test_kaiming_normal_statistics(shape, a, mode, nonlinearity, gain):
    rf = int(np.prod(shape[2:]))
    fan = shape[1] * rf if mode == "fan_in" else shape[0] * rf
    x = init.kaiming_normal_(shape, np.random.default_rng(6), a=a, mode=mode, nonlinearity=nonlinearity)
    assert x.shape == shape and x.dtype == np.float64
    _moment_bounds(x, gain**2 / fan, 3.0)
    assert np.abs(x).max() > 3.5 * gain / math.sqrt(fan)  # untruncated: the tails exist


def test_constant_zero_and_seeding():
    np.testing.assert_array_equal(init.ZeroInit()((2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(init.Constant(1.5)((4,)), np.full(4, 1.5))
    assert init.Constant(2)((2, 2)).dtype == np.float64
    k1, k2 = init.KaimingNormal(rng=7), init.KaimingNormal(rng=7)
    first = k1((3, 4))
    np.testing.assert_array_equal(first, k2((3, 4)))  # same seed, same draw
    assert not np.array_equal(first, k1((3, 4)))  # the generator advances
    np.testing.assert_array_equal(
        k1((3, 4), rng=np.random.default_rng(8)), k2((3, 4), rng=np.random.default_rng(8))
    )  # a call's rng wins
    np.testing.assert_array_equal(init.kaiming_normal_((3, 4)), init.kaiming_normal_((3, 4), 0))
    assert init.XavierNormal()((0, 4)).shape == (0, 4)
    assert init.kaiming_normal_((0, 4, 3)).shape == (0, 4, 3)


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.XavierNormal()((5,))
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.kaiming_normal_((5,))
    with pytest.raises(ValueError, match="mode='fan'"):
        init.VarianceScaling(1.0, "fan")
    with pytest.raises(ValueError, match="mode='fan_avg'"):
        init.kaiming_normal_((3, 3), mode="fan_avg")
    with pytest.raises(ValueError, match="distribution='cauchy'"):
        init.KaimingNormal(distribution="cauchy")
    with pytest.raises(ValueError, match="scale=0"):
        init.VarianceScaling(0, "fan_in")
    with pytest.raises(TypeError, match="rng='seed'"):
        init.XavierNormal()((3, 3), rng="seed")
    with pytest.raises(ValueError, match="shape="):
        init.ZeroInit()((3, -1))
    with pytest.raises(TypeError, match="shape="):
        init.ZeroInit()(None)
    with pytest.raises(ValueError, match="nonlinearity='gelu'"):
        init.kaiming_normal_((3, 3), nonlinearity="gelu")
