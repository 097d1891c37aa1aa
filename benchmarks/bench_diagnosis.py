"""What the diagnosis costs: refws.conformance.run_case on failing cases with and without it.

Run from the repository root:

    python benchmarks/bench_diagnosis.py            # the figures of docs/conformance.md (7 rounds)
    python benchmarks/bench_diagnosis.py --quick    # smoke run: 2 rounds, fewer cases

For each backend with a slip and each case it fails, ``run_case(backend, case, diagnose=None)``
and ``run_case(backend, case)`` (the default diagnosis) are timed alternately, ``--repeat``
rounds, and the fastest of each is kept; the ratio is with / without, i.e. the run time of the
failing case with the diagnosis as a multiple of the run time without it (a passing case never
calls the diagnosis: ratio 1 by construction). Times are CPU times of the process; the
diagnosis caches are cleared before each timed call, so every call pays the full diagnosis.
Then the whole conv suite is run once each way (every case fails under a flipped kernel).
Every library runs single-threaded (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``).

Backends (each optional framework is skipped when not installed):

- ``numpy``: refws's own functions with the kernel flipped: a backend as fast as refws itself,
  the worst case for the ratio;
- ``jax``: refws.backends.jax (float64) with the kernel flipped; ``warm`` reuses compiled code,
  ``cold`` clears jax's caches before each call, as ``refws check`` meets each configuration once;
- ``torch``: refws.backends.torch (float64) with the kernel flipped;
- ``lax-reference``: the built-in adapter of jax's NumPy reference, with its real bugs, on cases
  it fails.

A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")        # one thread everywhere: CPU times comparable, no spinning pools

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import refws  # noqa: E402
from refws import golden  # noqa: E402
from refws.conformance import diagnosis, load_backend, run, run_case  # noqa: E402
from refws.grads import conv_vjp  # noqa: E402

CASES = ("conv/2d_pad_same", "conv/2d_groups2", "conv/same_stride2_n9_k2", "conv/3d_pad_same",
         "conv/2d_s2_lhs1_rhs2", "conv/1d_pad_pairs")
QUICK_CASES = CASES[:2]
LAX_REFERENCE_CASES = ("conv/bug_lax_reference_same_rhs_dilation", "conv/2d_s1_lhs1_rhs2",
                       "conv/bug_lax_reference_pad_2_minus1")


def _flip(w):
    w = np.asarray(w)
    return w[(slice(None, None, -1),) * (w.ndim - 2)]


class NumpyFlipped:
    """refws with the kernel flipped (true convolution instead of cross-correlation)."""

    name, precision = "numpy", "float64"

    def conv(self, x, w, **kw):
        return refws.conv(x, _flip(w), **kw)

    def conv_vjp(self, x, w, dy, **kw):
        dx, dw = conv_vjp(x, _flip(w), dy, **kw)
        return dx, _flip(dw)

    def conv_jvp(self, x, w, tx, tw, **kw):
        return refws.conv_jvp(x, _flip(w), tx, _flip(tw), **kw)


class Flipped:
    """Any adapter with the kernel flipped before its conv, conv_vjp and conv_jvp."""

    def __init__(self, inner, name):
        self.inner, self.name, self.precision = inner, name, inner.precision

    def conv(self, x, w, **kw):
        return self.inner.conv(x, _flip(w), **kw)

    def conv_vjp(self, x, w, dy, **kw):
        dx, dw = self.inner.conv_vjp(x, _flip(w), dy, **kw)
        return dx, _flip(dw)

    def conv_jvp(self, x, w, tx, tw, **kw):
        return self.inner.conv_jvp(x, _flip(w), tx, _flip(tw), **kw)


def _clear_diagnosis():
    diagnosis._CACHE["case"] = None
    diagnosis._INDEX_CACHE.clear()
    for cached in (diagnosis._inner_geometry, diagnosis._taps_by_output, diagnosis._readers_of_input,
                   diagnosis._reads_of_tap, diagnosis._gamma64):
        cached.cache_clear()


def _timed(fn, before):
    """CPU time of ``fn()`` (all threads of the process): less disturbed by other processes on
    a shared machine than wall time; the frameworks here compute on the CPU."""
    before()
    start = time.process_time()
    fn()
    return time.process_time() - start


def measure(backend, case, repeat: int, before=lambda: None) -> tuple:
    """(fastest without, fastest with, failing arrays, matches) over ``repeat`` alternating rounds."""
    run_case(backend, case)                                     # warm-up (imports, first compile)
    without, with_ = [], []
    for _ in range(repeat):
        without.append(_timed(lambda: run_case(backend, case, diagnose=None), before))
        with_.append(_timed(lambda: run_case(backend, case), lambda: (before(), _clear_diagnosis())))
    records = run_case(backend, case)
    failing = [r for r in records if r.status == "fail"]
    matches = sorted({m for r in failing for m in r.diagnosis["matches"]})
    return min(without), min(with_), len(failing), matches


def backends():
    out = [("numpy", NumpyFlipped(), lambda: None)]
    for name in ("jax", "torch"):
        try:
            inner = load_backend(name, "float64")
        except Exception as exc:                            # noqa: BLE001 - optional framework
            print(f"{name}: not available ({exc})")
            continue
        if name == "torch":
            import torch
            torch.set_num_threads(1)
        out.append((f"{name} warm" if name == "jax" else name, Flipped(inner, name), lambda: None))
        if name == "jax":
            import jax
            out.append(("jax cold", Flipped(inner, name), jax.clear_caches))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="2 rounds, two cases")
    args = ap.parse_args(argv)
    repeat, cases = (2, QUICK_CASES) if args.quick else (args.repeat, CASES)
    rows = []
    for label, backend, before in backends():
        for name in cases:
            t0, t1, n_fail, matches = measure(backend, golden.load(name), repeat, before)
            rows.append((label, name, n_fail, t0, t1, ", ".join(matches)))
    try:
        lr = load_backend("lax-reference")
    except Exception as exc:                                # noqa: BLE001 - optional framework
        print(f"lax-reference: not available ({exc})")
    else:
        for name in (LAX_REFERENCE_CASES[:1] if args.quick else LAX_REFERENCE_CASES):
            t0, t1, n_fail, matches = measure(lr, golden.load(name), repeat)
            rows.append(("lax-reference", name, n_fail, t0, t1, ", ".join(matches)))
    print(f"{'backend':<14} {'case':<42} {'fail':>4} {'without ms':>10} {'with ms':>8} {'ratio':>6}  diagnosis")
    for label, name, n_fail, t0, t1, matches in rows:
        print(f"{label:<14} {name:<42} {n_fail:>4} {1e3 * t0:>10.2f} {1e3 * t1:>8.2f} {t1 / t0:>6.2f}  {matches}")
    by = {}
    for label, *_, t0, t1, _m in rows:
        by.setdefault(label, []).append(t1 / t0)
    print("\nratio with / without, per backend: " + "; ".join(
        f"{k} median {statistics.median(v):.2f}, max {max(v):.2f}" for k, v in by.items()))
    print("\nwhole conv suite, every case failing (refws check's loop, run once each way):")
    for label, backend, before in backends():
        run(backend, suite="conv", diagnose=None)           # warm-up: imports, first compiles
        totals = {}
        for mode in (None, "default"):
            before()
            _clear_diagnosis()
            kw = {"diagnose": None} if mode is None else {}
            start = time.process_time()
            report = run(backend, suite="conv", **kw)
            totals[mode] = time.process_time() - start
        n_fail = sum(r.status == "fail" for r in report.records)
        print(f"  {label:<10} {n_fail} failing arrays: {totals[None]:.2f} s without, {totals['default']:.2f} s "
              f"with the diagnosis (x{totals['default'] / totals[None]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
