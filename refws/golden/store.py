"""The golden store: one ``<suite>/<case>.npz`` per case and ``manifest.json``; atomic writes, verified loads.

Files are byte-for-byte reproducible: arrays are little-endian float64 ``.npy`` (format 1.0) with
a header written here rather than by the installed NumPy, inside an uncompressed zip whose entries
are sorted by name and dated 1980-01-01. The format is specified in docs/golden-format.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["SCHEMA_VERSION", "GoldenError", "GoldenCase", "npy_bytes", "npz_bytes", "read_npz",
           "default_root", "case_path", "read_manifest", "load", "load_entry", "cases", "write_store", "sha256"]

SCHEMA_VERSION = 1
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


def npy_bytes(a: np.ndarray) -> bytes:
    """``.npy`` format 1.0 bytes of a float64 array: the header padded with spaces to 64 bytes."""
    a = np.asarray(a, dtype="<f8")                        # tobytes() below is C order
    shape = repr(tuple(int(d) for d in a.shape))          # "()", "(3,)", "(2, 3)"
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': %s, }" % shape
    total = 10 + len(header) + 1
    header += " " * (-total % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1") + a.tobytes(order="C")


def npz_bytes(arrays: dict) -> bytes:
    """An uncompressed zip of ``<name>.npy`` entries, sorted by name, with fixed dates."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, npy_bytes(arrays[name]))
    return buf.getvalue()


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


def case_path(root: Path, name: str) -> Path:
    """``<root>/<suite>/<case>.npz`` for a case named ``<suite>/<case>``."""
    return Path(root) / f"{name}.npz"


def read_manifest(root=None) -> dict:
    root = Path(root) if root is not None else default_root()
    path = root / "manifest.json"
    _recover_interrupted_swap(root)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise GoldenError(f"{path}: missing (build the fixtures with `refws golden build`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GoldenError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("schema_version") != SCHEMA_VERSION or not isinstance(manifest.get("cases"), dict):
        raise GoldenError(f"{path}: unsupported schema (expected schema_version {SCHEMA_VERSION} and a 'cases' map)")
    return manifest


def _read_verified(root: Path, name: str, entry: dict) -> bytes:
    path = case_path(root, name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GoldenError(f"{path}: missing (listed in the manifest)") from None
    if sha256(data) != entry["sha256"]:
        raise GoldenError(f"{path}: checksum mismatch (file truncated or altered): sha256 {sha256(data)}, "
                          f"manifest says {entry['sha256']}")
    return data


def load(name: str, root=None) -> GoldenCase:
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
    arrays = read_npz(_read_verified(root, name, entry), str(case_path(root, name)))
    expected = set(entry["arrays"])
    if set(arrays) != expected:
        raise GoldenError(f"{case_path(root, name)}: arrays {sorted(arrays)} differ from the manifest's {sorted(expected)}")
    return GoldenCase(name, entry["suite"], entry["params"], arrays, dict(entry.get("terms", {})))


def cases(root=None, suite=None):
    """Iterate over the stored cases (optionally one suite), each loaded and verified.

    The manifest is read once, when iteration starts.
    """
    root = Path(root) if root is not None else default_root()
    manifest = read_manifest(root)
    for name in sorted(manifest["cases"]):
        if suite is None or manifest["cases"][name]["suite"] == suite:
            yield load_entry(root, name, manifest["cases"][name])


def manifest_entry(case, arrays: dict, terms: dict, data: bytes) -> dict:
    return dict(suite=case.suite, params=case.params, terms=terms, sha256=sha256(data),
                arrays={k: dict(shape=list(np.shape(v)), dtype="<f8") for k, v in sorted(arrays.items())})


def manifest_bytes(entries: dict, version: str) -> bytes:
    doc = dict(schema_version=SCHEMA_VERSION, refws_version=version, cases=dict(sorted(entries.items())))
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _recover_interrupted_swap(root: Path) -> None:
    """If a build died between its two renames, put the previous store back in place."""
    backup = root.with_name(root.name + ".previous")
    if not root.exists() and backup.exists():
        backup.rename(root)


def write_store(root, files: dict, manifest: bytes, keep: dict | None = None) -> None:
    """Atomically replace the store at ``root``.

    ``files`` maps case names to npz bytes; ``keep`` maps case names of the existing store that stay
    as they are. Everything is written to a sibling temporary folder first; only when it is complete
    is it swapped in (two renames), so an interrupted build leaves the previous store intact.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_swap(root)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        tmp.chmod(0o755)                       # mkdtemp makes it private; the store is not
        for name in keep or {}:
            dest = case_path(tmp, name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(case_path(root, name), dest)
        for name, data in files.items():
            dest = case_path(tmp, name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        (tmp / "manifest.json").write_bytes(manifest)
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        backup = root.with_name(root.name + ".previous")
        if backup.exists():
            shutil.rmtree(backup)
        if root.exists():
            root.rename(backup)
        tmp.rename(root)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
