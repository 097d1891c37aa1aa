"""Every code example of README.md and docs/*.md runs, and every number it shows is checked.

How a page is read (one test per page; its blocks run in order in one namespace, like a notebook):

* a fenced block whose info string is ``python``, ``py`` or ``pycon`` is run; a block starting
  with ``>>>`` is a doctest (its expected output is compared, ``...`` allowed);
* a trailing comment that is a Python literal is an assertion: ``expr  # 5`` checks
  ``expr == 5``; ``name = expr  # (2, 5, 5, 8)`` checks ``name.shape`` when ``name`` is an array
  (its value otherwise). A float written with ``d`` decimals is compared to ``d`` decimals.
  Comments that are not literals (``# forward``, ``# (N, *spatial, C)``) are prose;
* a ``text`` block right after a python block is that block's printed output, compared line by
  line (trailing spaces ignored); a ``bash`` block of ``refws explain ...`` commands followed by a
  ``text`` block is run through ``refws.cli.main`` and compared the same way;
* ``<!-- no-test: reason -->`` on the line before a fence skips the block; the reason is printed
  in the skip list. Use it only for blocks that need something a test cannot have (a GPU, a
  framework outside the test extras).

Some pages name things the reader supplies (``my_conv``, "your backend's weight"); ``STAND_INS``
binds them to refws's own functions or small arrays so that those blocks run as written.

The docstrings of refws's modules are run as doctests too (``test_docstring_examples``).
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import importlib
import io
import math
import pkgutil
import re
import shlex
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import refws

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGS = ("python", "py", "pycon")
SHELL_LANGS = ("bash", "sh", "console", "shell")
CLI_LINE = re.compile(r"^\$?\s*refws explain\b")
NO_TEST = re.compile(r"<!--\s*no-test\b(?::\s*(.*?))?\s*-->")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<info>[^\n`]*)$")

STAND_INS = {
    "README.md": "import refws\nmy_conv = refws.conv\n",
    "docs/golden-format.md": "import refws\nmy_backend_conv = refws.conv\n",
    "docs/conformance.md": (
        "import numpy as np, refws\n"
        "my_conv = refws.conv\n"
        "x = np.random.default_rng(0).normal(size=(2, 7, 7, 3))\n"
        "w = np.random.default_rng(1).normal(size=(3, 3, 3, 4))\n"
        "_case = refws.golden.load('conv/2d_pad_same')\n"
        "my_y = refws.conv(_case['x'], _case['w'], **{k: v for k, v in _case.params.items()\n"
        "                                             if k not in ('x_shape', 'w_shape', 'note')})\n"
    ),
    "docs/layers.md": (
        "import numpy as np\n"
        "_rng = np.random.default_rng(0)\n"
        "w_from_backend = _rng.normal(size=(3, 3, 3, 4))\n"
        "w, g = _rng.normal(size=(3, 3, 3, 4)), np.ones((1, 1, 1, 4))\n"
        "x, dy = _rng.normal(size=(2, 8, 8, 3)), _rng.normal(size=(2, 8, 8, 4))\n"
    ),
}


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the first code line in the page
    lang: str
    code: str
    skip: str | None  # the no-test reason, or None
    output: str | None  # the text block that follows, if any


def blocks(path: Path) -> list:
    """The fenced blocks of a page, with their no-test markers and following output blocks."""
    lines = path.read_text(encoding="utf-8").split("\n")
    found, spans, i = [], [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = len(m["indent"]), m["fence"], m["info"].strip()
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""):
            j += 1
        body = "\n".join(ln[indent:] if ln[:indent].strip() == "" else ln for ln in lines[i + 1 : j])
        k = i - 1
        while k >= 0 and lines[k].strip() == "":
            k -= 1
        marker = NO_TEST.search(lines[k]) if k >= 0 else None
        lang = info.split()[0].lower() if info else ""
        found.append(
            Block(
                str(path.relative_to(ROOT)),
                i + 2,
                lang,
                body,
                (marker.group(1) or "no reason given") if marker else None,
                None,
            )
        )
        spans.append((i, j))
        i = j + 1
    for (prev, (_, end)), (nxt, (start, _)) in zip(zip(found, spans), zip(found[1:], spans[1:])):
        if nxt.lang == "text" and all(ln.strip() == "" for ln in lines[end + 1 : start]):
            prev.output = nxt.code
    return [
        b for b in found if b.lang in RUN_LANGS or (b.lang in SHELL_LANGS and b.output is not None and _cli_lines(b))
    ]


def _cli_lines(block: Block) -> list:
    """The ``refws explain`` command lines of a shell block, or [] if it holds anything else."""
    lines = [ln.strip() for ln in block.code.split("\n") if ln.strip() and not ln.strip().startswith("#")]
    return lines if lines and all(CLI_LINE.match(ln) for ln in lines) else []


# --- literal comments ----------------------------------------------------------------------------


def _comments(code: str) -> dict:
    """``{line: comment text}`` for every comment of ``code`` (1-based lines)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string[1:].strip()
    return out


