"""Shared helpers of the refws benchmarks: cases, optional peers, timing and tables.

The peers (jax, jax's NumPy ``lax_reference``, torch) are optional: each loader returns ``None``
with a reason when the package is missing, and the scripts print "not installed" for it.
Nothing here is a test: timings are printed, never asserted.

Timing protocol (the machine has 2 cores shared with other work): every implementation of a case
is prepared and called once as a warm-up (jax's compile happens there), then the implementations
are called in turn, one call each per round, for ``repeat`` rounds; each reports the median of its
rounds. Interleaving the rounds spreads a burst of outside load over every implementation
instead of penalising the one that happened to run during it; a pause before each call and an
order rotating per round keep one library's spinning worker threads from always slowing the next.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field


def _threads_from_argv(argv) -> int | None:
    """The value of ``--threads N`` / ``--threads=N``, read before numpy, jax or torch start their pools."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--threads="):
            value = arg.split("=", 1)[1]
        else:
            continue
        return int(value) if value.isdigit() and int(value) > 0 else None
    return None


THREADS = _threads_from_argv(sys.argv[1:])
if THREADS is not None:  # every library's pool, set before any of them is imported
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(THREADS)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen="
        + ("false" if THREADS == 1 else "true")
        + f" intra_op_parallelism_threads={THREADS}"
    ).strip()

import numpy as np  # noqa: E402  (after the thread settings above)

try:
    import refws
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import refws

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no accelerator probing or warnings
if THREADS is not None:  # refws's tap formulation runs its own threads
    sys.modules["refws.conv"].TAPS_THREADS = THREADS

NOT_INSTALLED = "not installed"
SETTLE_SECONDS = 0.25  # pause before each timed call, see time_interleaved


# --- cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One convolution problem, canonical layouts: ``x (N, *spatial, C_in)``, ``w (*k, C_in/G, C_out)``."""

    name: str
    x_shape: tuple
    w_shape: tuple
    stride: tuple = 1
    padding: object = "SAME"
    rhs_dilation: object = 1
    groups: int = 1
    note: str = ""
    calls: int = 1  # calls per timed sample: > 1 for a tiny problem, timed per call
    dense: bool = False  # one group: its forward is held to a share of the matmul probe

    @property
    def dims(self) -> int:
        return len(self.w_shape) - 2

    def geometry(self):
        return refws.conv_geometry(
            self.x_shape[1:-1], self.w_shape[:-2], self.stride, self.padding, 1, self.rhs_dilation
        )

    def out_shape(self) -> tuple:
        return (self.x_shape[0], *self.geometry().out_spatial, self.w_shape[-1])

    def flops(self) -> float:
        """``2 * N * prod(out_spatial) * prod(kernel) * C_in/groups * C_out``."""
        g = self.geometry()
        return (
            2.0
            * self.x_shape[0]
            * math.prod(g.out_spatial)
            * math.prod(g.kernel_spatial)
            * self.w_shape[-2]
            * self.w_shape[-1]
        )

    def kwargs(self) -> dict:
        """Keyword arguments of ``refws.conv`` / ``refws.conv_vjp``."""
        return dict(stride=self.stride, padding=self.padding, rhs_dilation=self.rhs_dilation, groups=self.groups)

    def describe(self) -> str:
        k = "x".join(map(str, self.w_shape[:-2]))
        sp = "x".join(map(str, self.x_shape[1:-1]))
        return f"N={self.x_shape[0]} {sp} {self.x_shape[-1]}->{self.w_shape[-1]} k={k}" + (
            f" {self.note}" if self.note else ""
        )

    def operands(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.x_shape)
        w = rng.standard_normal(self.w_shape) / math.sqrt(math.prod(self.w_shape[:-1]))
        return x, w


