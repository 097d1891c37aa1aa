"""Build a golden store from a catalog (in parallel, or one shard of it), verify a store against a
rebuild in memory, and merge shard stores into one.

The bytes of a store depend only on the catalog and refws's version: not on ``jobs``, on the
sharding, on BLAS threads or on the machine (every stored number is exact or correctly rounded).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .case import Case
from .catalog import builtin_catalog
from .catalog_file import BUILTIN_NAME, Catalog, catalog_hash, load_catalog
from .evaluate import evaluate
from .store import (
    GoldenError,
    NpzParts,
    StoreWriter,
    StrPath,
    case_path,
    default_root,
    encode_arrays,
    entry_bits,
    entry_derivatives,
    fsync_file,
    manifest_bytes,
    manifest_entry,
    npz_parts,
    read_manifest,
    read_npz,
    sha256,
    write_case_parts,
)

__all__ = [
    "select",
    "build_case",
    "build",
    "verify",
    "merge",
    "VerifyReport",
    "ulp_distance",
    "BuildError",
    "shard_of",
    "parse_shard",
    "case_cost",
    "catalog_record",
]


# ``None`` (the built-in catalog), a :class:`Catalog` or a catalog file's path.
CatalogLike = Catalog | str | os.PathLike[str] | None
# ``progress(done, total, case name)``, called after each case.
Progress = Callable[[int, int, str], object]


class BuildError(ValueError):
    """A case cannot be built (its exactness proof fails, its weights sit on the WS clamp, ...):
    the message names the case. Nothing is written."""


def _catalog_of(catalog: CatalogLike) -> Catalog:
    """``None``: the built-in catalog; a :class:`Catalog`; or a path to a catalog file."""
    if catalog is None:
        return builtin_catalog()
    return catalog if isinstance(catalog, Catalog) else load_catalog(catalog)


def catalog_record(catalog: Catalog) -> dict:
    """What a manifest records about the catalog a store was built from."""
    return dict(name=catalog.name, sha256=catalog.sha256, encoding=catalog.encoding)


def select(suite: str | None = None, pattern: str | None = None, catalog: CatalogLike = None) -> list[Case]:
    """Catalog cases of one suite and/or whose name matches a shell pattern (``fnmatch``)."""
    return [
        c
        for c in _catalog_of(catalog).cases
        if (suite is None or c.suite == suite) and (pattern is None or fnmatch.fnmatchcase(c.name, pattern))
    ]


def build_case(case: Case, encoding: str = "float64") -> tuple[NpzParts, dict]:
    """``(npz bytes, manifest entry)`` of one case; the bytes as :class:`~refws.golden.store.NpzParts`
    (views of the case's arrays, ``bytes(data)`` joins them): no copy of the file is made."""
    data = npz_parts((built := _evaluated(case, encoding))[0])
    return data, manifest_entry(case, built[1], built[2], data)


def _evaluated(case: Case, encoding: str) -> tuple[dict, dict, dict]:
    """``(arrays as written, their manifest metadata, terms)`` of a case: all but its file."""
    arrays, terms = evaluate(case)
    written, meta = encode_arrays(arrays, set(terms), encoding)
    return written, meta, terms


def _write_case(case: Case, built: tuple, folder: str, fsync: bool = True) -> dict:
    """Write an :func:`_evaluated` case's file into ``folder`` (its CRC-32 and SHA-256 computed on
    the way, from views of the arrays); returns its manifest entry."""
    written, meta, terms = built
    data = npz_parts(written)
    entry = manifest_entry(case, meta, terms, data)
    write_case_parts(folder, case.name, data, fsync=fsync)
    return entry


# --- sharding -------------------------------------------------------------------------------


def case_cost(case: Case) -> float:
    """A rough relative cost of building a case (multiply-adds, weighted), for balancing work."""
    p = case.params
    pieces = 4 if case.bits > 12 else 1  # 24-bit operands: 2 x 2 partial products
    calls = 1 + 2 * ("vjp" in case.derivatives) + 2 * ("jvp" in case.derivatives)
    if case.suite in ("conv", "conv_transpose"):
        x, w = p["x_shape"], p["w_shape"]
        work = math.prod(x) * math.prod(w[:-2]) * max(w[-1], w[-2])
    elif case.suite == "ws":
        work = 200.0 * math.prod(p["w_shape"])  # exact rational arithmetic per weight
    else:
        work = 50.0 * math.prod(p["x_shape"]) * 64
    return float(work) * pieces * calls + 1e4


def shard_of(cases: Iterable[Case], index: int, count: int) -> list[Case]:
    """The cases of shard ``index`` (1-based) of ``count``: largest first to the least loaded shard
    (ties to the lowest index), by :func:`case_cost`; deterministic for a given catalog."""
    if not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: expected 1 <= I <= N")
    loads = [0.0] * count
    mine = []
    for case in sorted(cases, key=lambda c: (-case_cost(c), c.name)):
        k = min(range(count), key=lambda i: (loads[i], i))
        loads[k] += case_cost(case)
        if k == index - 1:
            mine.append(case)
    return sorted(mine, key=lambda c: c.name)


def parse_shard(text: str) -> tuple:
    """``"I/N"`` as ``(I, N)`` with ``1 <= I <= N``."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 2/4") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text!r}: expected 1 <= I <= N")
    return i, n


# --- running cases (in this process or in a pool) -------------------------------------------


def _build_into(case, encoding: str, folder: str, fsync: bool = True):
    """Build a case and write its file into ``folder``; returns its manifest entry (a pool task,
    whose file the parent fsyncs: ``fsync=False``).

    The file is written from views of the case's arrays: no copy of it is held in memory."""
    return _write_case(case, _evaluated(case, encoding), folder, fsync)


# A case with at least this many bytes of arrays is written on the writer thread; a smaller one at
# once (the thread's hand-offs of the GIL cost more than its overlap saves: the built-in catalog's
# 290 small cases took 10-15% longer with every case on the thread).
_THREAD_WRITE_BYTES = 4 << 20


class _CaseWriter:
    """Writes built cases into a folder, each file then fsynced and evicted on an fsync thread.

    A large case is written on a writer thread, one case behind the evaluation: its CRC-32, SHA-256
    and write release the GIL, so a free core takes them off the critical path while the next case
    is evaluated. At most one case waits to be written: at most two cases' arrays are held (an
    fsync holds none). :meth:`put` and :meth:`finish` return the ``(index, case, entry)`` of the
    cases written since, in order; after :meth:`finish` every file is on disk.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.pending: tuple[int, Case, Future] | None = None
        self.syncs: list[Future] = []
        self.writer = ThreadPoolExecutor(1, "refws-golden-writer")
        self.syncer = ThreadPoolExecutor(1, "refws-golden-fsync")

    def __enter__(self) -> _CaseWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.shutdown(wait=True)
        self.syncer.shutdown(wait=True)

    def put(self, i: int, case: Case, built: tuple) -> list:
        done = self._drain()
        path = case_path(self.folder, case.name)
        if sum(a.nbytes for a in built[0].values()) < _THREAD_WRITE_BYTES:
            done.append((i, case, _write_case(case, built, self.folder, False)))
            self.syncs.append(self.syncer.submit(fsync_file, path, True))
        else:
            self.pending = (i, case, self.writer.submit(_write_case, case, built, self.folder, False))
            # queued behind the write on the writer thread: the fsync starts as soon as it is written
            self.syncs.append(self.writer.submit(self.syncer.submit, fsync_file, path, True))
        return done

    def finish(self) -> list:
        done = self._drain()
        for sync in self.syncs:
            queued = sync.result()
            if queued is not None:  # an fsync queued from the writer thread: its own future
                queued.result()
        return done

    def _drain(self) -> list:
        """The pending case, once written."""
        if self.pending is None:
            return []
        (i, case, future), self.pending = self.pending, None
        return [(i, case, future.result())]


def _build_here(cases, encoding: str, folder: str, progress=None):
    """Yield ``(case, manifest entry)`` for every case, built in this process and written by a
    :class:`_CaseWriter` (large cases one case behind, on a thread); every file is fsynced before
    the last case is yielded. A failing case raises :class:`BuildError`."""
    n = len(cases)

    def report(done):
        for i, case, entry in done:
            if progress:
                progress(i, n, case.name)
            yield case, entry

    with _CaseWriter(folder) as writer:
        for i, case in enumerate(cases, 1):
            try:
                built = _evaluated(case, encoding)
            except (ArithmeticError, ValueError, TypeError) as exc:
                raise _failed(case, exc) from exc
            yield from report(writer.put(i, case, built))
            del built  # the writer may hold the arrays until written
        yield from report(writer.finish())


def _failed(case: Case, exc: Exception) -> BuildError:
    return BuildError(f"case {case.name}: {type(exc).__name__}: {exc}")


# (set, get) the thread count: the entry points of the BLAS libraries NumPy may load.
_BLAS_THREAD_CALLS = (
    ("openblas_set_num_threads", "openblas_get_num_threads"),
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("MKL_Set_Num_Threads", "MKL_Get_Max_Threads"),
    ("bli_thread_set_num_threads", "bli_thread_get_num_threads"),
)


def _blas_thread_calls() -> list:
    """``(set, get)`` ctypes functions of every BLAS library mapped into this process (found in
    ``/proc/self/maps``, as threadpoolctl does; none elsewhere than Linux)."""
    import ctypes

    try:
        with open("/proc/self/maps") as fh:
            libs = {line.split()[-1] for line in fh if "blas" in line.lower() or "mkl" in line.lower()}
    except OSError:
        return []
    calls = []
    for lib in sorted(libs):
        try:
            handle = ctypes.CDLL(lib)
        except OSError:
            continue
        for set_name, get_name in _BLAS_THREAD_CALLS:
            setter, getter = getattr(handle, set_name, None), getattr(handle, get_name, None)
            if setter is not None and getter is not None:
                calls.append((setter, getter))
                break
    return calls


@contextlib.contextmanager
def _blas_threads_at_most(n: int):
    """At most ``n`` BLAS threads inside the block; the previous counts are restored after."""
    import ctypes

    lowered = [(setter, old) for setter, getter in _blas_thread_calls() if (old := int(getter())) > n]
    for setter, _ in lowered:
        setter(ctypes.c_int(n))
    try:
        yield
    finally:
        for setter, old in lowered:
            setter(ctypes.c_int(old))


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _one_thread_per_worker() -> None:
    """A pool worker's initializer: one BLAS thread and one thread for refws's tap formulation, so
    that ``jobs`` processes share the cores instead of each starting a thread per core. Runs only in
    the worker (NumPy's BLAS is already loaded there: it is limited through its own setter, found
    among the libraries mapped into the process, as threadpoolctl does); the parent is untouched."""
    import ctypes
    import importlib

    # the module: ``from .. import conv`` is the function that refws re-exports under its name
    conv_module: Any = importlib.import_module("..conv", __package__)
    conv_module.TAPS_THREADS = 1
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(1)
        return
    except ImportError:
        pass
    for setter, _ in _blas_thread_calls():
        setter(ctypes.c_int(1))


@contextlib.contextmanager
def _pool(jobs: int):
    """A process pool whose workers use one BLAS thread each (jobs processes share the cores)."""
    executor = ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread_per_worker
    )
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _check_jobs(jobs) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: expected an integer >= 1")
    return jobs


def _run(task, cases, args: tuple, jobs: int, progress=None):
    """Yield ``(case, task(case, *args))`` for every case, in this process (``jobs == 1``) or in a
    pool of ``jobs`` processes (largest cases first); a failing case raises :class:`BuildError`."""

    n = len(cases)
    if jobs == 1:
        for i, case in enumerate(cases, 1):
            try:
                result = task(case, *args)
            except (ArithmeticError, ValueError, TypeError) as exc:
                raise _failed(case, exc) from exc
            if progress:
                progress(i, n, case.name)
            yield case, result
        return
    order = sorted(cases, key=lambda c: (-case_cost(c), c.name))
    with _pool(jobs) as executor:
        pending = {executor.submit(task, case, *args): case for case in order}
        done_count = 0
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: pending[f].name):
                case = pending.pop(fut)
                try:
                    result = fut.result()
                except (ArithmeticError, ValueError, TypeError) as exc:
                    raise _failed(case, exc) from exc
                done_count += 1
                if progress:
                    progress(done_count, n, case.name)
                yield case, result


def _built(cases, encoding: str, folder: Path, jobs: int, progress=None):
    """Yield ``(case, entry)`` for every case, each written and fsynced into ``folder``: in this
    process, written one case behind (:func:`_build_here`), or in a pool whose workers write the
    files and whose parent, otherwise idle, fsyncs each one as it is reported."""
    if jobs == 1:
        # the writer thread needs a core: BLAS threads spinning on every core slowed a 2-core
        # build by 15-25% and spent 40% more CPU
        with _blas_threads_at_most(max(1, _usable_cores() - 1)):
            yield from _build_here(cases, encoding, str(folder), progress)
        return
    for case, entry in _run(_build_into, cases, (encoding, str(folder), False), jobs, progress):
        fsync_file(case_path(folder, case.name), evict=True)
        yield case, entry


def _upgraded(entry: dict) -> dict:
    """A version-1 manifest entry in version 2's form (bits 12, both derivatives: what version 1 is)."""
    return dict(entry, bits=entry_bits(entry), derivatives=list(entry_derivatives(entry)))


def _same_definition(entry: dict, case: Case) -> bool:
    """Whether a stored entry was built from this very case (a partial build keeps only those)."""
    return (entry["suite"], entry["params"], entry["bits"], tuple(entry["derivatives"])) == (
        case.suite,
        case.params,
        case.bits,
        tuple(case.derivatives),
    )


def build(
    out: StrPath | None = None,
    suite: str | None = None,
    pattern: str | None = None,
    progress: Progress | None = None,
    *,
    catalog: CatalogLike = None,
    jobs: int = 1,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Evaluate the selected cases and write them (atomically) into the store at ``out``.

    ``catalog``: ``None`` for the built-in catalog, a :class:`Catalog` or a catalog file's path.
    ``jobs``: processes building cases in parallel. ``shard``: ``(I, N)`` to build shard I of N
    (:func:`shard_of`) into a shard store, for :func:`merge`. A partial build (``suite`` or
    ``pattern``) keeps the other cases of an existing store that are still in the catalog, unchanged.
    Returns a summary: cases built, cases in the store, bytes, seconds, root.
    """
    jobs = _check_jobs(jobs)
    cat = _catalog_of(catalog)
    root = Path(out) if out is not None else default_root()
    start = time.perf_counter()
    chosen = select(suite, pattern, cat)
    if shard is not None:
        if suite is not None or pattern is not None:
            raise ValueError(
                "a shard is a fixed part of the whole catalog: --shard cannot be combined with --suite or --case"
            )
        chosen = shard_of(chosen, *shard)
        if not chosen:
            raise ValueError(
                f"shard {shard[0]}/{shard[1]} of {cat.source} holds no case "
                f"({len(cat.cases)} cases for {shard[1]} shards)"
            )
    if not chosen:
        raise ValueError(f"no golden case matches suite={suite!r} pattern={pattern!r}")
    entries, keep = {}, {}
    if shard is None and (suite is not None or pattern is not None) and (root / "manifest.json").exists():
        old = read_manifest(root)
        if old.get("catalog", {}).get("encoding", "float64") == cat.encoding:
            by_name = cat.by_name()
            keep = {
                n: _upgraded(e)
                for n, e in old["cases"].items()
                if n in by_name and _same_definition(_upgraded(e), by_name[n])
            }
    shard_record = None if shard is None else dict(index=shard[0], count=shard[1])
    with StoreWriter(root) as writer:
        for name in keep:
            if name not in {c.name for c in chosen}:
                writer.copy(name, root)
                entries[name] = keep[name]
        for case, entry in _built(chosen, cat.encoding, writer.tmp, jobs, progress):
            entries[case.name] = entry
        writer.commit(manifest_bytes(entries, __version__, catalog_record(cat), shard_record))
    size = sum(case_path(root, n).stat().st_size for n in entries) + (root / "manifest.json").stat().st_size
    return dict(
        built=len(chosen),
        cases=len(entries),
        bytes=size,
        seconds=time.perf_counter() - start,
        root=str(root),
        catalog=cat.name,
        sha256=cat.sha256,
        notes=list(cat.notes),
    )


# --- merge ----------------------------------------------------------------------------------


def merge(out: StrPath, shard_dirs: Iterable[StrPath], progress: Progress | None = None) -> dict:
    """Combine shard stores (``refws golden build --shard I/N``) into one store with one manifest.

    The shards must come from the same catalog (hash) and refws version and together be shards
    1..N of N, each once; every file's checksum is checked while it is copied. The result is
    byte-identical to building the whole catalog at once.
    """
    start = time.perf_counter()
    dirs = [Path(d) for d in shard_dirs]
    if not dirs:
        raise ValueError("merge: expected at least one shard store")
    manifests = [read_manifest(d) for d in dirs]
    first = manifests[0]
    for d, m in zip(dirs, manifests):
        if "shard" not in m or "catalog" not in m:
            raise ValueError(f"{d / 'manifest.json'}: not a shard store (built with --shard I/N)")
        for key in ("catalog", "refws_version", "schema_version"):
            if m.get(key) != first.get(key):
                raise ValueError(
                    f"{d / 'manifest.json'}: {key} {m.get(key)!r} differs from {dirs[0]}'s "
                    f"{first.get(key)!r}: shards of different builds"
                )
    count = first["shard"]["count"]
    seen: dict[int, Path] = {}
    for d, m in zip(dirs, manifests):
        i = m["shard"]["index"]
        if m["shard"]["count"] != count:
            raise ValueError(f"{d}: shard {i}/{m['shard']['count']} does not belong to a split in {count}")
        if i in seen:
            raise ValueError(f"{d}: shard {i}/{count} given twice (also {seen[i]})")
        seen[i] = d
    missing = sorted(set(range(1, count + 1)) - set(seen))
    if missing:
        raise ValueError(f"merge: shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing")
    entries: dict[str, dict] = {}
    origin: dict[str, Path] = {}
    for d, m in zip(dirs, manifests):
        for name, entry in m["cases"].items():
            if name in entries:
                raise ValueError(f"merge: case {name} is in both {origin[name]} and {d}")
            entries[name], origin[name] = entry, d
    total = len(entries)
    with StoreWriter(out) as writer:
        for i, name in enumerate(sorted(entries), 1):
            writer.copy(name, origin[name], entries[name]["sha256"])
            if progress:
                progress(i, total, name)
        writer.commit(manifest_bytes(entries, first["refws_version"], first["catalog"], None))
    size = sum(case_path(out, n).stat().st_size for n in entries) + (Path(out) / "manifest.json").stat().st_size
    return dict(cases=total, shards=count, bytes=size, seconds=time.perf_counter() - start, root=str(out))


# --- verify ---------------------------------------------------------------------------------


def ulp_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance in units in the last place between two float64 arrays of one shape."""
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0

    def ordered(v):
        i = np.ascontiguousarray(v, dtype=np.float64).view(np.int64)
        return np.where(i < 0, np.int64(-(2**63)) - i, i).astype(object)  # monotone in the float value

    both_nan = np.isnan(a) & np.isnan(b)
    d = np.abs(ordered(a) - ordered(b))
    d[both_nan] = 0
    return float(np.max(d))


@dataclass
class VerifyReport:
    """What ``verify`` found: per case, a list of problems; ``corrupt`` marks unreadable files."""

    checked: int = 0
    mismatches: dict = field(default_factory=dict)
    corrupt: dict = field(default_factory=dict)
    seconds: float = 0.0
    catalog: str = ""

    @property
    def exit_code(self) -> int:
        return 2 if self.corrupt else (1 if self.mismatches else 0)


def _compare(name: str, stored: bytes, rebuilt: bytes, where: str) -> list:
    if stored == rebuilt:
        return []
    a, b = read_npz(stored, where), read_npz(rebuilt, "rebuilt " + name)
    problems = [f"array {k!r} missing from the file" for k in sorted(set(b) - set(a))]
    problems += [f"array {k!r} not in the catalog's case" for k in sorted(set(a) - set(b))]
    for k in sorted(set(a) & set(b)):
        if a[k].shape != b[k].shape:
            problems.append(f"array {k!r}: shape {a[k].shape} != rebuilt {b[k].shape}")
        elif a[k].dtype != b[k].dtype:
            problems.append(f"array {k!r}: dtype {a[k].dtype.str} != rebuilt {b[k].dtype.str}")
        elif a[k].tobytes() != b[k].tobytes():
            problems.append(
                f"array {k!r}: differs by up to "
                f"{ulp_distance(a[k].astype(np.float64), b[k].astype(np.float64)):.0f} ulp"
            )
    return problems or ["file bytes differ (array contents equal)"]


def _verify_case(case, encoding: str, root: str, entry: dict):
    """``("ok" | "mismatch" | "corrupt", problems)`` for one stored case (a pool task)."""
    path = case_path(root, case.name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "corrupt", [f"{path}: missing"]
    if sha256(data) != entry.get("sha256"):
        return "corrupt", [f"{path}: checksum mismatch (truncated or altered)"]
    parts, rebuilt_entry = build_case(case) if encoding == "float64" else build_case(case, encoding)
    rebuilt = bytes(parts)
    try:
        problems = _compare(case.name, data, rebuilt, str(path))
    except GoldenError as exc:
        return "corrupt", [str(exc)]
    if _upgraded(entry) != rebuilt_entry and not problems:
        problems = ["manifest entry (parameters, terms, grid or shapes) differs from the catalog's"]
    return ("mismatch" if problems else "ok"), problems


def _stored_catalog(manifest: dict, root: Path):
    """The catalog a store describes itself: its manifest's cases (a user store verified without
    ``--catalog``), and whether they hash to the recorded catalog."""
    record = manifest["catalog"]
    cases = tuple(
        Case(n, e["suite"], e["params"], entry_bits(e), entry_derivatives(e))
        for n, e in sorted(manifest["cases"].items())
    )
    cat = Catalog(
        cases,
        f"{root / 'manifest.json'} (catalog {record.get('name')!r})",
        record.get("name", ""),
        "",
        record.get("encoding", "float64"),
    )
    return cat


def verify(
    root: StrPath | None = None,
    progress: Progress | None = None,
    complete: bool = True,
    *,
    catalog: CatalogLike = None,
    jobs: int = 1,
) -> VerifyReport:
    """Check every checksum, rebuild every case in memory and compare byte for byte.

    Against which catalog: ``catalog`` (a path or :class:`Catalog`) if given, whose hash must be
    the one the manifest records; else the built-in catalog for the repository's store and for any
    store built from it (manifest catalog ``builtin``, or schema version 1); else the cases the
    manifest itself lists (a user store), which must hash to the catalog hash it records.
    With ``complete`` (the default), a catalog case absent from the store (from its shard, for a
    shard store) is a mismatch too: the store is stale. ``complete=False`` checks only what is stored.
    """
    jobs = _check_jobs(jobs)
    root = Path(root) if root is not None else default_root()
    start = time.perf_counter()
    report = VerifyReport()
    manifest = read_manifest(root)
    record, shard = manifest.get("catalog"), manifest.get("shard")
    self_described = catalog is None and record is not None and record.get("name") != BUILTIN_NAME
    if self_described:
        assert record is not None  # self_described implies it
        cat = _stored_catalog(manifest, root)
        if shard is None and catalog_hash(cat.cases, cat.encoding) != record.get("sha256"):
            report.mismatches["(catalog)"] = [
                f"the manifest's cases do not hash to the catalog sha256 it records "
                f"({record.get('sha256')}): cases added, removed or edited by hand"
            ]
    else:
        cat = _catalog_of(catalog)
        if record is not None and record.get("sha256") != cat.sha256:
            report.mismatches["(catalog)"] = [
                f"store built from catalog {record.get('name')!r} with sha256 "
                f"{record.get('sha256')}, not {cat.source} (sha256 {cat.sha256})"
            ]
    report.catalog = f"{cat.name} ({cat.source}, sha256 {cat.sha256[:12]})"
    by_name = cat.by_name()
    expected = shard_of(cat.cases, shard["index"], shard["count"]) if shard and not self_described else cat.cases
    for missing in sorted({c.name for c in expected} - set(manifest["cases"])) if complete else ():
        report.mismatches[missing] = ["in the catalog but not in the store (rebuild it)"]
    stored = sorted(manifest["cases"])
    known = [by_name[n] for n in stored if n in by_name]
    for name in stored:
        if name not in by_name:
            report.checked += 1
            report.mismatches[name] = ["not in the catalog"]
    args = (cat.encoding, str(root))
    if jobs == 1:
        results = ((case, _verify_task(case, *args, manifest["cases"][case.name])) for case in known)
    else:
        results = _run_verify(known, args, manifest, jobs)
    for i, (case, (status, problems)) in enumerate(results, 1):
        report.checked += 1
        if progress:
            progress(i, len(known), case.name)
        if status == "corrupt":
            report.corrupt[case.name] = problems
        elif status == "mismatch":
            report.mismatches[case.name] = problems
    report.seconds = time.perf_counter() - start
    return report


def _verify_task(case, encoding, root, entry):
    try:
        return _verify_case(case, encoding, root, entry)
    except (ArithmeticError, ValueError, TypeError) as exc:
        return "mismatch", [f"cannot be rebuilt: {type(exc).__name__}: {exc}"]


def _run_verify(cases, args, manifest, jobs):
    with _pool(jobs) as executor:
        futures = [
            (case, executor.submit(_verify_task, case, *args, manifest["cases"][case.name]))
            for case in sorted(cases, key=lambda c: (-case_cost(c), c.name))
        ]
        for case, fut in futures:
            yield case, fut.result()