def _literal(text: str):
    """``(node, value)`` when ``text`` is a Python literal (not a bare word), else None."""
    try:
        node = ast.parse(text, mode="eval").body
        return node, ast.literal_eval(node)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None


def _same(actual, node: ast.AST, expected, source: str) -> bool:
    """``actual`` equals the literal ``expected``; floats to the decimals written in ``source``."""
    if isinstance(actual, np.ndarray) and not isinstance(expected, (int, float)):
        actual = actual.tolist()
    if isinstance(actual, np.generic):
        actual = actual.item()
    if isinstance(node, (ast.Tuple, ast.List)) and isinstance(actual, (tuple, list)):
        return len(actual) == len(node.elts) and all(
            _same(a, n, e, source) for a, n, e in zip(actual, node.elts, expected)
        )
    if isinstance(node, ast.Dict) and isinstance(actual, dict):
        return list(actual) == list(expected) and all(
            _same(actual[k], n, expected[k], source) for k, n in zip(expected, node.values)
        )
    if isinstance(expected, float) and isinstance(actual, (int, float)):
        written = ast.get_source_segment(source, node) or repr(expected)
        decimals = len(written.split("e")[0].split(".")[1]) if "." in written.split("e")[0] else 0
        if "e" in written.lower():
            return math.isclose(actual, expected, rel_tol=0.5 * 10.0**-decimals, abs_tol=0.0)
        return math.isclose(actual, expected, rel_tol=0.0, abs_tol=0.5 * 10.0**-decimals * (1 + 1e-9))
    return type(actual) is not bool and actual == expected if not isinstance(expected, bool) else actual is expected


def _checks(code: str) -> dict:
    """``{statement index: (kind, name, node, value, comment)}`` for statements ending in a literal comment."""
    tree = ast.parse(code)
    comments = _comments(code)
    out = {}
    for idx, stmt in enumerate(tree.body):
        text = comments.get(stmt.end_lineno)
        lit = _literal(text) if text else None
        if lit is None:
            continue
        if isinstance(stmt, ast.Expr):
            out[idx] = ("expr", None, *lit, text)
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            out[idx] = ("assign", stmt.targets[0].id, *lit, text)
        else:
            raise AssertionError(
                f"line {stmt.end_lineno}: the literal comment '# {text}' is on a statement that is "
                "neither an expression nor `name = ...`, so it cannot be checked"
            )
    return out


def run_block(block: Block, ns: dict) -> None:
    """Run one block in ``ns``; raise AssertionError naming the page line on any mismatch."""
    if block.code.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(
            block.code, ns, f"{block.page}:{block.line}", block.page, block.line - 1
        )
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        report = io.StringIO()
        runner.run(test, out=report.write, clear_globs=False)
        assert runner.failures == 0, report.getvalue()
        return
    printed = io.StringIO()
    if block.lang in SHELL_LANGS:
        from refws.cli import main

        with contextlib.redirect_stdout(printed):
            for line in _cli_lines(block):
                argv = shlex.split(line.lstrip("$ "))[1:]
                assert main(argv) == 0, f"{block.page}:{block.line}: `{line}` failed"
        _compare_output(block, printed.getvalue())
        return
    tree = ast.parse(block.code)
    checks = _checks(block.code)
    with contextlib.redirect_stdout(printed):
        for idx, stmt in enumerate(tree.body):
            where = f"{block.page}:{block.line + stmt.lineno - 1}"
            kind = checks.get(idx, (None,))[0]
            if kind == "expr":
                value = eval(compile(ast.Expression(stmt.value), block.page, "eval"), ns)
            else:
                mod = ast.Module(body=[stmt], type_ignores=[])
                ast.increment_lineno(mod, block.line - 1)
                exec(compile(mod, block.page, "exec"), ns)
            if kind is None:
                continue
            _, name, node, expected, text = checks[idx]
            if kind == "assign":
                value = ns[name]
                if isinstance(value, np.ndarray) and isinstance(expected, tuple):
                    value = value.shape
            assert _same(value, node, expected, text), f"{where}: got {value!r}, the page says # {text}"
    if block.output is not None:
        _compare_output(block, printed.getvalue())
    else:
        print(printed.getvalue(), end="")


