"""Spec tests for ``refws explain`` (issue 14): the printed geometry against ``conv_geometry`` and
against the definition of the convolution.

The CLI's text is parsed back into numbers and compared with independent sources:

* the explicit pads and output size with ``refws.conv_geometry`` (the printer must agree with it)
  and with the test-side rules of ``spec_tests/naive.py`` (lax's SAME rule, the size formula);
* the formula line ``out = floor((...) / s) + 1 = K``, evaluated as arithmetic;
* which input each tap of each output position reads, with a definition loop: ``naive_conv`` of
  the input ``x = [1, 2, ..., n]`` with the one-hot kernel ``e_t`` returns ``x[i] = i + 1`` at
  output ``o`` when tap ``t`` of ``o`` reads input ``i``, and 0 when it reads a zero; whether that
  zero is padding or an lhs-dilation hole is read off ``naive_dilate_pad``;
* the diagram: the column under which tap ``t`` is drawn must carry the label of what it reads;
* ``--at``: the receptive field of one output index in 2-D and 3-D, from an N-d ``naive_conv``
  of one-hot inputs with an all-ones kernel; an index outside the output is refused;
* the SAME line's words on the split (even, or the odd element at the end / start) from the
  test-side SAME rule;
* ``--groups G --channels CIN,COUT``: the channel section's blocks against a definition loop,
  ``naive_conv`` with ``groups`` of an input that is one-hot in channel ``c`` (all-ones kernel):
  output channel ``co`` reads ``c`` exactly when it is nonzero; the spatial part is unchanged.
"""

from __future__ import annotations

import ast
import itertools
import math
import re

import numpy as np
import pytest

import refws
from refws import cli
from refws.explain import explain, explain_case

from .naive import naive_conv, naive_dilate_pad, naive_dilated_size, naive_explicit_pads, naive_out_size

# (CLI arguments, the same arguments for conv_geometry): 1-D to 3-D, every padding form, strides,
# negative pads, lhs dilation, SAME with rhs dilation, an empty output and an elided long axis.
CASES = [
    (["5", "3", "--stride", "2", "--padding", "1"], dict(in_spatial=(5,), kernel_spatial=(3,), stride=2, padding=1)),
    (["9", "3", "--rhs-dilation", "2"], dict(in_spatial=(9,), kernel_spatial=(3,), rhs_dilation=2)),
    (
        ["9,9", "3,3", "--stride", "2", "--rhs-dilation", "2", "--padding", "SAME"],
        dict(in_spatial=(9, 9), kernel_spatial=(3, 3), stride=2, rhs_dilation=2, padding="SAME"),
    ),
    (["8", "4", "--stride", "3", "--padding", "SAME"], dict(in_spatial=(8,), kernel_spatial=(4,), stride=3)),
    (
        ["8", "4", "--stride", "3", "--padding", "SAME_LOWER"],
        dict(in_spatial=(8,), kernel_spatial=(4,), stride=3, padding="SAME_LOWER"),
    ),
    (
        ["7,6", "3,2", "--padding", "VALID", "--stride", "2,1"],
        dict(in_spatial=(7, 6), kernel_spatial=(3, 2), padding="VALID", stride=(2, 1)),
    ),
    (
        ["6", "3", "--padding=-1:2", "--lhs-dilation", "2"],
        dict(in_spatial=(6,), kernel_spatial=(3,), padding=((-1, 2),), lhs_dilation=2),
    ),
    (
        ["7,5", "2,3", "--padding=2:-1,-2:0", "--stride", "2"],
        dict(in_spatial=(7, 5), kernel_spatial=(2, 3), padding=((2, -1), (-2, 0)), stride=2),
    ),
    (
        ["4,3", "3,2", "--lhs-dilation", "3,2", "--padding", "2:2,1:0", "--rhs-dilation", "1,2"],
        dict(
            in_spatial=(4, 3), kernel_spatial=(3, 2), lhs_dilation=(3, 2), padding=((2, 2), (1, 0)), rhs_dilation=(1, 2)
        ),
    ),
    (
        ["5,4,3", "3,2,2", "--stride", "2,1,2", "--padding", "SAME", "--rhs-dilation", "1,2,1"],
        dict(in_spatial=(5, 4, 3), kernel_spatial=(3, 2, 2), stride=(2, 1, 2), rhs_dilation=(1, 2, 1)),
    ),
    (["3", "5", "--padding", "VALID"], dict(in_spatial=(3,), kernel_spatial=(5,), padding="VALID")),
    (["4", "2", "--padding=-3:0"], dict(in_spatial=(4,), kernel_spatial=(2,), padding=((-3, 0),))),
    (["40", "3", "--padding", "1", "--at", "20"], dict(in_spatial=(40,), kernel_spatial=(3,), padding=1)),
]
IDS = [" ".join(a) for a, _ in CASES]