def conv_cases(batch: int = 8) -> list[Case]:
    """The cases of issues 2 and 15; ``batch`` shrinks them for ``--quick`` (not the tiny one)."""
    n3 = max(1, batch // 4)
    return [
        Case("main", (batch, 64, 64, 32), (3, 3, 32, 64), note="SAME", dense=True),
        Case("strided", (batch, 64, 64, 32), (3, 3, 32, 64), stride=2, note="s=2 SAME", dense=True),
        Case("dilated", (batch, 64, 64, 32), (3, 3, 32, 64), rhs_dilation=2, note="rhs_dil=2 SAME", dense=True),
        Case("3d", (n3, 16, 32, 32, 16), (3, 3, 3, 16, 32), note="SAME", dense=True),
        Case("pointwise", (batch, 64, 64, 32), (1, 1, 32, 64), note="1x1", dense=True),
        Case("grouped", (batch, 64, 64, 32), (3, 3, 8, 64), groups=4, note="G=4 SAME"),
        Case("grouped2", (batch, 64, 64, 32), (3, 3, 2, 32), groups=16, note="G=16 2 ch/group SAME"),
        Case("depthwise", (batch, 64, 64, 32), (3, 3, 1, 64), groups=32, note="G=32 mult=2 SAME"),
        Case("depthwise1", (batch, 64, 64, 32), (3, 3, 1, 32), groups=32, note="G=32 mult=1 SAME"),
        Case("tiny", (2, 7, 7, 3), (3, 3, 3, 4), note="SAME, per call", calls=2000),
    ]


def catalog_cases(path) -> list[Case]:
    """The distinct convolutions of a golden catalog file (``examples/catalogs/*.toml``), as cases.

    Only the ``conv`` suite; channels-last shapes (a channel-first entry is converted); entries
    with lhs dilation (no peer here takes it the same way) are left out; of entries with the same
    shapes and arguments (grid sweeps) the first name is kept.
    """
    from refws.golden.catalog_file import load_catalog

    cases, seen = [], set()
    for entry in load_catalog(path).cases:
        p = entry.params
        if entry.suite != "conv" or p["lhs_dilation"] not in (1, [1] * (len(p["w_shape"]) - 2)):
            continue
        x_shape = tuple(p["x_shape"])
        if p["channel_first"]:
            x_shape = (x_shape[0], *x_shape[2:], x_shape[1])
        key = repr((x_shape, p["w_shape"], p["stride"], p["padding"], p["rhs_dilation"], p["groups"]))
        if key in seen:
            continue
        seen.add(key)
        padding = p["padding"] if isinstance(p["padding"], str) else tuple(map(tuple, p["padding"]))
        seq = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
        note = " ".join(
            [f"s={p['stride']}"] * (p["stride"] not in (1, [1] * len(x_shape[1:-1])))
            + [f"G={p['groups']}"] * (p["groups"] > 1)
            + [padding if isinstance(padding, str) else "pads"]
        )
        cases.append(
            Case(
                entry.name.split("/", 1)[1],
                x_shape,
                tuple(p["w_shape"]),
                seq(p["stride"]),
                padding,
                seq(p["rhs_dilation"]),
                p["groups"],
                note=note,
                dense=p["groups"] == 1,
            )
        )
    return cases


def selected_cases(args, batch: int) -> list[Case]:
    """The built-in cases, or a catalog's (``--catalog``), filtered by ``--case``."""
    cases = catalog_cases(args.catalog) if args.catalog else conv_cases(batch)
    return [c for c in cases if not args.case or c.name in args.case]


# --- timing ---------------------------------------------------------------------------------


@dataclass
class Timing:
    samples: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")


def per_call(fn, calls: int):
    """``fn`` repeated ``calls`` times, for timing a call too short to time alone (divide by ``calls``)."""
    if calls == 1:
        return fn

    def repeated():
        for _ in range(calls):
            fn()

    return repeated


def time_interleaved(fns: dict, repeat: int) -> dict:
    """Median seconds per callable; ``fns`` maps a label to a blocking zero-argument callable.

    Each callable has already been warmed up by its preparer; here every round calls each
    callable once, in turn, after a pause of ``SETTLE_SECONDS``. Worker threads keep spinning
    for a while after their library returns (OpenBLAS for about 0.1 s, OpenMP and XLA pools
    briefly), stealing the cores from whatever runs next; the pause lets them go idle, and the
    order rotates by one place per round so no implementation always follows the same one.
    """
    timings = {label: Timing() for label in fns}
    labels = list(fns)
    for round_ in range(repeat):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            time.sleep(SETTLE_SECONDS)
            if WAIT_IDLE is not None:
                IDLE_STATS[wait_idle(WAIT_IDLE)] += 1
            t0 = time.perf_counter()
            fns[label]()
            timings[label].samples.append(time.perf_counter() - t0)
    return {label: t.median for label, t in timings.items()}


def time_per_call(fns: dict, repeat: int, calls: int) -> dict:
    """:func:`time_interleaved` with each sample ``calls`` calls long (:func:`per_call`), as
    median seconds per call."""
    times = time_interleaved({label: per_call(fn, calls) for label, fn in fns.items()}, repeat)
    return {label: t / calls for label, t in times.items()}


# --wait-idle: before each timed call, wait (at most IDLE_MAX_WAIT seconds) until the machine's
# cores were idle for at least this fraction of IDLE_WINDOW seconds (Linux /proc/stat), so that
# on a shared machine the samples come from quiet moments; IDLE_STATS counts quiet and not.
WAIT_IDLE: float | None = None
IDLE_WINDOW, IDLE_MAX_WAIT = 0.2, 60.0
IDLE_STATS = {True: 0, False: 0}


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + fields[4], sum(fields)  # idle + iowait, total


def idle_fraction(window: float = IDLE_WINDOW) -> float | None:
    """Share of the machine's CPU time that was idle over the next ``window`` seconds (None: unknown)."""
    before = _cpu_times()
    time.sleep(window)
    after = _cpu_times()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def wait_idle(threshold: float) -> bool:
    """Wait until the cores are idle for ``threshold`` of a window; False if they never were."""
    deadline = time.perf_counter() + IDLE_MAX_WAIT
    while time.perf_counter() < deadline:
        share = idle_fraction()
        if share is None or share >= threshold:
            return True
    return False


def dgemm_probe(size: int = 2048, rounds: int = 3) -> float:
    """Best GFLOP/s of a square float64 matrix product: how fast this machine's BLAS is right now.

    Printed next to the figures because the cores are virtual and shared: the same code runs
    up to 1.5x slower when the host is busy, and compute-bound code (refws's product) suffers
    more than memory-bound code.
    """
    a = np.random.default_rng(0).standard_normal((size, size))
    best = math.inf
    for _ in range(rounds):
        if WAIT_IDLE is not None:
            wait_idle(WAIT_IDLE)
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


# --- optional peers -------------------------------------------------------------------------


def load_jax():
    """``(jax, lax)`` with float64 enabled, or ``None``."""
    try:
        import jax
        from jax import lax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    return jax, lax


def load_lax_reference():
    try:
        from jax._src import lax_reference
    except ImportError:
        return None
    return lax_reference


def load_torch():
    try:
        import torch
    except ImportError:
        return None
    if THREADS is not None and torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)
    return torch