def _compare_output(block: Block, printed: str) -> None:
    got = [ln.rstrip() for ln in printed.rstrip("\n").split("\n")]
    want = [ln.rstrip() for ln in (block.output or "").rstrip("\n").split("\n")]
    assert got == want, f"{block.page}:{block.line}: printed output differs from the text block below it\n" + "\n".join(
        f"{'!' if g != w else ' '} got  {g!r}\n  want {w!r}"
        for g, w in zip(got + [""] * len(want), want + [""] * len(got))
    )


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_page_examples_run_and_show_the_right_numbers(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    ns: dict = {"__name__": "__docs__"}
    exec(STAND_INS.get(page_id(path), ""), ns)
    ran = 0
    previous = refws.get_workspace_bytes()
    try:
        for block in blocks(path):
            if block.skip is None:
                run_block(block, ns)
                ran += 1
    finally:
        refws.set_workspace_bytes(previous)
    if ran == 0:
        pytest.skip(f"{page_id(path)} has no runnable python block")


def test_no_test_markers_are_few_and_give_a_reason():
    skipped = [(b.page, b.line, b.skip) for p in PAGES for b in blocks(p) if b.skip is not None]
    assert len(skipped) <= 3, skipped
    assert all(reason != "no reason given" for _, _, reason in skipped), skipped


# --- the collector itself ------------------------------------------------------------------------


def test_collector_checks_literal_comments_outputs_and_doctests(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "```python\nimport numpy as np\na = np.zeros((2, 3))   # (2, 3)\n1 / 3    # 0.333\n"
        "b = [1, 2]   # [1, 2]\nprint('hi')\n```\n\n```text\nhi\n```\n"
        "<!-- no-test: needs a GPU -->\n```python\nraise RuntimeError\n```\n"
        "```pycon\n>>> 2 + 2\n4\n```\n",
        encoding="utf-8",
    )
    found = [Block(b.page, b.line, b.lang, b.code, b.skip, b.output) for b in _blocks_at(page)]
    assert [b.skip for b in found] == [None, "needs a GPU", None]
    assert found[0].output == "hi" and found[0].line == 2
    ns: dict = {}
    for b in found:
        if b.skip is None:
            run_block(b, ns)
    for wrong in ("a = np.zeros((2, 3))   # (3, 2)", "1 / 3   # 0.334", "1 + 1   # 3", "print(1)  # 'x'"):
        with pytest.raises(AssertionError):
            run_block(Block("p.md", 1, "python", "import numpy as np\n" + wrong, None, None), {})
    with pytest.raises(AssertionError):
        run_block(Block("p.md", 1, "python", "print(1)", None, "2"), {})
    with pytest.raises(AssertionError):
        run_block(Block("p.md", 1, "python", ">>> 1 + 1\n3", None, None), {})
    with pytest.raises(AssertionError, match="cannot be checked"):
        run_block(Block("p.md", 1, "python", "for i in range(2): pass   # 2", None, None), {})
    shell = Block("p.md", 1, "bash", "refws explain 5 3 --padding VALID", None, None)
    from refws.explain import explain

    shell.output = explain((5,), (3,), padding="VALID")
    run_block(shell, {})
    shell.output = shell.output.replace("out 3", "out 4")
    with pytest.raises(AssertionError, match="printed output differs"):
        run_block(shell, {})


def _blocks_at(path: Path) -> list:
    global ROOT
    saved, ROOT = ROOT, path.parent
    try:
        return blocks(path)
    finally:
        ROOT = saved


# --- docstrings --------------------------------------------------------------------------------


def _modules() -> list:
    names = ["refws"] + [m.name for m in pkgutil.walk_packages(refws.__path__, "refws.")]
    return [n for n in names if not n.endswith("__main__")]


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    """The ``>>>`` examples of every docstring of refws (they render in the API reference)."""
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for t in tests:
        runner.run(t, out=report.write)
    assert runner.failures == 0, report.getvalue()