def run_cli(argv, capsys) -> str:
    assert cli.main(["explain", *argv]) == 0
    return capsys.readouterr().out


def _kw(kwargs):
    args = dict(stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1)
    args.update(kwargs)
    return args


def _naive_pads(kw):
    return naive_explicit_pads(
        kw["padding"], kw["in_spatial"], kw["kernel_spatial"], kw["stride"], kw["lhs_dilation"], kw["rhs_dilation"]
    )


def _per_axis(value, nd):
    return (value,) * nd if isinstance(value, int) else tuple(value)


# --- parsing the printed text ------------------------------------------------------------------


def parse(text: str) -> dict:
    """The numbers of an ``explain`` text: pads, output, and per axis its formula and rows."""
    head = re.search(r"explicit pads (.*); output (.*)$", text, re.M)
    out = {"pads": ast.literal_eval(head.group(1)), "out": ast.literal_eval(head.group(2)), "axes": []}
    for block in re.split(r"\n(?=axis \d+:)", text)[1:]:
        lines = block.split("\n")
        m = re.match(
            r"axis (\d+): n=(\d+), k=(\d+), s=(\d+), lhs_dilation=(\d+), rhs_dilation=(\d+), "
            r"pads \(lo, hi\) = \((-?\d+), (-?\d+)\) -> out (\d+)",
            lines[0],
        )
        assert m, lines[0]
        ax = dict(zip(("axis", "n", "k", "s", "L", "d", "lo", "hi", "out"), map(int, m.groups())))
        ax["formula"] = next(ln for ln in lines if ln.strip().startswith("output"))
        header = next((ln for ln in lines if ln.startswith("  input ")), None)
        ax["header"] = header
        ax["rows"] = {}
        for ln in lines:
            r = re.match(r"^(>| ) o=(\d+)", ln)
            if r:
                ax["rows"][int(r.group(2))] = (ln, r.group(1) == ">")
        ax["elided"] = any(ln.strip() == "..." for ln in lines)
        out["axes"].append(ax)
    return out


def _reads(line: str) -> list:
    m = re.search(r"reads (?:x\[([\d, ]*)\]|no input)", line)
    return [int(v) for v in m.group(1).split(", ")] if m.group(1) else []


def _taps_on(line: str, what: str) -> list:
    m = re.search(r"taps? ([\d, ]+) on " + what, line)
    return [int(v) for v in m.group(1).split(", ")] if m else []


def _diagram_cells(header: str, row: str):
    """``{column end: label}`` of the header and ``{column end: tap}`` of a row (right-aligned)."""
    cells = {m.end(): m.group() for m in re.finditer(r"\S+", header[8:])}
    body = row.split("   reads")[0]
    taps = {m.end(): int(m.group()) for m in re.finditer(r"\d+", body[8:]) if m.start() >= 0}
    return cells, taps


# --- the definition ----------------------------------------------------------------------------


