"""The geometry printer: which input positions each output position of a convolution reads.

:func:`explain` prints, for one convolution's arguments, what :func:`refws.conv_geometry` makes of
them (explicit ``(lo, hi)`` pads, the output size and its formula with the numbers filled in) and,
per spatial axis, a diagram of the lhs-dilated, padded input with the kernel taps that every
output position reads::

    axis 0: n=5, k=3, s=2, lhs_dilation=1, rhs_dilation=1, pads (lo, hi) = (1, 1) -> out 3
      ...
      input      p  0  1  2  3  4  p
      o=0        0  1  2                reads x[0, 1]; tap 0 on padding
      o=1              0  1  2          reads x[1, 2, 3]

The header row names what sits at each padded position: an input index ``i``, ``p`` for padding,
``.`` for a hole inserted by lhs dilation; a row puts tap ``t`` under the position it reads.
:func:`axis_taps` gives the same facts as data (for tools and the diagnosis), and
:func:`explain_case` explains a golden case (the transposed convolution as the equivalent
forward convolution of the stride-dilated input) with a backend's failing elements marked.

Only :mod:`refws.geometry` (and the transposed convolution's geometry from :mod:`refws.grads`)
is used, so what is printed is what refws computes.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from collections.abc import Sequence

from .geometry import ConvGeometry, as_int_tuple, conv_geometry
from .grads import input_grad_pads, transpose_geometry

__all__ = ["Tap", "axis_taps", "explain", "explain_geometry", "case_geometry", "explain_case"]

MAX_ROWS = 24          # output positions drawn per axis before the middle is elided
MAX_WIDTH = 110        # characters of a drawn row; wider axes get the text summary only


@dataclass(frozen=True)
class Tap:
    """One kernel tap of one output position along one axis.

    ``padded``: the position read, in the padded (or cropped) lhs-dilated input, 0-based;
    ``kind``: ``"input"`` (reads ``x[source]``), ``"pad"`` (a padding zero) or ``"hole"`` (a zero
    inserted by lhs dilation).
    """

    tap: int
    padded: int
    kind: str
    source: int | None


def axis_taps(g: ConvGeometry, axis: int, o: int) -> tuple:
    """The :class:`Tap` s of output position ``o`` along ``axis``: tap ``t`` reads padded
    position ``o*s + t*d``, i.e. lhs-dilated position ``o*s + t*d - lo``."""
    if not 0 <= o < g.out_spatial[axis]:
        raise ValueError(f"o={o}: expected an output position along axis {axis}, in [0, {g.out_spatial[axis]})")
    n, lo = g.in_spatial[axis], g.padding[axis][0]
    s, L, d = g.stride[axis], g.lhs_dilation[axis], g.rhs_dilation[axis]
    taps = []
    for t in range(g.kernel_spatial[axis]):
        p = o * s + t * d
        q = p - lo
        if q < 0 or n == 0 or q > (n - 1) * L:
            taps.append(Tap(t, p, "pad", None))
        elif q % L:
            taps.append(Tap(t, p, "hole", None))
        else:
            taps.append(Tap(t, p, "input", q // L))
    return tuple(taps)


def _plural(n: int, word: str) -> str:
    return f"{word}{'s' if n != 1 else ''}"


def _tap_words(taps, kind: str, one: str, many: str) -> str:
    ts = [str(t.tap) for t in taps if t.kind == kind]
    return f"{_plural(len(ts), 'tap')} {', '.join(ts)} on {one if len(ts) == 1 else many}" if ts else ""


def _row_summary(taps) -> str:
    src = [str(t.source) for t in taps if t.kind == "input"]
    parts = [f"reads x[{', '.join(src)}]" if src else "reads no input"]
    parts += [w for w in (_tap_words(taps, "pad", "padding", "padding"), _tap_words(taps, "hole", "a hole", "holes"))
              if w]
    return "; ".join(parts)


def _sum(*terms) -> str:
    """``a + b - c`` for integers (a negative term is written as a subtraction)."""
    out = str(terms[0])
    for t in terms[1:]:
        out += f" - {-t}" if t < 0 else f" + {t}"
    return out


def _padded_labels(g: ConvGeometry, axis: int) -> list:
    """What sits at each padded position: the input index, ``p`` or ``.``."""
    n, (lo, hi), L = g.in_spatial[axis], g.padding[axis], g.lhs_dilation[axis]
    n_l = (n - 1) * L + 1 if n > 0 else 0
    labels = []
    for p in range(max(n_l + lo + hi, 0)):
        q = p - lo
        labels.append("p" if q < 0 or q >= n_l else ("." if q % L else str(q // L)))
    return labels


def _rows(out: int, at) -> list:
    """Output positions to draw (``None`` marks an elision)."""
    if out <= MAX_ROWS:
        return list(range(out))
    keep = set(range(4)) | set(range(out - 4, out)) | set(at or ())
    rows: list = []
    last = -1
    for o in sorted(keep):
        if o - last > 1:
            rows.append(None)
        rows.append(o)
        last = o
    return rows


def _axis_text(g: ConvGeometry, axis: int, padding, at=None, inputs=None) -> list:
    n, k, s = g.in_spatial[axis], g.kernel_spatial[axis], g.stride[axis]
    L, d, (lo, hi), out = g.lhs_dilation[axis], g.rhs_dilation[axis], g.padding[axis], g.out_spatial[axis]
    n_l = (n - 1) * L + 1 if n > 0 else 0
    k_d = g.dilated_kernel[axis]
    lines = [f"axis {axis}: n={n}, k={k}, s={s}, lhs_dilation={L}, rhs_dilation={d}, "
             f"pads (lo, hi) = ({lo}, {hi}) -> out {out}",
             f"  dilated input   n_L = (n - 1)*L + 1 = ({n} - 1)*{L} + 1 = {n_l}",
             f"  dilated kernel  k_d = (k - 1)*d + 1 = ({k} - 1)*{d} + 1 = {k_d}"]
    if isinstance(padding, str) and padding.upper() != "VALID":
        o_same = -(-n // s)
        total = max((o_same - 1) * s + k_d - n, 0)
        side = "start" if padding.upper() == "SAME_LOWER" else "end"
        lines.append(f"  {padding.upper()}: out = ceil(n / s) = {o_same}, total = max((out - 1)*s + k_d - n, 0) "
                     f"= {total}, split ({lo}, {hi}) (an odd element at the {side})")
    span = n_l + lo + hi - k_d
    formula = f"floor(({_sum(n_l, lo, hi, -k_d)}) / {s}) + 1 = {out}" if span >= 0 else \
        f"0 (the padded input, {n_l + lo + hi}, is shorter than the dilated kernel, {k_d})"
    lines.append(f"  output          out = floor((n_L + lo + hi - k_d) / s) + 1 = {formula}")
    for side, pad, first in (("lo", lo, True), ("hi", hi, False)):
        if pad < 0:
            idx = [q // L for q in (range(-pad) if first else range(n_l + pad, n_l)) if q % L == 0]
            lines.append(f"  {side} = {pad} crops {-pad} dilated {_plural(-pad, 'position')}"
                         + (f" (x[{', '.join(map(str, idx))}])" if idx else ""))
    if out == 0:
        return lines
    labels = _padded_labels(g, axis)
    width = max([len(t) for t in labels] + [len(str(k - 1))]) + 1
    marked = set(at or ())
    tag = max(len(f"o={out - 1}"), 5) + 2
    draw = len(labels) * width + tag <= MAX_WIDTH
    if draw:
        lines.append("  " + "input".ljust(tag) + "".join(t.rjust(width) for t in labels))
        if inputs:
            hit = set(inputs)
            marks = ["^" if lab.isdigit() and int(lab) in hit else "" for lab in labels]
            lines.append("  " + "failing".ljust(tag) + "".join(m.rjust(width) for m in marks))
    for o in _rows(out, marked):
        if o is None:
            lines.append("  " + "...")
            continue
        taps = axis_taps(g, axis, o)
        head = ("> " if o in marked else "  ") + f"o={o}".ljust(tag)
        if draw:
            cells = [""] * len(labels)
            for t in taps:
                cells[t.padded] = str(t.tap)
            lines.append(head + "".join(c.rjust(width) for c in cells) + "   " + _row_summary(taps))
        else:
            lines.append(head + _row_summary(taps))
    return lines


def _positions(at, n: int) -> list:
    """``at`` as one set of marked output positions per axis."""
    if at is None:
        return [None] * n
    items = list(at)
    if len(items) != n:
        raise ValueError(f"at={at!r}: expected {n} entries (one per spatial axis)")
    if all(isinstance(v, numbers.Integral) for v in items):
        return [[int(v)] for v in items]
    return [None if v is None else [int(p) for p in v] for v in items]


def explain_geometry(g: ConvGeometry, padding=None, *, at=None, inputs=None, title: str = "") -> str:
    """The text of :func:`explain` for an already normalised geometry.

    ``padding`` is the original padding argument (a SAME rule is spelled out when it is a
    string); ``inputs`` marks input positions per axis (``^`` under the header).
    """
    marks, in_marks = _positions(at, g.ndim), _positions(inputs, g.ndim)
    lines = [title or "convolution geometry",
             f"  input {g.in_spatial}, kernel {g.kernel_spatial}, stride {g.stride}, "
             f"lhs_dilation {g.lhs_dilation}, rhs_dilation {g.rhs_dilation}",
             f"  padding {padding!r} -> explicit pads {g.padding}; output {g.out_spatial}"
             if padding is not None else f"  explicit pads {g.padding}; output {g.out_spatial}"]
    for axis in range(g.ndim):
        lines.append("")
        lines += _axis_text(g, axis, padding, marks[axis], in_marks[axis])
    return "\n".join(lines)


def explain(in_spatial, kernel_spatial, stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1, *,
            at=None, inputs=None) -> str:
    """Explain the geometry of a convolution (arguments as :func:`refws.conv_geometry`, 1-D to N-D).

    Parameters
    ----------
    at : optional output positions to mark with ``>``: one output index (``N`` ints) or, per
        axis, a sequence of positions (or None).
    inputs : optional input positions to mark with ``^``, in the same form.

    Returns
    -------
    str
        The normalised arguments, then per axis the size formulas with the numbers filled in
        (and the SAME split for string padding), negative pads as crops, and one row per output
        position (up to :data:`MAX_ROWS`, else the first and last four and the marked ones) with
        the taps it reads and a summary ``reads x[...]; taps ... on padding``.
    """
    g = conv_geometry(in_spatial, kernel_spatial, stride, padding, lhs_dilation, rhs_dilation)
    return explain_geometry(g, padding, at=at, inputs=inputs)


# --- golden cases -------------------------------------------------------------------------------

def _spatial_of(shape, channel_first: bool, batched: bool) -> tuple:
    inner = tuple(shape[1:] if batched else shape)
    return inner[1:] if channel_first else inner[:-1]


def case_geometry(suite: str, params: dict):
    """``(geometry, padding, note)`` of a golden case of the ``conv`` or ``conv_transpose`` suite
    (``None`` for other suites).

    A transposed convolution is shown as the forward convolution that computes it: the input
    dilated by the stride (``lhs_dilation = s``), stride 1, the rhs dilation, and pads
    ``(d(k - 1) - p, d(k - 1) - p + output_padding)`` of the flipped kernel.
    """
    if suite not in ("conv", "conv_transpose"):
        return None
    x_shape, w_shape, cf = params["x_shape"], params["w_shape"], params["channel_first"]
    batched = len(x_shape) == len(w_shape)
    spatial, kernel = _spatial_of(x_shape, cf, batched), tuple(w_shape[:-2])
    if suite == "conv":
        g = conv_geometry(spatial, kernel, params["stride"], params["padding"], params["lhs_dilation"],
                          params["rhs_dilation"])
        return g, params["padding"], ""
    fwd = transpose_geometry(spatial, kernel, params["stride"], params["padding"], params["output_padding"],
                             params["dilation"], params["output_size"], 2 if batched else 1)
    stride = as_int_tuple(params["stride"], len(spatial), "stride")
    pads = input_grad_pads(fwd)
    g = conv_geometry(spatial, kernel, 1, pads, stride, fwd.rhs_dilation)
    note = (f"transposed convolution (stride {stride}, padding {params['padding']}, output_padding "
            f"{params['output_padding']}, dilation {params['dilation']}) computed as the forward "
            "convolution of the stride-dilated input with the flipped kernel")
    return g, None, note


def _marks(where: dict | None, roles: Sequence[str]) -> list:
    """Positions per spatial axis of a failing array's ``where`` summary."""
    out = []
    for entry in (where or {}).get("axes", []):
        if entry.get("role") in roles:
            out.append(entry.get("positions"))
    return out