def versions() -> list[str]:
    lines = [f"python {platform.python_version()}, numpy {np.__version__}, refws {refws.__version__}"]
    jx = load_jax()
    if jx is None:
        lines.append(f"jax: {NOT_INSTALLED}")
    else:
        import jaxlib

        lines.append(
            f"jax {jx[0].__version__}, jaxlib {jaxlib.__version__} (backend {jx[0].default_backend()}, x64 on)"
        )
    tc = load_torch()
    lines.append(
        f"torch: {NOT_INSTALLED}" if tc is None else f"torch {tc.__version__} ({tc.get_num_threads()} intra-op threads)"
    )
    return lines


def machine() -> str:
    load = os.getloadavg()
    idle = (
        ""
        if WAIT_IDLE is None
        else (f"; timed calls after an idle moment: {IDLE_STATS[True]}, after waiting in vain: {IDLE_STATS[False]}")
    )
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"square 2048 float64 matmul {dgemm_probe():.0f} GFLOP/s{idle}"
    )


def _dn(dims: int):
    sp = "DHW"[-dims:] if dims <= 3 else "".join(chr(ord("a") + i) for i in range(dims))
    return (f"N{sp}C", f"{sp}IO", f"N{sp}C")


# Layout conversions for torch (outside every timed region).
def to_torch_x(x: np.ndarray) -> np.ndarray:
    """``(N, *spatial, C)`` -> ``(N, C, *spatial)``, contiguous."""
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def from_torch_x(y: np.ndarray) -> np.ndarray:
    return np.moveaxis(y, 1, -1)


