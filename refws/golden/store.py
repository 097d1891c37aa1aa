"""The golden store: one ``<suite>/<case>.npz`` per case and ``manifest.json``; atomic writes, verified loads.

Files are byte-for-byte reproducible: arrays are little-endian float64 ``.npy`` (format 1.0) with
a header written here rather than by the installed NumPy, inside an uncompressed zip whose entries
are sorted by name and dated 1980-01-01. The format is specified in docs/golden-format.md.

Schema version 2 (written now) adds to version 1 (still read): the catalog the store was built
from (its name and hash), the shard a store holds, each case's grid (``bits``) and stored
derivatives, and the ``compact`` encoding, where inputs are stored as their grid integers
(``<i2`` / ``<i4``) with the power of two in the manifest (``exponent``). :func:`load_entry`
returns float64 arrays whatever the encoding.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from .case import Case

# A folder or file name as the functions below take it.
StrPath = str | os.PathLike[str]

__all__ = [
    "SCHEMA_VERSION",
    "READABLE_SCHEMAS",
    "GoldenError",
    "GoldenCase",
    "npy_bytes",
    "npz_bytes",
    "read_npz",
    "default_root",
    "case_path",
    "read_manifest",
    "load",
    "load_entry",
    "cases",
    "write_store",
    "sha256",
    "StoreWriter",
    "write_case_file",
    "decode_arrays",
    "encode_arrays",
    "manifest_entry",
    "manifest_bytes",
    "entry_bits",
    "entry_derivatives",
    "npz_parts",
    "NpzParts",
    "write_case_parts",
    "fsync_file",
]

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
_DTYPES = {"<f8": np.float64, "<i2": np.int16, "<i4": np.int32}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class GoldenError(Exception):
    """A golden file is missing, truncated, altered or malformed (the message names the file)."""


@dataclass(frozen=True)
class GoldenCase:
    """A loaded case: its name, suite, parameters (JSON values), arrays (float64) and, per output
    array, the number of terms of its bilinear part (the manifest's ``terms``)."""

    name: str
    suite: str
    params: dict
    arrays: dict
    terms: dict = field(default_factory=dict)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_parts(a: np.ndarray) -> tuple:
    """``(header bytes, data buffer)`` of an array's ``.npy`` format 1.0 bytes: little-endian float64,
    or int16 / int32 for compact inputs; the header padded with spaces to 64 bytes; the data a
    C-order view of the array (no copy when it is already C-contiguous in that dtype)."""
    a = np.asarray(a)
    descr = {np.dtype(np.int16): "<i2", np.dtype(np.int32): "<i4"}.get(a.dtype, "<f8")
    a = np.asarray(a, dtype=descr, order="C")  # C order: the bytes below (0-d stays 0-d)
    shape = repr(tuple(int(d) for d in a.shape))  # "()", "(3,)", "(2, 3)"
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    total = 10 + len(header) + 1
    header += " " * (-total % 64) + "\n"
    head = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1")
    return head, a.reshape(-1).data.cast("B")


def npy_bytes(a: np.ndarray) -> bytes:
    """``.npy`` format 1.0 bytes of an array (little-endian float64, or int16 / int32 for compact
    inputs): the header padded with spaces to 64 bytes."""
    head, data = _npy_parts(a)
    return head + data.tobytes()


class _Pieces:
    """A write-only, seekable file that keeps what is written as a list of buffers (no copies):
    what :class:`zipfile.ZipFile` needs to write an archive whose bytes are then streamed out.
    A seek back may only overwrite one earlier write of the same length (zipfile's header update)."""

    def __init__(self):
        self.parts, self.starts, self.pos, self.end = [], {}, 0, 0

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: pos, 1: self.pos + pos, 2: self.end + pos}[whence]
        return self.pos

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if self.pos == self.end:
            self.starts[self.pos] = len(self.parts)
            self.parts.append(data)
            self.end += n
        else:
            i = self.starts.get(self.pos)
            if i is None or memoryview(self.parts[i]).nbytes != n:
                raise OSError("_Pieces: only an earlier write of the same length can be overwritten")
            self.parts[i] = data
        self.pos += n
        return n

    def flush(self) -> None:
        pass

    def close(self) -> None:  # zipfile never closes a file it was given; here for its protocol
        pass


