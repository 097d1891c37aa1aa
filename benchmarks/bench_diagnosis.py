"""What the diagnosis costs: refws.conformance.run_case on failing cases with and without it.

Run from the repository root:

    python benchmarks/bench_diagnosis.py            # the figures of docs/conformance.md (9+ rounds)
    python benchmarks/bench_diagnosis.py --quick    # smoke run: 2 rounds, a few cases
    python benchmarks/bench_diagnosis.py --cases    # also print every case's row of the sweeps

For each backend with a slip and each case it fails, ``run_case(backend, case, diagnose=None)``
and ``run_case(backend, case)`` (the default diagnosis) are timed alternately, at least
``--repeat`` rounds and more for short calls (until 0.2 s of calls with the diagnosis were timed,
at most 20 times ``--repeat`` rounds: about 40 rounds for a 5 ms case, 180 for a sub-millisecond
one), and the fastest of each is kept; the ratio is with / without, i.e. the run time of the
failing case with the diagnosis as a multiple of the run time without it (a passing case never
calls the diagnosis: ratio 1 by construction). Times are CPU times of the process; every cache of
the diagnosis is cleared before each timed call (``diagnosis.clear_caches``), so every call pays
the full diagnosis, as the first failing array of a case does in ``refws check``.

Per-case ratio distribution (median and max over cases, the worst case named):

- ``numpy``: refws's own functions with the kernel flipped, on every conv case it fails: a
  backend as fast as refws itself, the worst case for the ratio;
- ``lax-reference``: the built-in adapter of jax's NumPy reference, with its real bugs, on every
  conv case it fails (sub-millisecond calls, wrong output shapes);
- ``jax`` (refws.backends.jax, float64; ``warm`` reuses compiled code, ``cold`` clears jax's
  caches before each call, as ``refws check`` meets each configuration once) and ``torch``
  (refws.backends.torch, float64), both with the kernel flipped, on six cases.

Then the whole conv suite is run each way, three alternating runs, the fastest kept (every case
fails under a flipped kernel). Every library runs single-threaded (``OMP_NUM_THREADS=1``,
``torch.set_num_threads(1)``); each optional framework is skipped when not installed. A
benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread everywhere: CPU times comparable, no spinning pools

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import refws  # noqa: E402
from refws import golden  # noqa: E402
from refws.conformance import diagnosis, load_backend, run, run_case  # noqa: E402
from refws.grads import conv_vjp  # noqa: E402

CASES = (
    "conv/2d_pad_same",
    "conv/2d_groups2",
    "conv/same_stride2_n9_k2",
    "conv/3d_pad_same",
    "conv/2d_s2_lhs1_rhs2",
    "conv/1d_pad_pairs",
)  # the jax and torch rows
QUICK_CASES = CASES[:2]


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
    diagnosis.clear_caches()


def _timed(fn, before):
    """CPU time of ``fn()`` (all threads of the process): less disturbed by other processes on
    a shared machine than wall time; the frameworks here compute on the CPU."""
    before()
    start = time.process_time()
    fn()
    return time.process_time() - start


#: Short calls get more rounds: at least this much CPU time of calls with the diagnosis is timed
#: per case, in at most MAX_ROUNDS_FACTOR times ``--repeat`` rounds (the fastest of many rounds is
#: what a shared machine's other processes disturb least).
MIN_SECONDS = 0.2
MAX_ROUNDS_FACTOR = 20
#: Alternating runs of the whole suite each way (the fastest kept).
SUITE_ROUNDS = 3


def measure(backend, case, repeat: int, before=lambda: None) -> tuple:
    """(fastest without, fastest with, failing arrays, matches) over alternating rounds: at least
    ``repeat``, more while less than :data:`MIN_SECONDS` of calls with the diagnosis were timed."""
    run_case(backend, case)  # warm-up (imports, first compile)
    without, with_ = [], []
    while len(with_) < repeat or (sum(with_) < MIN_SECONDS and len(with_) < MAX_ROUNDS_FACTOR * repeat):
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
        except Exception as exc:  # noqa: BLE001 - optional framework
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


def failing_cases(backend) -> list:
    """The conv cases on which ``backend`` fails at least one array."""
    report = run(backend, suite="conv", diagnose=None)
    return sorted({r.case for r in report.records if r.status == "fail"})


def sweep(label, backend, names, repeat, before=lambda: None, show=False) -> list:
    """``measure`` on each case: rows ``(label, case, failing arrays, without, with, matches)``."""
    rows = []
    for name in names:
        t0, t1, n_fail, matches = measure(backend, golden.load(name), repeat, before)
        rows.append((label, name, n_fail, t0, t1, ", ".join(matches)))
        if show:
            _print_rows(rows[-1:])
    return rows


def _print_rows(rows):
    for label, name, n_fail, t0, t1, matches in rows:
        print(f"{label:<14} {name:<42} {n_fail:>4} {1e3 * t0:>10.2f} {1e3 * t1:>8.2f} {t1 / t0:>6.2f}  {matches}")


def _summary(rows) -> str:
    ratios = [t1 / t0 for *_, t0, t1, _m in rows]
    worst = max(rows, key=lambda r: r[4] / r[3])
    without = [1e3 * r[3] for r in rows]
    added = [1e3 * (r[4] - r[3]) for r in rows]
    return (
        f"{len(rows)} cases, ratio median {statistics.median(ratios):.2f}, max {max(ratios):.2f} "
        f"({worst[1]}); without {min(without):.2f}-{max(without):.2f} ms, "
        f"the diagnosis adds {min(added):.2f}-{max(added):.2f} ms"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="2 rounds, a few cases")
    ap.add_argument("--cases", action="store_true", help="print every case's row of the sweeps")
    args = ap.parse_args(argv)
    repeat = 2 if args.quick else args.repeat
    print(f"{'backend':<14} {'case':<42} {'fail':>4} {'without ms':>10} {'with ms':>8} {'ratio':>6}  diagnosis")
    summaries, rows = [], []
    numpy_cases = failing_cases(NumpyFlipped())
    sweeps = [("numpy", NumpyFlipped(), numpy_cases[::12] if args.quick else numpy_cases, repeat)]
    try:
        lr = load_backend("lax-reference")
    except Exception as exc:  # noqa: BLE001 - optional framework
        print(f"lax-reference: not available ({exc})")
    else:
        lr_cases = failing_cases(lr)
        sweeps.append(("lax-reference", lr, lr_cases[::4] if args.quick else lr_cases, repeat))
    for label, backend, names, rounds in sweeps:
        swept = sweep(label, backend, names, rounds, show=args.cases)
        summaries.append((label, _summary(swept)))
        rows += swept
    for label, backend, before in backends():
        if label == "numpy":
            continue
        rows += sweep(label, backend, QUICK_CASES if args.quick else CASES, repeat, before, show=True)
        summaries.append((label, _summary(rows[-(len(QUICK_CASES) if args.quick else len(CASES)) :])))
    print("\nper-case ratio with / without the diagnosis:")
    for label, text in summaries:
        print(f"  {label:<14} {text}")
    suite_rounds = 1 if args.quick else SUITE_ROUNDS
    print(f"\nwhole conv suite, every case failing (refws check's loop, fastest of {suite_rounds} run(s) each way):")
    for label, backend, before in backends():
        run(backend, suite="conv", diagnose=None)  # warm-up: imports, first compiles
        totals: dict = {None: [], "default": []}
        for _ in range(suite_rounds):
            for mode in (None, "default"):
                before()
                _clear_diagnosis()
                kw = {"diagnose": None} if mode is None else {}
                start = time.process_time()
                report = run(backend, suite="conv", **kw)
                totals[mode].append(time.process_time() - start)
        t0, t1 = min(totals[None]), min(totals["default"])
        n_fail = sum(r.status == "fail" for r in report.records)
        print(f"  {label:<10} {n_fail} failing arrays: {t0:.2f} s without, {t1:.2f} s with it (x{t1 / t0:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