def to_torch_w(w: np.ndarray) -> np.ndarray:
    """``(*k, C_in/G, C_out)`` -> ``(C_out, C_in/G, *k)``, contiguous."""
    d = w.ndim - 2
    return np.ascontiguousarray(np.transpose(w, (d + 1, d, *range(d))))


def from_torch_w(w: np.ndarray) -> np.ndarray:
    d = w.ndim - 2
    return np.transpose(w, (*range(2, d + 2), 1, 0))


def torch_operands(case: Case, x: np.ndarray):
    """Torch's input and its symmetric ``padding``; asymmetric pads are applied to ``x`` up front."""
    pads = case.geometry().padding
    if all(lo == hi and lo >= 0 for lo, hi in pads):
        return to_torch_x(x), tuple(lo for lo, _ in pads)
    return to_torch_x(_pad_canonical(x, pads)), (0,) * case.dims


def _pad_canonical(x: np.ndarray, pads) -> np.ndarray:
    """Zero-pad (or crop) the spatial axes of a channels-last array."""
    for axis, (lo, hi) in enumerate(pads, start=1):
        if lo < 0:
            x = np.take(x, range(-lo, x.shape[axis]), axis=axis)
            lo = 0
        if hi < 0:
            x = np.take(x, range(0, x.shape[axis] + hi), axis=axis)
            hi = 0
        width = [(0, 0)] * x.ndim
        width[axis] = (lo, hi)
        x = np.pad(x, width)
    return x


# --- forward callables: each returns (blocking callable, result as channels-last numpy) -------


def refws_forward(case: Case, x, w):
    fn = lambda: refws.conv(x, w, **case.kwargs())
    return fn, fn()


def jax_forward(case: Case, x, w):
    jx = load_jax()
    if jx is None:
        return None
    jax, lax = jx
    xj, wj = jax.device_put(x), jax.device_put(w)
    f = jax.jit(lax_conv(case, lax))
    fn = lambda: f(xj, wj).block_until_ready()
    return fn, np.asarray(fn())


def lax_conv(case: Case, lax):
    """``(x, w) -> lax.conv_general_dilated(x, w, ...)`` for the case (NHWC / HWIO), not jitted."""
    return lambda a, b: lax.conv_general_dilated(
        a,
        b,
        window_strides=_seq(case.stride, case.dims),
        padding=_lax_padding(case),
        rhs_dilation=_seq(case.rhs_dilation, case.dims),
        dimension_numbers=_dn(case.dims),
        feature_group_count=case.groups,
    )


def lax_reference_forward(case: Case, x, w):
    """jax's NumPy reference; it has no groups, so grouped cases return a reason instead."""
    ref = load_lax_reference()
    if ref is None:
        return None
    if case.groups != 1:
        return "no groups"
    # Explicit pads: lax_reference's string padding ignores rhs_dilation (see ../shared/NOTES.md).
    pads = [tuple(p) for p in case.geometry().padding]
    fn = lambda: ref.conv_general_dilated(
        x, w, _seq(case.stride, case.dims), pads, (1,) * case.dims, _seq(case.rhs_dilation, case.dims), _dn(case.dims)
    )
    return fn, np.asarray(fn())


