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

With ``groups`` (and ``channels=(C_in, C_out)``) a channel section follows the axes: which input
channels each block of output channels reads, group by group (:func:`channel_blocks` as data)::

    channels: C_in=6, C_out=4, groups=2
      Cg = C_in / groups = 6 / 2 = 3, Cog = C_out / groups = 4 / 2 = 2; weight (*kernel, Cg, C_out) = (3, 3, 3, 4)
      group 0: y[..., 0:2] reads x[..., 0:3] through w[..., :, 0:2]
      group 1: y[..., 2:4] reads x[..., 3:6] through w[..., :, 2:4]

Only :mod:`refws.geometry` (and the transposed convolution's geometry from :mod:`refws.grads`)
is used, so what is printed is what refws computes.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .conv import check_groups
from .geometry import ConvGeometry, as_int_tuple, conv_geometry
from .grads import input_grad_pads, transpose_geometry

if TYPE_CHECKING:
    from .conformance.protocol import IntOrInts, Padding

    # Marked positions: one index per spatial axis, or per axis a sequence of positions (or None).
    Positions = Sequence[int | Sequence[int] | None]

__all__ = [
    "Tap",
    "axis_taps",
    "ChannelBlock",
    "channel_blocks",
    "explain",
    "explain_geometry",
    "case_geometry",
    "explain_case",
]

MAX_ROWS = 24  # output positions drawn per axis before the middle is elided
MAX_WIDTH = 110  # characters of a drawn row; wider axes get the text summary only


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
    parts += [
        w for w in (_tap_words(taps, "pad", "padding", "padding"), _tap_words(taps, "hole", "a hole", "holes")) if w
    ]
    return "; ".join(parts)


def _sum(*terms) -> str:
    """``a + b - c`` for integers (a negative term is written as a subtraction)."""
    out = str(terms[0])
    for t in terms[1:]:
        out += f" - {-t}" if t < 0 else f" + {t}"
    return out


def _split_words(rule: str, total: int) -> str:
    """How a SAME total is split: evenly, or the odd element at the end (at the start for SAME_LOWER)."""
    if total == 0:
        return "no padding needed"
    if total % 2 == 0:
        return "even: half on each side"
    return f"an odd element at the {'start' if rule == 'SAME_LOWER' else 'end'}"


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
    lines = [
        f"axis {axis}: n={n}, k={k}, s={s}, lhs_dilation={L}, rhs_dilation={d}, "
        f"pads (lo, hi) = ({lo}, {hi}) -> out {out}",
        f"  dilated input   n_L = (n - 1)*L + 1 = ({n} - 1)*{L} + 1 = {n_l}",
        f"  dilated kernel  k_d = (k - 1)*d + 1 = ({k} - 1)*{d} + 1 = {k_d}",
    ]
    if isinstance(padding, str) and padding.upper() != "VALID":
        o_same = -(-n // s)
        total = max((o_same - 1) * s + k_d - n, 0)
        lines.append(
            f"  {padding.upper()}: out = ceil(n / s) = {o_same}, total = max((out - 1)*s + k_d - n, 0) "
            f"= {total}, split ({lo}, {hi}) ({_split_words(padding.upper(), total)})"
        )
    span = n_l + lo + hi - k_d
    formula = (
        f"floor(({_sum(n_l, lo, hi, -k_d)}) / {s}) + 1 = {out}"
        if span >= 0
        else f"0 (the padded input, {n_l + lo + hi}, is shorter than the dilated kernel, {k_d})"
    )
    lines.append(f"  output          out = floor((n_L + lo + hi - k_d) / s) + 1 = {formula}")
    for side, pad, first in (("lo", lo, True), ("hi", hi, False)):
        if pad < 0:
            idx = [q // L for q in (range(-pad) if first else range(n_l + pad, n_l)) if q % L == 0]
            lines.append(
                f"  {side} = {pad} crops {-pad} dilated {_plural(-pad, 'position')}"
                + (f" (x[{', '.join(map(str, idx))}])" if idx else "")
            )
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


def explain_geometry(
    g: ConvGeometry,
    padding: Padding | None = None,
    *,
    at: Positions | None = None,
    inputs: Positions | None = None,
    title: str = "",
) -> str:
    """The text of :func:`explain` for an already normalised geometry.

    ``padding`` is the original padding argument (a SAME rule is spelled out when it is a
    string); ``inputs`` marks input positions per axis (``^`` under the header).
    """
    marks, in_marks = _positions(at, g.ndim), _positions(inputs, g.ndim)
    lines = [
        title or "convolution geometry",
        f"  input {g.in_spatial}, kernel {g.kernel_spatial}, stride {g.stride}, "
        f"lhs_dilation {g.lhs_dilation}, rhs_dilation {g.rhs_dilation}",
        f"  padding {padding!r} -> explicit pads {g.padding}; output {g.out_spatial}"
        if padding is not None
        else f"  explicit pads {g.padding}; output {g.out_spatial}",
    ]
    for axis in range(g.ndim):
        lines.append("")
        lines += _axis_text(g, axis, padding, marks[axis], in_marks[axis])
    return "\n".join(lines)


def _check_positions(name: str, value, marks: list, sizes: tuple, what: str) -> None:
    """Every marked position must lie in ``[0, size)`` on its axis (ValueError naming ``name``)."""
    for axis, (positions, size) in enumerate(zip(marks, sizes)):
        for p in positions or ():
            if not 0 <= p < size:
                valid = (
                    f"0 <= {name}[{axis}] <= {size - 1}" if size else f"none (the {what} is empty along axis {axis})"
                )
                raise ValueError(
                    f"{name}={value!r}: position {p} along axis {axis} is outside the {what} {sizes}; expected {valid}"
                )


@dataclass(frozen=True)
class ChannelBlock:
    """One group's channels: output channels ``out_channels`` (a ``range``) read input channels
    ``in_channels`` through the weight columns ``w[..., :, out_channels]``."""

    group: int
    in_channels: range
    out_channels: range


def _check_channels(channels, groups: int) -> tuple[int, int] | None:
    """``channels`` as ``(C_in, C_out)``, both positive and divisible by ``groups``."""
    if channels is None:
        return None
    try:
        items = tuple(channels)
    except TypeError:
        items = None
    if (
        items is None
        or len(items) != 2
        or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in items)
    ):
        raise ValueError(f"channels={channels!r}: expected (C_in, C_out), two positive ints")
    c_in, c_out = (int(c) for c in items)
    if c_in < 1 or c_out < 1:
        raise ValueError(f"channels={channels!r}: expected (C_in, C_out), two positive ints")
    for name, c in (("C_in", c_in), ("C_out", c_out)):
        if c % groups:
            raise ValueError(f"channels={channels!r}: {name}={c} is not divisible by groups={groups}")
    return c_in, c_out


def channel_blocks(groups: int, c_in: int, c_out: int) -> tuple:
    """The :class:`ChannelBlock` of each group: group ``g`` maps input channels
    ``[g*Cg, (g+1)*Cg)`` to output channels ``[g*Cog, (g+1)*Cog)``, ``Cg = C_in / G``,
    ``Cog = C_out / G`` (ValueError unless both divide)."""
    groups = check_groups(groups)
    counts = _check_channels((c_in, c_out), groups)
    assert counts is not None  # None only for channels=None
    c_in, c_out = counts
    cg, cog = c_in // groups, c_out // groups
    return tuple(ChannelBlock(g, range(g * cg, (g + 1) * cg), range(g * cog, (g + 1) * cog)) for g in range(groups))


def _channel_text(groups: int, channels, kernel_spatial: tuple) -> list:
    """The channel section: per group, which input channels its output channels read."""
    if channels is None:
        return [
            f"channels: groups={groups} (give channels=(C_in, C_out), --channels CIN,COUT, for the indices)",
            f"  group g: y[..., g*Cog:(g+1)*Cog] reads x[..., g*Cg:(g+1)*Cg] through w[..., :, g*Cog:(g+1)*Cog], "
            f"Cg = C_in / {groups}, Cog = C_out / {groups}",
        ]
    c_in, c_out = channels
    cg, cog = c_in // groups, c_out // groups
    lines = [
        f"channels: C_in={c_in}, C_out={c_out}, groups={groups}",
        f"  Cg = C_in / groups = {c_in} / {groups} = {cg}, Cog = C_out / groups = {c_out} / {groups} = {cog}; "
        f"weight (*kernel, Cg, C_out) = {(*kernel_spatial, cg, c_out)}",
    ]
    if groups == 1:
        lines.append("  groups=1: every output channel reads every input channel")
    elif groups == c_in:
        lines.append(
            f"  depthwise (groups = C_in = {c_in}), channel multiplier C_out / C_in = {cog}: "
            f"output channel co reads input channel co // {cog}"
        )
    blocks = channel_blocks(groups, c_in, c_out)
    for g in _rows(groups, None):
        if g is None:
            lines.append("  ...")
            continue
        b = blocks[g]
        lines.append(
            f"  group {g}: y[..., {b.out_channels.start}:{b.out_channels.stop}] reads "
            f"x[..., {b.in_channels.start}:{b.in_channels.stop}] through "
            f"w[..., :, {b.out_channels.start}:{b.out_channels.stop}]"
        )
    return lines


def explain(
    in_spatial: Sequence[int],
    kernel_spatial: Sequence[int],
    stride: IntOrInts = 1,
    padding: Padding = "SAME",
    lhs_dilation: IntOrInts = 1,
    rhs_dilation: IntOrInts = 1,
    *,
    at: Positions | None = None,
    inputs: Positions | None = None,
    groups: int = 1,
    channels: Sequence[int] | None = None,
) -> str:
    """Explain the geometry of a convolution (arguments as :func:`refws.conv_geometry`, 1-D to N-D).

    Parameters
    ----------
    at : optional output positions to mark with ``>``: one output index (``N`` ints) or, per
        axis, a sequence of positions (or None); each must lie inside the output.
    inputs : optional input positions to mark with ``^``, in the same form, inside the input.
    groups : int, the convolution's ``groups`` (as :func:`refws.conv`).
    channels : optional ``(C_in, C_out)``, both divisible by ``groups``: the channel counts whose
        blocks the channel section lists.

    Returns
    -------
    str
        The normalised arguments, then per axis the size formulas with the numbers filled in
        (and the SAME split for string padding), negative pads as crops, and one row per output
        position (up to :data:`MAX_ROWS`, else the first and last four and the marked ones) with
        the taps it reads and a summary ``reads x[...]; taps ... on padding``. With ``groups > 1``
        or ``channels``, a channel section follows: per group (up to :data:`MAX_ROWS`, else the
        first and last four) ``group g: y[..., a:b] reads x[..., c:d] through w[..., :, a:b]``,
        and for ``groups = C_in`` the depthwise channel multiplier.

    Raises
    ------
    ValueError
        for arguments :func:`refws.conv_geometry` refuses, ``at`` or ``inputs`` outside the
        output or input, or ``channels`` not divisible by ``groups``.
    """
    groups = check_groups(groups)
    counts = _check_channels(channels, groups)
    g = conv_geometry(in_spatial, kernel_spatial, stride, padding, lhs_dilation, rhs_dilation)
    _check_positions("at", at, _positions(at, g.ndim), g.out_spatial, "output")
    _check_positions("inputs", inputs, _positions(inputs, g.ndim), g.in_spatial, "input")
    text = explain_geometry(g, padding, at=at, inputs=inputs)
    if groups == 1 and counts is None:
        return text
    return text + "\n\n" + "\n".join(_channel_text(groups, counts, g.kernel_spatial))


# --- golden cases -------------------------------------------------------------------------------


def _spatial_of(shape, channel_first: bool, batched: bool) -> tuple:
    inner = tuple(shape[1:] if batched else shape)
    return inner[1:] if channel_first else inner[:-1]


def case_geometry(suite: str, params: dict) -> tuple[ConvGeometry, Padding | None, str] | None:
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
        g = conv_geometry(
            spatial, kernel, params["stride"], params["padding"], params["lhs_dilation"], params["rhs_dilation"]
        )
        return g, params["padding"], ""
    fwd = transpose_geometry(
        spatial,
        kernel,
        params["stride"],
        params["padding"],
        params["output_padding"],
        params["dilation"],
        params["output_size"],
        2 if batched else 1,
    )
    stride = as_int_tuple(params["stride"], len(spatial), "stride")
    pads = input_grad_pads(fwd)
    g = conv_geometry(spatial, kernel, 1, pads, stride, fwd.rhs_dilation)
    note = (
        f"transposed convolution (stride {stride}, padding {params['padding']}, output_padding "
        f"{params['output_padding']}, dilation {params['dilation']}) computed as the forward "
        "convolution of the stride-dilated input with the flipped kernel"
    )
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
        legend.append(
            "> marks output positions with failing elements of "
            + ", ".join(n for n in (failing or {}) if n in ("y", "ty"))
        )
    if inputs is not None:
        legend.append("^ marks input positions with failing elements of dx")
    lines = body.split("\n")
    return "\n".join(lines[:1] + text + lines[1:] + ([""] + ["  " + s for s in legend] if legend else []))