def definition_axis(n, k, s, pads, L, d):
    """Per output position, per tap: ``("input", i)``, ``("pad", None)`` or ``("hole", None)``,
    from naive_conv of ``x = [1..n]`` with one-hot kernels (no refws code)."""
    x = np.arange(1.0, n + 1).reshape(1, n, 1)
    xpad = naive_dilate_pad(x, (pads,), L)[0, :, 0]
    lo = pads[0]
    out = naive_out_size(n, k, s, pads, L, d)
    table = [[None] * k for _ in range(out)]
    for t in range(k):
        w = np.zeros((k, 1, 1))
        w[t] = 1.0
        y = naive_conv(x, w, s, (pads,), L, d)[0, :, 0]
        for o in range(out):
            p = o * s + t * d
            if y[o]:
                assert xpad[p] == y[o]
                table[o][t] = ("input", int(y[o]) - 1)
            else:
                inside = lo <= p < lo + naive_dilated_size(n, L)
                table[o][t] = ("hole", None) if inside else ("pad", None)
    return table


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, kwargs", CASES, ids=IDS)
def test_explain_agrees_with_conv_geometry_and_naive_rules(argv, kwargs, capsys):
    kw = _kw(kwargs)
    parsed = parse(run_cli(argv, capsys))
    g = refws.conv_geometry(**kw)
    assert parsed["pads"] == g.padding == _naive_pads(kw)
    nd = len(kw["in_spatial"])
    expected_out = tuple(
        naive_out_size(n, k, s, p, L, d)
        for n, k, s, p, L, d in zip(
            kw["in_spatial"],
            kw["kernel_spatial"],
            _per_axis(kw["stride"], nd),
            _naive_pads(kw),
            _per_axis(kw["lhs_dilation"], nd),
            _per_axis(kw["rhs_dilation"], nd),
        )
    )
    assert parsed["out"] == g.out_spatial == expected_out
    assert [a["out"] for a in parsed["axes"]] == list(expected_out)
    assert [(a["lo"], a["hi"]) for a in parsed["axes"]] == list(g.padding)


@pytest.mark.parametrize("argv, kwargs", CASES, ids=IDS)
def test_formula_line_evaluates_to_the_output_size(argv, kwargs, capsys):
    for ax in parse(run_cli(argv, capsys))["axes"]:
        m = re.search(r"= floor\(\(([-+ \d]+)\) / (\d+)\) \+ 1 = (\d+)$", ax["formula"])
        if ax["out"] == 0:
            assert m is None and ax["formula"].rstrip().endswith(")") and "= 0 (" in ax["formula"]
            continue
        expr, s, result = m.groups()
        n_l = naive_dilated_size(ax["n"], ax["L"])
        k_d = (ax["k"] - 1) * ax["d"] + 1
        assert eval(expr, {"__builtins__": {}}) == n_l + ax["lo"] + ax["hi"] - k_d  # only ints, + and -
        assert math.floor(eval(expr, {"__builtins__": {}}) / int(s)) + 1 == int(result) == ax["out"]


@pytest.mark.parametrize("argv, kwargs", CASES, ids=IDS)
def test_rows_read_what_the_definition_reads(argv, kwargs, capsys):
    kw = _kw(kwargs)
    nd = len(kw["in_spatial"])
    pads = _naive_pads(kw)
    parsed = parse(run_cli(argv, capsys))
    for a, ax in enumerate(parsed["axes"]):
        table = definition_axis(
            kw["in_spatial"][a],
            kw["kernel_spatial"][a],
            _per_axis(kw["stride"], nd)[a],
            pads[a],
            _per_axis(kw["lhs_dilation"], nd)[a],
            _per_axis(kw["rhs_dilation"], nd)[a],
        )
        assert len(table) == ax["out"]
        shown = sorted(ax["rows"])
        if ax["out"] > 24:  # long axes: first four, last four, --at
            assert ax["elided"] and {0, 1, 2, 3, ax["out"] - 1}.issubset(shown)
        else:
            assert shown == list(range(ax["out"]))
        for o in shown:
            line = ax["rows"][o][0]
            taps = table[o]
            assert _reads(line) == [i for kind, i in taps if kind == "input"], line
            assert _taps_on(line, "padding") == [t for t, (kind, _) in enumerate(taps) if kind == "pad"], line
            assert _taps_on(line, "(?:a hole|holes)") == [t for t, (kind, _) in enumerate(taps) if kind == "hole"]
            if ax["header"] is None:
                continue
            cells, drawn = _diagram_cells(ax["header"], line)
            assert sorted(drawn.values()) == list(range(len(taps)))
            for col, t in drawn.items():
                kind, i = taps[t]
                assert cells[col] == {"input": str(i), "pad": "p", "hole": "."}[kind], (line, t)