def torch_forward(case: Case, x, w):
    torch = load_torch()
    if torch is None:
        return None
    if case.dims not in (1, 2, 3):
        return f"no conv{case.dims}d"
    conv = getattr(torch.nn.functional, f"conv{case.dims}d")
    xn, padding = torch_operands(case, x)
    xt, wt = torch.from_numpy(xn), torch.from_numpy(to_torch_w(w))
    kw = dict(
        stride=_seq(case.stride, case.dims),
        padding=padding,
        dilation=_seq(case.rhs_dilation, case.dims),
        groups=case.groups,
    )

    def fn():
        with torch.no_grad():
            return conv(xt, wt, **kw)

    return fn, from_torch_x(fn().numpy())


def _seq(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _lax_padding(case: Case):
    p = case.padding
    return p.upper() if isinstance(p, str) else [tuple(q) for q in case.geometry().padding]


# --- output ---------------------------------------------------------------------------------


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (pipe-separated, columns padded) printable in a terminal and a README."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *map(line, rows)])


def ms(t: float) -> str:
    return f"{t * 1e3:.1f}" if math.isfinite(t) else "-"


def duration(t: float) -> str:
    """``25.1 ms`` or, below a millisecond, ``37 us``."""
    if not math.isfinite(t):
        return "-"
    return f"{t * 1e6:.0f} us" if t < 1e-3 else f"{t * 1e3:.1f} ms"


def fastest(times: dict, labels) -> tuple:
    """``(label, seconds)`` of the fastest of ``labels`` that has a time, or ``(None, nan)``."""
    timed = [(times[label], label) for label in labels if label in times and math.isfinite(times[label])]
    if not timed:
        return None, float("nan")
    t, label = min(timed)
    return label, t


# Targets of issue 15 (reported, never asserted): every case within this factor of its fastest
# peer, dense forward cases at this share of the square-matmul probe or more, and the tiny call.
TARGET_VS_FASTEST = 1.5
TARGET_PROBE_SHARE = 0.5
TARGET_TINY_SECONDS = 40e-6


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def ratio(t_refws: float, t_peer) -> str:
    return f"{t_refws / t_peer:.2f}" if isinstance(t_peer, float) and math.isfinite(t_peer) else "-"


def argument_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick", action="store_true", help="batch 2 (3-D: 1) and 3 repeats: a smoke run, not figures to quote"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed rounds per implementation after the warm-up (default 7, --quick 3)",
    )
    p.add_argument("--case", action="append", default=None, help="run only this case (repeatable)")
    p.add_argument(
        "--catalog",
        default=None,
        metavar="PATH",
        help="time the conv cases of a golden catalog file (examples/catalogs/*.toml) instead",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=None,
        metavar="SHARE",
        help="before each timed call wait (up to a minute) until the cores were idle for this "
        "share of 0.2 s, e.g. 0.9: figures from the quiet moments of a shared machine",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for every library (OpenBLAS, XLA, torch); default: their own defaults, i.e. all cores",
    )
    return p


def settings(args) -> tuple[int, int]:
    """``(batch, repeat)`` from the command line (and the ``--wait-idle`` setting)."""
    global WAIT_IDLE
    WAIT_IDLE = args.wait_idle
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 7)
    if repeat < 1:
        raise SystemExit(f"--repeat {repeat}: expected a positive int")
    return (2 if args.quick else 8), repeat


def print_header(title: str, repeat: int) -> None:
    print(title)
    print(f"machine: {machine()}")
    for line in versions():
        print(line)
    threads = "library defaults (all cores)" if THREADS is None else f"{THREADS} per library"
    print(f"threads: {threads}")
    print(
        f"timing: median of {repeat} interleaved rounds (order rotating each round) "
        "after one warm-up call (jit compile excluded)"
        + (
            ""
            if WAIT_IDLE is None
            else f"; each call after the cores were {WAIT_IDLE:.0%} idle for "
            f"{IDLE_WINDOW} s (waiting at most {IDLE_MAX_WAIT:.0f} s)"
        )
    )
    print()