def explain_case(suite: str, params: dict, failing: dict | None = None, title: str = "") -> str:
    """Explain a golden case's geometry with the failing elements of a backend marked.

    ``failing`` maps array names (``y``, ``ty``, ``dx``, ``dw``) to their ``where`` summaries
    (:func:`refws.testing.describe_where`): output-like arrays mark output rows (``>``), ``dx``
    marks input positions (``^``). A case without convolution geometry says so.
    """
    found = case_geometry(suite, params)
    if found is None:
        return f"{title or suite}: no convolution geometry to explain (suite {suite!r})"
    g, padding, note = found
    at, inputs, text = None, None, []
    for name, where in (failing or {}).items():
        pos = _marks(where, ("spatial",))
        if len(pos) != g.ndim:
            continue
        if name in ("y", "ty"):
            at = pos if at is None else [sorted(set(a) | set(b)) for a, b in zip(at, pos)]
        elif name == "dx":
            inputs = pos
    body = explain_geometry(g, padding, at=at, inputs=inputs, title=title or "convolution geometry")
    if note:
        text.append(f"  ({note})")
    legend = []
    if at is not None:
        legend.append("> marks output positions with failing elements of " +
                      ", ".join(n for n in (failing or {}) if n in ("y", "ty")))
    if inputs is not None:
        legend.append("^ marks input positions with failing elements of dx")
    lines = body.split("\n")
    return "\n".join(lines[:1] + text + lines[1:] + ([""] + ["  " + s for s in legend] if legend else []))
