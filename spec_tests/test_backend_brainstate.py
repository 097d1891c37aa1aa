"""The brainstate adapter (refws/backends/brainstate.py): brainstate 0.6.0's own layers on golden cases.

brainstate needs Python >= 3.12: run these with an interpreter that has it, e.g.
``/tmp/venv312/bin/python -m pytest spec_tests/test_backend_brainstate.py``; elsewhere the tests
that need it skip and the rest (imports, install hint) run. The references are golden cases built
here from the catalog, judged by the runner as ``refws check brainstate`` judges them. brainstate
0.6.0 computes what refws mirrors, so every case must pass, at float64 and float32, and the
adapter must leave jax's x64 flag as it found it.
"""

from __future__ import annotations

import numpy as np
import pytest

from refws import golden
from refws.conformance import NotExpressible, load_backend
from spec_tests.test_backend_elektronn3 import assert_all_pass, golden_statuses, golden_store, message_without

OBSERVED = "0.6.0"

NAMES = [
    "brainstate/Conv2d_lhs_dilation_pairs",
    "brainstate/ScaledWSConv2d_channel_first_unbatched",
    "brainstate/ScaledWSConv1d_eps_1e-2_mask",
    "brainstate/ScaledWSLinear_mask",
    "brainstate/Linear_no_bias",
    "brainstate/ConvTranspose2d_pairs_neg_mask",
    "brainstate/ConvTranspose3d_s3_valid_groups2_channel_first",
    "ws/brainstate_oihw",
    "ws/brainstate_hwio_no_gain",
]


@pytest.fixture(scope="module")
def bs():
    module = pytest.importorskip(
        "brainstate", reason="brainstate 0.6.0 needs Python >= 3.12 (pip install 'refws[brainstate]')"
    )
    if module.__version__ != OBSERVED:
        pytest.skip(f"brainstate {module.__version__} installed; these tests pin {OBSERVED}")
    from refws.backends.brainstate import BrainstateBackend

    return {p: BrainstateBackend(p) for p in ("float64", "float32")}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return golden_store(tmp_path_factory, NAMES, "bs_golden")


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_golden_cases_pass(bs, store, name, precision):
    assert_all_pass(golden_statuses(bs[precision], store, name, precision), name)


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_jax_x64_flag_is_left_as_it_was(bs, store, precision, x64):
    """brainstate switches jax's process-wide x64 flag with its precision; the adapter restores it."""
    import jax

    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", x64)
    try:
        golden_statuses(bs[precision], store, NAMES[1], precision)
        assert jax.config.jax_enable_x64 == x64
    finally:
        jax.config.update("jax_enable_x64", before)


def test_float32_computes_in_float32(bs, store):
    case = golden.load(NAMES[1], store)
    out = bs["float32"].layer(case.params, {k: v for k, v in case.arrays.items() if "__" not in k})
    assert {v.dtype for v in out.values()} == {np.dtype(np.float32)}
    w_hat = bs["float32"].weight_standardize(
        np.arange(12.0).reshape(3, 4) + 2.0**-30, None, None, out_axis=-1, spec="brainstate"
    )
    assert w_hat.dtype == np.float32


def test_what_it_cannot_express(bs):
    with pytest.raises(NotExpressible, match="library='elektronn3'"):
        bs["float64"].layer({"library": "elektronn3", "cls": "WSConv2d", "kwargs": {}}, {})
    with pytest.raises(NotExpressible, match="cls='GroupNorm'"):
        bs["float64"].layer({"library": "brainstate", "cls": "GroupNorm", "kwargs": {}}, {})
    with pytest.raises(NotExpressible, match="'brainstate' preset only"):
        bs["float64"].weight_standardize(np.ones((3, 4)), None, None, out_axis=-1, spec="nfnets")


def test_registered_and_versioned(bs):
    be = load_backend("brainstate", precision="float32")
    assert (be.name, be.precision) == ("brainstate", "float32")
    assert be.version.startswith(OBSERVED + " (jax ")
    with pytest.raises(ValueError, match="precision="):
        type(be)("float16")


def test_missing_brainstate_says_how_to_install():
    message = message_without("brainstate", "brainstate:BrainstateBackend")
    assert "pip install 'refws[brainstate]'" in message and "Python >= 3.12" in message