@pytest.mark.parametrize(
    "argv, kwargs",
    [c for c in CASES if len(c[1]["in_spatial"]) > 1]
    + [
        (
            ["5,4,3", "3,2,2", "--stride", "2,1,2", "--rhs-dilation", "1,2,1", "--at", "1,3,0"],
            dict(in_spatial=(5, 4, 3), kernel_spatial=(3, 2, 2), stride=(2, 1, 2), rhs_dilation=(1, 2, 1)),
        ),
        (
            ["4,3", "3,2", "--lhs-dilation", "3,2", "--padding", "2:2,1:0", "--rhs-dilation", "1,2", "--at", "4,1"],
            dict(
                in_spatial=(4, 3),
                kernel_spatial=(3, 2),
                lhs_dilation=(3, 2),
                padding=((2, 2), (1, 0)),
                rhs_dilation=(1, 2),
            ),
        ),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_at_marks_the_receptive_field_of_an_nd_output(argv, kwargs, capsys):
    """The rows marked ``>`` by ``--at O`` read, together, exactly the inputs the N-d definition
    combines into output ``O``."""
    kw = _kw(kwargs)
    nd = len(kw["in_spatial"])
    out = refws.conv_geometry(**kw).out_spatial
    if 0 in out:
        return
    if "--at" in argv:
        at = tuple(int(v) for v in argv[argv.index("--at") + 1].split(","))
    else:
        at = tuple(o // 2 for o in out)
    if "--at" not in argv:
        argv = [*argv, "--at", ",".join(map(str, at))]
    parsed = parse(run_cli(argv, capsys))
    marked = []
    for ax, o in zip(parsed["axes"], at):
        assert [p for p, (_, m) in ax["rows"].items() if m] == [o]
        marked.append(set(_reads(ax["rows"][o][0])))
    w = np.ones((*kw["kernel_spatial"], 1, 1))
    field = set()
    for i in np.ndindex(*kw["in_spatial"]):
        x = np.zeros((1, *kw["in_spatial"], 1))
        x[(0, *i, 0)] = 1.0
        y = naive_conv(x, w, _per_axis(kw["stride"], nd), _naive_pads(kw), kw["lhs_dilation"], kw["rhs_dilation"])
        if y[(0, *at, 0)]:
            field.add(i)
    assert field == set(itertools.product(*marked))


@pytest.mark.parametrize("argv, kwargs", CASES, ids=IDS)
def test_cli_prints_the_function_text(argv, kwargs, capsys):
    """The subcommand is argument parsing only: its text is ``refws.explain.explain``'s."""
    kw = _kw(kwargs)
    at = None
    if "--at" in argv:
        at = tuple(int(v) for v in argv[argv.index("--at") + 1].split(","))
    assert run_cli(argv, capsys) == explain(**kw, at=at) + "\n"


def test_same_printer_as_the_conformance_diagnosis(capsys):
    """``refws check --explain`` prints a case with ``explain_case``; its axis blocks are the CLI's."""
    params = dict(
        x_shape=(1, 9, 9, 2),
        w_shape=(3, 3, 2, 4),
        channel_first=False,
        stride=(2, 1),
        padding="SAME",
        lhs_dilation=1,
        rhs_dilation=(2, 1),
        groups=1,
    )
    case_text = explain_case("conv", params)
    cli_text = run_cli(["9,9", "3,3", "--stride", "2,1", "--rhs-dilation", "2,1"], capsys)
    assert case_text.split("\naxis 0:")[1] == cli_text.rstrip("\n").split("\naxis 0:")[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["5", "3", "--padding", "SAMEISH"], "--padding"),
        (["5", "3", "--stride", "two"], "--stride"),
        (["5,5", "3"], "kernel_spatial"),
        (["5", "3", "--stride", "0"], "stride"),
        (["5", "3", "--padding", "SAME", "--lhs-dilation", "2"], "lhs_dilation"),
        (["5", "5", "--at", "1,1"], "at="),
        (
            ["5", "3", "--at", "7"],
            "at=(7,): position 7 along axis 0 is outside the output (5,); expected 0 <= at[0] <= 4",
        ),
        (["5", "3", "--at=-1"], "at=(-1,)"),
        (["6,6", "3,3", "--stride", "2", "--at", "1,3"], "at=(1, 3): position 3 along axis 1"),
        (["3", "5", "--padding", "VALID", "--at", "0"], "none (the output is empty along axis 0)"),
        (["5", "3", "--groups", "4", "--channels", "6,4"], "channels=(6, 4): C_in=6 is not divisible by groups=4"),
        (["5", "3", "--groups", "2", "--channels", "6,3"], "C_out=3 is not divisible by groups=2"),
        (["5", "3", "--channels", "6"], "channels=(6,)"),
        (["5", "3", "--channels", "0,4"], "channels=(0, 4)"),
        (["5", "3", "--groups", "0"], "groups=0"),
        (["5", "3", "--groups", "two"], "--groups"),
    ],
)
def test_bad_arguments_exit_2_and_name_the_argument(argv, message, capsys):
    assert cli.main(["explain", *argv]) == 2
    assert message in capsys.readouterr().err


SAME_CASES = [c for c in CASES if isinstance(_kw(c[1])["padding"], str) and _kw(c[1])["padding"] != "VALID"]


@pytest.mark.parametrize("argv, kwargs", SAME_CASES, ids=[" ".join(a) for a, _ in SAME_CASES])
def test_same_line_spells_out_lax_rule(argv, kwargs, capsys):
    """``SAME: out = ceil(n / s) = .., total = .. = T, split (lo, hi)``: T and the split from the
    test-side transcription of lax's rule (naive_same_pads), with rhs dilation."""
    kw = _kw(kwargs)
    text = run_cli(argv, capsys)
    lines = [ln for ln in text.split("\n") if ln.strip().startswith("SAME")]
    pads = _naive_pads(kw)
    assert len(lines) == len(kw["in_spatial"])
    for a, line in enumerate(lines):
        m = re.search(r"out = ceil\(n / s\) = (\d+), total = .* = (\d+), split \((\d+), (\d+)\)", line)
        n, s = kw["in_spatial"][a], _per_axis(kw["stride"], len(pads))[a]
        assert int(m.group(1)) == -(-n // s)
        assert int(m.group(2)) == sum(pads[a]) and (int(m.group(3)), int(m.group(4))) == pads[a]


def test_same_line_mentions_the_odd_element_only_when_there_is_one(capsys):
    text = run_cli(["9", "3", "--rhs-dilation", "2"], capsys)  # total 4: split (2, 2)
    assert "odd" not in text


@pytest.mark.parametrize(
    "argv, kwargs",
    SAME_CASES
    + [
        (["7", "4"], dict(in_spatial=(7,), kernel_spatial=(4,))),
        (["7", "4", "--padding", "SAME_LOWER"], dict(in_spatial=(7,), kernel_spatial=(4,), padding="SAME_LOWER")),
        (["6", "2", "--stride", "2"], dict(in_spatial=(6,), kernel_spatial=(2,), stride=2)),
        (
            ["6,7", "3,2", "--padding", "SAME_LOWER", "--rhs-dilation", "2,1"],
            dict(in_spatial=(6, 7), kernel_spatial=(3, 2), padding="SAME_LOWER", rhs_dilation=(2, 1)),
        ),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_same_line_words_the_split(argv, kwargs, capsys):
    """The words after the split follow the test-side SAME pads: no padding, an even split, or the
    odd element on the side that got the larger half (the end for SAME, the start for SAME_LOWER)."""
    kw = _kw(kwargs)
    lines = [ln for ln in run_cli(argv, capsys).split("\n") if ln.strip().startswith("SAME")]
    for line, (lo, hi) in zip(lines, _naive_pads(kw), strict=True):
        words = re.search(r"split \(\d+, \d+\) \((.*)\)$", line).group(1)
        if lo + hi == 0:
            assert words == "no padding needed"
        elif lo == hi:
            assert words == "even: half on each side"
        else:
            assert words == f"an odd element at the {'end' if hi > lo else 'start'}"


# --- groups: the channel section -----------------------------------------------------------------

GROUP_CASES = [
    ["5", "3", "--groups", "2", "--channels", "6,4"],
    ["3", "1", "--channels", "3,5"],  # groups=1 with channels
    ["4,4", "3,3", "--stride", "2", "--groups", "3", "--channels", "3,6"],  # depthwise, multiplier 2
    ["4", "2", "--padding", "VALID", "--groups", "4", "--channels", "8,12"],
    ["3,2,2", "2,1,2", "--groups", "2", "--channels", "4,2", "--at", "1,0,1"],
    ["2", "1", "--groups", "32", "--channels", "32,64"],  # depthwise, groups elided
    ["5", "3", "--groups", "5", "--channels", "5,5"],  # depthwise, multiplier 1
]


def _option(argv, name, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def _without_channel_options(argv):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--groups", "--channels"):
            skip = True
        else:
            out.append(a)
    return out


def parse_channels(text: str) -> dict:
    """The channel section: its counts, the printed weight shape, the depthwise multiplier and
    ``{group: (out range, in range, weight column range)}``."""
    section = text.split("\nchannels: ")[1]
    m = re.match(r"C_in=(\d+), C_out=(\d+), groups=(\d+)", section)
    parsed = dict(zip(("c_in", "c_out", "groups"), map(int, m.groups())))
    weight = re.search(r"; weight \(\*kernel, Cg, C_out\) = (\(.*\))$", section, re.M)
    parsed["weight"] = ast.literal_eval(weight.group(1))
    dw = re.search(
        r"channel multiplier C_out / C_in = (\d+): output channel co reads input channel co // (\d+)", section
    )
    parsed["multiplier"] = int(dw.group(1)) if dw else None
    parsed["blocks"] = {}
    for g, a, b, c, d, e, f in re.findall(
        r"^  group (\d+): y\[\.\.\., (\d+):(\d+)\] reads x\[\.\.\., "
        r"(\d+):(\d+)\] through w\[\.\.\., :, (\d+):(\d+)\]$",
        section,
        re.M,
    ):
        parsed["blocks"][int(g)] = (range(int(a), int(b)), range(int(c), int(d)), range(int(e), int(f)))
    parsed["elided"] = "\n  ...\n" in section
    return parsed


def definition_channels(c_in, c_out, groups):
    """``(reads, columns)``: ``reads[co]`` the input channels output channel ``co`` reads, from
    naive_conv of inputs one-hot in one channel with an all-ones kernel; ``columns[j]`` the output
    channels that weight column ``j`` alone (all-ones input) makes nonzero. One position, k = 1:
    which channels meet does not depend on the spatial geometry (no refws code)."""
    cg = c_in // groups
    reads = {co: set() for co in range(c_out)}
    for c in range(c_in):
        x = np.zeros((1, 1, c_in))
        x[..., c] = 1.0
        y = naive_conv(x, np.ones((1, cg, c_out)), groups=groups)[0, 0]
        for co in np.flatnonzero(y):
            reads[int(co)].add(c)
    columns = {}
    for j in range(c_out):
        w = np.zeros((1, cg, c_out))
        w[..., j] = 1.0
        columns[j] = {int(co) for co in np.flatnonzero(naive_conv(np.ones((1, 1, c_in)), w, groups=groups)[0, 0])}
    return reads, columns


@pytest.mark.parametrize("argv", GROUP_CASES, ids=" ".join)
def test_channel_section_reads_what_the_definition_reads(argv, capsys):
    c_in, c_out = (int(v) for v in _option(argv, "--channels").split(","))
    groups = int(_option(argv, "--groups", "1"))
    kernel = tuple(int(v) for v in argv[1].split(","))
    parsed = parse_channels(run_cli(argv, capsys))
    assert (parsed["c_in"], parsed["c_out"], parsed["groups"]) == (c_in, c_out, groups)
    # the printed weight shape is the kernel layout (*kernel, C_in // G, C_out) the definition takes
    assert parsed["weight"] == (*kernel, c_in // groups, c_out)
    naive_conv(np.ones((1, *kernel, c_in)), np.ones(parsed["weight"]), pads=[(0, k) for k in kernel], groups=groups)
    reads, columns = definition_channels(c_in, c_out, groups)
    shown = sorted(parsed["blocks"])
    if groups > 24:
        assert parsed["elided"] and shown == [0, 1, 2, 3, *range(groups - 4, groups)]
    else:
        assert not parsed["elided"] and shown == list(range(groups))
    for outs, ins, cols in parsed["blocks"].values():
        assert list(cols) == list(outs) and len(outs) > 0
        for co in outs:
            assert reads[co] == set(ins), (co, reads[co], ins)
            assert columns[co] == {co}
    # the shown blocks are disjoint and, unelided, cover every output channel
    covered = [co for outs, _, _ in parsed["blocks"].values() for co in outs]
    assert len(covered) == len(set(covered))
    if not parsed["elided"]:
        assert sorted(covered) == list(range(c_out))
    if groups == c_in and groups > 1:
        m = c_out // c_in
        assert parsed["multiplier"] == m
        assert all(reads[co] == {co // m} for co in range(c_out))
    else:
        assert parsed["multiplier"] is None


@pytest.mark.parametrize("argv", GROUP_CASES + [["5", "3", "--groups", "2"]], ids=" ".join)
def test_groups_leave_the_spatial_part_unchanged(argv, capsys):
    """The channel section comes after the axes; everything before it is the text without groups."""
    spatial = run_cli(_without_channel_options(argv), capsys)
    text = run_cli(argv, capsys)
    assert text.startswith(spatial.rstrip("\n") + "\n\nchannels: ")
    assert text.count("\nchannels: ") == 1 and "\naxis " not in text.split("\nchannels: ")[1]


def test_groups_without_channels_spell_out_the_rule(capsys):
    text = run_cli(["5", "3", "--groups", "2"], capsys)
    section = text.split("\nchannels: ")[1]
    assert section.startswith("groups=2 (give channels=(C_in, C_out), --channels CIN,COUT, for the indices)")
    assert "y[..., g*Cog:(g+1)*Cog] reads x[..., g*Cg:(g+1)*Cg]" in section
    assert "channels:" not in run_cli(["5", "3", "--groups", "1"], capsys)


@pytest.mark.parametrize("argv", GROUP_CASES, ids=" ".join)
def test_cli_groups_print_the_function_text(argv, capsys):
    kw = dict(
        in_spatial=tuple(int(v) for v in argv[0].split(",")),
        kernel_spatial=tuple(int(v) for v in argv[1].split(",")),
        stride=tuple(int(v) for v in _option(argv, "--stride", "1").split(",")),
        padding=_option(argv, "--padding", "SAME"),
    )
    at = _option(argv, "--at")
    at = tuple(int(v) for v in at.split(",")) if at else None
    c_in, c_out = (int(v) for v in _option(argv, "--channels").split(","))
    assert (
        run_cli(argv, capsys)
        == explain(**kw, at=at, groups=int(_option(argv, "--groups", "1")), channels=(c_in, c_out)) + "\n"
    )