class NpzParts(list):
    """The bytes of a case file as a list of buffers (views of its arrays' data: no copy of the
    file is made); ``bytes(parts)`` joins them, :attr:`sha256` hashes them."""

    def __bytes__(self) -> bytes:
        return b"".join(self)

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for part in self:
            digest.update(part)
        return digest.hexdigest()


def npz_parts(arrays: dict) -> NpzParts:
    """The bytes of :func:`npz_bytes` as buffers (:class:`NpzParts`), to be hashed and written
    piece by piece: ``bytes(npz_parts(a)) == npz_bytes(a)``."""
    sink = _Pieces()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.create_system = 3
            head, data = _npy_parts(arrays[name])
            info.file_size = len(head) + data.nbytes  # as ZipFile.writestr sets it
            with zf.open(info, mode="w") as dest:
                dest.write(head)
                dest.write(data)
    return NpzParts(sink.parts)


def npz_bytes(arrays: dict) -> bytes:
    """An uncompressed zip of ``<name>.npy`` entries, sorted by name, with fixed dates."""
    return b"".join(npz_parts(arrays))


def read_npz(data: bytes, where: str) -> dict:
    """Arrays of an npz held in ``data``; never unpickles. ``where`` names the file in errors."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, ...
        raise GoldenError(f"{where}: not a readable npz file ({exc})") from exc


def default_root() -> Path:
    """``$REFWS_GOLDEN`` if set, else the ``golden/`` folder beside the ``refws`` package (the repository's)."""
    env = os.environ.get("REFWS_GOLDEN")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "golden"


def case_path(root: StrPath, name: str) -> Path:
    """``<root>/<suite>/<case>.npz`` for a case named ``<suite>/<case>``."""
    return Path(root) / f"{name}.npz"


def read_manifest(root: StrPath | None = None) -> dict:
    root = Path(root) if root is not None else default_root()
    path = root / "manifest.json"
    _recover_interrupted_swap(root)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise GoldenError(f"{path}: missing (build the fixtures with `refws golden build`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GoldenError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("schema_version") not in READABLE_SCHEMAS or not isinstance(manifest.get("cases"), dict):
        raise GoldenError(
            f"{path}: unsupported schema (expected schema_version 1 or {SCHEMA_VERSION} and a 'cases' map)"
        )
    return manifest


def _read_verified(root: Path, name: str, entry: dict) -> bytes:
    path = case_path(root, name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GoldenError(f"{path}: missing (listed in the manifest)") from None
    if sha256(data) != entry["sha256"]:
        raise GoldenError(
            f"{path}: checksum mismatch (file truncated or altered): sha256 {sha256(data)}, "
            f"manifest says {entry['sha256']}"
        )
    return data


def load(name: str, root: StrPath | None = None) -> GoldenCase:
    """Load one case after checking its checksum against the manifest.

    Raises
    ------
    KeyError
        if no case of that name is in the manifest.
    GoldenError
        if the manifest or the case file is missing, truncated or altered.
    """
    root = Path(root) if root is not None else default_root()
    manifest = read_manifest(root)
    if name not in manifest["cases"]:
        raise KeyError(f"golden case {name!r} is not in {root / 'manifest.json'}")
    return load_entry(root, name, manifest["cases"][name])


def load_entry(root: Path, name: str, entry: dict) -> GoldenCase:
    """Load the case ``name`` described by its manifest ``entry``, checking its checksum and arrays."""
    where = case_path(root, name)
    arrays = read_npz(_read_verified(root, name, entry), str(where))
    expected = set(entry["arrays"])
    if set(arrays) != expected:
        raise GoldenError(f"{where}: arrays {sorted(arrays)} differ from the manifest's {sorted(expected)}")
    return GoldenCase(
        name, entry["suite"], entry["params"], decode_arrays(arrays, entry, str(where)), dict(entry.get("terms", {}))
    )


def decode_arrays(arrays: dict, entry: dict, where: str) -> dict:
    """float64 arrays from a case file's arrays: compact inputs (grid integers) times ``2**-exponent``."""
    out = {}
    for k, a in arrays.items():
        meta = entry["arrays"][k]
        dtype = meta.get("dtype", "<f8")
        if dtype not in _DTYPES or a.dtype != np.dtype(dtype):
            raise GoldenError(f"{where}: array {k!r} is {a.dtype.str}, the manifest says {dtype}")
        out[k] = a if dtype == "<f8" else np.ldexp(a.astype(np.float64), -int(meta["exponent"]))
    return out


def encode_arrays(arrays: dict, outputs: Container[str], encoding: str) -> tuple:
    """``(arrays to write, manifest metadata per array)``.

    ``compact``: every input (not an output in ``outputs``, not bound data) whose grid integers
    fit in int16 or int32 is stored as those integers, exactly, with ``exponent`` (value =
    ``integer * 2**-exponent``); everything else is float64, as in the ``float64`` encoding.
    """
    from .rational import grid_exponent

    written: dict[str, np.ndarray] = {}
    meta: dict[str, dict[str, Any]] = {}
    for k, a in sorted(arrays.items()):
        a = np.asarray(a, dtype=np.float64)
        meta[k] = dict(shape=list(a.shape), dtype="<f8")
        written[k] = a
        if encoding != "compact" or k in outputs or "__" in k:
            continue
        e = grid_exponent(a)
        ints = np.ldexp(a, e)
        top = float(np.max(np.abs(ints), initial=0.0))
        for dtype, limit in (("<i2", 2**15), ("<i4", 2**31)):
            if top < limit:
                written[k] = ints.astype(_DTYPES[dtype])
                meta[k] = dict(shape=list(a.shape), dtype=dtype, exponent=e)
                break
    return written, meta


def entry_bits(entry: dict) -> int:
    """A manifest entry's input grid (version 1 entries: 12)."""
    return int(entry.get("bits", 12))


def entry_derivatives(entry: dict) -> tuple:
    """A manifest entry's stored derivatives (version 1 entries: both)."""
    return tuple(entry.get("derivatives", ("vjp", "jvp")))


def cases(root: StrPath | None = None, suite: str | None = None) -> Iterator[GoldenCase]:
    """Iterate over the stored cases (optionally one suite), each loaded and verified.

    The manifest is read once, when iteration starts.
    """
    root = Path(root) if root is not None else default_root()
    manifest = read_manifest(root)
    for name in sorted(manifest["cases"]):
        if suite is None or manifest["cases"][name]["suite"] == suite:
            yield load_entry(root, name, manifest["cases"][name])


def manifest_entry(case: Case, meta: dict, terms: dict, data: bytes | NpzParts) -> dict:
    """A case's manifest entry: ``meta`` per array as :func:`encode_arrays` returns it (or, for
    the float64 encoding, the arrays themselves); ``data``: the case file's bytes or
    :class:`NpzParts`."""
    arrays = {
        k: (v if isinstance(v, dict) else dict(shape=list(np.shape(v)), dtype="<f8")) for k, v in sorted(meta.items())
    }
    digest = data.sha256 if isinstance(data, NpzParts) else sha256(data)
    return dict(
        suite=case.suite,
        params=case.params,
        terms=terms,
        sha256=digest,
        arrays=arrays,
        bits=case.bits,
        derivatives=list(case.derivatives),
    )


def manifest_bytes(entries: dict, version: str, catalog: dict | None = None, shard: dict | None = None) -> bytes:
    """The manifest: ``catalog`` = ``{"name", "sha256", "encoding"}`` of the catalog built from,
    ``shard`` = ``{"index", "count"}`` for a shard store (absent in a complete one)."""
    doc = dict(schema_version=SCHEMA_VERSION, refws_version=version, cases=dict(sorted(entries.items())))
    if catalog is not None:
        doc["catalog"] = catalog
    if shard is not None:
        doc["shard"] = shard
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _recover_interrupted_swap(root: Path) -> None:
    """If a build died between its two renames, put the previous store back in place."""
    backup = root.with_name(root.name + ".previous")
    if not root.exists() and backup.exists():
        backup.rename(root)


class StoreWriter:
    """Write a store case by case into a sibling temporary folder, then swap it in atomically.

    ``add(name, data)`` writes (and fsyncs) one case file as soon as it is built, so a build holds
    one case in memory at a time; other processes may write files into :attr:`tmp` directly.
    ``commit(manifest)`` writes the manifest and swaps the folder in with two renames (an
    interrupted build leaves the previous store intact); leaving the ``with`` block without a
    commit removes the temporary folder.
    """

    def __init__(self, root: StrPath) -> None:
        self.root = Path(root)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        _recover_interrupted_swap(self.root)
        self.tmp = Path(tempfile.mkdtemp(prefix=self.root.name + ".tmp-", dir=self.root.parent))
        self.tmp.chmod(0o755)  # mkdtemp makes it private; the store is not

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False

    def add(self, name: str, data: bytes) -> None:
        write_case_file(self.tmp, name, data)

    def copy(self, name: str, source_root: StrPath, expected_sha256: str | None = None) -> None:
        """Copy a case file from another store (checking its checksum when given)."""
        data = case_path(source_root, name).read_bytes()
        if expected_sha256 is not None and sha256(data) != expected_sha256:
            raise GoldenError(f"{case_path(source_root, name)}: checksum mismatch (file truncated or altered)")
        self.add(name, data)

    def commit(self, manifest: bytes) -> None:
        path = self.tmp / "manifest.json"
        path.write_bytes(manifest)
        fsync_file(path)
        backup = self.root.with_name(self.root.name + ".previous")
        if backup.exists():
            shutil.rmtree(backup)
        if self.root.exists():
            self.root.rename(backup)
        self.tmp.rename(self.root)
        shutil.rmtree(backup, ignore_errors=True)


def fsync_file(path: StrPath, evict: bool = False) -> None:
    """Flush a written file to disk (whichever process wrote it: fsync acts on the file).

    ``evict``: then drop its pages from the page cache (``posix_fadvise(DONTNEED)``, where the
    system has it): a build writes files it does not read back, and the kernel hands the freed
    pages to the next files rather than claiming fresh memory for each (writing a large store
    into page cache that keeps growing ran at 0.4-0.6 GB/s on a 2-core VM, at 3.9 GB/s so)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if evict and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_case_file(root: StrPath, name: str, data: bytes) -> None:
    """Write ``<root>/<name>.npz`` and fsync it."""
    dest = case_path(root, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    fsync_file(dest)


def write_case_parts(root: StrPath, name: str, parts: NpzParts | bytes | bytearray, fsync: bool = True) -> None:
    """Write ``<root>/<name>.npz`` from buffers (:func:`npz_parts`, or one bytes object) and fsync
    it (``fsync=False``: the caller does, with :func:`fsync_file`); no copy of the file is made."""
    dest = case_path(root, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb", buffering=0) as fh:
        for part in [parts] if isinstance(parts, (bytes, bytearray)) else parts:
            view = memoryview(part).cast("B")
            while view.nbytes:
                view = view[fh.write(view) :]
        if fsync:
            os.fsync(fh.fileno())


def write_store(root: StrPath, files: dict, manifest: bytes, keep: dict | None = None) -> None:
    """Atomically replace the store at ``root``.

    ``files`` maps case names to npz bytes; ``keep`` maps case names of the existing store that stay
    as they are. Everything is written to a sibling temporary folder first; only when it is complete
    is it swapped in (two renames), so an interrupted build leaves the previous store intact.
    """
    with StoreWriter(root) as writer:
        for name in keep or {}:
            writer.copy(name, root)
        for name, data in files.items():
            writer.add(name, data)
        writer.commit(manifest)
