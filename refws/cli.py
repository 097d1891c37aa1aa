"""The ``refws`` command: ``refws golden build | verify | merge | list | show``, ``refws check BACKEND``,
``refws explain``.

Exit codes of ``verify``: 0 all cases match, 1 a mismatch, 2 a corrupt or missing file or bad usage.
Exit codes of ``check``: 0 every expressible array passes, 1 a failure or an adapter error, 2 bad
usage, a corrupt store or a backend that cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import golden
from .golden.build import select
from .golden.catalog import SUITES
from .conformance.registry import BackendLoadError
from .golden.store import GoldenError, read_manifest


def _progress(stream):
    tty = stream.isatty()

    def show(i, n, name):
        if tty:
            stream.write(f"\r[{i:>{len(str(n))}}/{n}] {name[:60]:<60}")
            if i == n:
                stream.write("\n")
        elif i == n or i % max(1, n // 10) == 0:
            stream.write(f"[{i}/{n}] {name}\n")
        stream.flush()

    return show


def _catalog_arg(args):
    """The ``--catalog FILE`` of a golden subcommand, loaded (None: the built-in catalog); its notes
    (skipped sweep combinations) go to stderr."""
    if getattr(args, "catalog", None) is None:
        return None
    cat = golden.load_catalog(args.catalog, strict=getattr(args, "strict", False))
    for note in cat.notes:
        print(f"refws: note: {note}", file=sys.stderr)
    return cat


def _cmd_build(args) -> int:
    from .golden.build import parse_shard

    if args.catalog is not None and args.out is None:
        raise ValueError("--catalog needs --out DIR (the repository's golden/ holds the built-in catalog only)")
    shard = parse_shard(args.shard) if args.shard else None
    summary = golden.build(
        args.out,
        args.suite,
        args.case,
        progress=_progress(sys.stderr),
        catalog=_catalog_arg(args),
        jobs=args.jobs,
        shard=shard,
    )
    part = f" (shard {shard[0]}/{shard[1]})" if shard else ""
    print(
        f"built {summary['built']} case(s){part} of catalog {summary['catalog']!r} (sha256 "
        f"{summary['sha256'][:12]}); store {summary['root']} holds {summary['cases']} case(s), "
        f"{summary['bytes'] / 2**20:.2f} MiB; {summary['seconds']:.1f} s"
    )
    return 0


def _cmd_merge(args) -> int:
    summary = golden.merge(args.out, args.shards, progress=_progress(sys.stderr))
    print(
        f"merged {summary['shards']} shard(s) into {summary['root']}: {summary['cases']} case(s), "
        f"{summary['bytes'] / 2**20:.2f} MiB; {summary['seconds']:.1f} s"
    )
    return 0


def _cmd_verify(args) -> int:
    report = golden.verify(
        args.dir, progress=_progress(sys.stderr), complete=not args.partial, catalog=_catalog_arg(args), jobs=args.jobs
    )
    for name, problems in sorted({**report.mismatches, **report.corrupt}.items()):
        for p in problems:
            print(f"MISMATCH {name}: {p}" if name in report.mismatches else f"CORRUPT {name}: {p}")
    status = {0: "all match", 1: "MISMATCH", 2: "CORRUPT"}[report.exit_code]
    print(
        f"verified {report.checked} case(s) against catalog {report.catalog} in {report.seconds:.1f} s: {status} "
        f"({len(report.mismatches)} mismatching, {len(report.corrupt)} corrupt or missing)"
    )
    return report.exit_code


def _cmd_list(args) -> int:
    if args.dir is not None:  # what a store holds
        for name, entry in sorted(read_manifest(args.dir)["cases"].items()):
            if args.suite is None or entry["suite"] == args.suite:
                print(f"{name:<60} {entry['suite']}")
        return 0
    cat = _catalog_arg(args)
    if args.hash:
        from .golden.catalog import builtin_catalog

        print((cat or builtin_catalog()).sha256)
        return 0
    if args.toml:
        from .golden.catalog import builtin_catalog
        from .golden.catalog_file import dump_toml

        print(dump_toml(cat or builtin_catalog()), end="")
        return 0
    for case in select(args.suite, catalog=cat):
        print(f"{case.name:<60} {case.suite}")
    return 0


def _cmd_show(args) -> int:
    case = golden.load(args.name, args.dir)
    print(f"{case.name}  (suite {case.suite})")
    print("params: " + json.dumps(case.params, sort_keys=True))
    with np.printoptions(precision=17, threshold=6, edgeitems=3):
        for key in sorted(case.arrays):
            a = case.arrays[key]
            print(f"  {key:<16} shape {str(a.shape):<18} {a.ravel()[:4]}")
    return 0


def _cmd_check(args) -> int:
    from .conformance import load_backend, run
    from .conformance.registry import parse_options
    from .conformance.report import json_bytes, junit_report, text_report, write_atomic
    from .conformance.diagnosis import diagnose, explain_records

    if args.explain and args.case and args.case != args.explain:
        raise ValueError(f"--explain {args.explain!r} with --case {args.case!r}: --explain names the one case to run")
    backend = load_backend(args.backend, args.precision, **parse_options(args.opt))
    report = run(
        backend,
        args.golden,
        suite=args.suite,
        case=args.explain or args.case,
        repeat=args.repeat,
        progress=_progress(sys.stderr),
        diagnose=None if args.no_diagnose else diagnose,
    )
    print(text_report(report))
    if args.explain:
        print("\n" + explain_records(golden.load(args.explain, args.golden), report.records))
    if args.json:
        write_atomic(args.json, json_bytes(report))
    if args.junit:
        write_atomic(args.junit, junit_report(report))
    return report.exit_code


def _ints(text: str) -> tuple[int, ...]:
    """``"9,9"`` (or ``"9x9"``) as ``(9, 9)``; one int applies to every axis where refws allows it."""
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated ints, e.g. 9,9") from None


def _padding(text: str):
    """SAME / SAME_LOWER / VALID, an int, comma-separated ints, or ``lo:hi`` pairs (``2:-1,0:0``)."""
    if text.upper() in ("SAME", "SAME_LOWER", "VALID"):
        return text.upper()
    try:
        if ":" in text:
            return tuple(tuple(int(v) for v in pair.split(":")) for pair in text.split(","))
        values = _ints(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected SAME, SAME_LOWER, VALID, an int, comma-separated ints or lo:hi pairs such as 2:-1,0:0"
        ) from None
    return values[0] if len(values) == 1 else values


def _cmd_explain(args) -> int:
    from .explain import explain

    print(
        explain(
            args.input,
            args.kernel,
            args.stride,
            args.padding,
            args.lhs_dilation,
            args.rhs_dilation,
            at=args.at,
            groups=args.groups,
            channels=args.channels,
        )
    )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refws", description="refws: reference convolution and golden fixtures")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("golden", help="build, verify, list and show the golden fixtures")
    gs = g.add_subparsers(dest="action", required=True)
    b = gs.add_parser("build", help="evaluate the catalog and write the store atomically")
    b.add_argument("--out", default=None, help="store folder (default: the repository's golden/)")
    b.add_argument("--suite", default=None, choices=SUITES)
    b.add_argument("--case", default=None, metavar="PATTERN", help="shell pattern on case names, e.g. 'conv/2d_*'")
    b.add_argument(
        "--catalog",
        default=None,
        metavar="FILE",
        help="a catalog file (.toml or .json, docs/golden-format.md) instead of the built-in catalog; needs --out",
    )
    b.add_argument("--jobs", type=int, default=1, metavar="N", help="build N cases at once in N processes")
    b.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="build only shard I of N (1-based) into a shard store; combine with `refws golden merge`",
    )
    b.add_argument(
        "--strict", action="store_true", help="refuse sweeps with invalid combinations instead of skipping them"
    )
    b.set_defaults(run=_cmd_build)
    v = gs.add_parser("verify", help="check checksums and compare with a rebuild, byte for byte")
    v.add_argument("dir", nargs="?", default=None)
    v.add_argument("--partial", action="store_true", help="check only the stored cases (a subset store)")
    v.add_argument(
        "--catalog",
        default=None,
        metavar="FILE",
        help="the catalog file the store was built from (default: the built-in catalog for a store "
        "built from it, else the cases the store's manifest lists)",
    )
    v.add_argument("--jobs", type=int, default=1, metavar="N", help="rebuild N cases at once in N processes")
    v.set_defaults(run=_cmd_verify)
    mg = gs.add_parser("merge", help="combine shard stores (build --shard I/N) into one store")
    mg.add_argument("out", help="the merged store's folder")
    mg.add_argument("shards", nargs="+", metavar="SHARD_DIR", help="every shard store of one build")
    mg.set_defaults(run=_cmd_merge)
    ls = gs.add_parser("list", help="list the catalog's cases (or a store's, with --dir)")
    ls.add_argument("--suite", default=None)
    ls.add_argument("--catalog", default=None, metavar="FILE", help="a catalog file instead of the built-in one")
    ls.add_argument("--dir", default=None, help="list the cases stored in this store instead")
    ls.add_argument("--strict", action="store_true", help="refuse sweeps with invalid combinations")
    ls.add_argument(
        "--toml", action="store_true", help="print the catalog as a TOML catalog file (one [[case]] per case)"
    )
    ls.add_argument(
        "--hash",
        action="store_true",
        help="print the catalog's sha256 (what a store's manifest records; a CI cache key)",
    )
    ls.set_defaults(run=_cmd_list)
    sh = gs.add_parser("show", help="parameters, shapes and a few values of one stored case")
    sh.add_argument("name")
    sh.add_argument("--dir", default=None)
    sh.set_defaults(run=_cmd_show)
    c = sub.add_parser(
        "check",
        help="run a backend against the golden store and judge every array",
        description="Run BACKEND (a built-in name: torch, jax; or package.module:Attribute) "
        "over every stored case it can express and judge each array under the "
        "rigorous error bound of its precision. Exit 0: all expressible arrays pass; "
        "1: a failure or adapter error; 2: bad usage, corrupt store, backend not loadable.",
    )
    c.add_argument("backend", help="torch, jax, or package.module:Attribute")
    c.add_argument("--precision", default=None, help="passed to the backend's factory (e.g. float64, float32)")
    c.add_argument("--suite", default=None, choices=SUITES)
    c.add_argument("--case", default=None, metavar="PATTERN", help="shell pattern on case names, e.g. 'conv/2d_*'")
    c.add_argument("--golden", default=None, metavar="DIR", help="golden store (default: the repository's golden/)")
    c.add_argument("--json", default=None, metavar="FILE", help="write the JSON report here")
    c.add_argument("--junit", default=None, metavar="FILE", help="write JUnit XML here")
    c.add_argument("--repeat", type=int, default=1, help="run each call N times; report bitwise nondeterminism")
    c.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option for the backend's factory, e.g. device=cuda (repeatable)",
    )
    c.add_argument(
        "--explain",
        default=None,
        metavar="CASE",
        help="run only CASE and print its geometry (pads, output size, the taps each output "
        "position reads) with the failing elements marked",
    )
    c.add_argument(
        "--no-diagnose",
        action="store_true",
        help="do not try the near-miss conventions on failing arrays (docs/conformance.md)",
    )
    c.set_defaults(run=_cmd_check)
    e = sub.add_parser(
        "explain",
        help="print a convolution's geometry: pads, output size, the taps each output reads",
        description="Print what refws.conv_geometry makes of the arguments (explicit (lo, hi) pads, "
        "the output size and its formula with the numbers filled in) and, per axis, "
        "the lhs-dilated, padded input with the kernel taps each output position "
        "reads; with --groups (and --channels), which input channels each block of "
        "output channels reads. Example: refws explain 9,9 3,3 --stride 2 --padding SAME "
        "--rhs-dilation 2 --at 2,2. Negative pads: --padding=-1:2.",
    )
    e.add_argument("input", type=_ints, help="input spatial sizes, e.g. 9,9 (1 to 3 axes, or more)")
    e.add_argument("kernel", type=_ints, help="kernel spatial sizes, e.g. 3,3")
    e.add_argument("--stride", type=_ints, default=1, help="an int or one per axis (default 1)")
    e.add_argument(
        "--padding",
        type=_padding,
        default="SAME",
        help="SAME (default), SAME_LOWER, VALID, an int, one int per axis, or lo:hi pairs "
        "(2:-1,0:0; negative entries crop; write --padding=-1:2 when it starts with -)",
    )
    e.add_argument("--lhs-dilation", type=_ints, default=1, help="input dilation: L-1 zeros between inputs")
    e.add_argument("--rhs-dilation", type=_ints, default=1, help="kernel dilation (atrous)")
    e.add_argument("--at", type=_ints, default=None, metavar="O", help="mark one output index, e.g. 2,2")
    e.add_argument("--groups", type=int, default=1, metavar="G", help="channel groups (default 1)")
    e.add_argument(
        "--channels",
        type=_ints,
        default=None,
        metavar="CIN,COUT",
        help="input and output channel counts, both divisible by --groups: lists each group's channels",
    )
    e.set_defaults(run=_cmd_explain)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    try:
        return args.run(args)
    except (GoldenError, KeyError, ValueError, BackendLoadError) as exc:
        print(f"refws: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `refws golden list | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
