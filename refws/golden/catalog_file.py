"""Catalogs of golden cases as data: TOML or JSON files, sweeps, validation, the catalog hash.

A catalog is a list of *entries*, one table per case (or per sweep of cases), with the suite's
parameter names (those of ``refws.conv``, ``refws.conv_transpose``, ``refws.weight_standardize``
and the layer mirrors' constructors). The built-in catalog (:mod:`refws.golden.catalog`) is
written as the same entries and goes through the same :func:`parse_catalog`, so there is one
mechanism. The format is specified in docs/golden-format.md ("Catalog files")::

    name = "my-backend"          # optional: name, description, bits, derivatives, encoding
    bits = 12

    [[case]]
    suite = "conv"
    name = "resnet_3x3"
    x_shape = [2, 56, 56, 64]
    w_shape = [3, 3, 64, 64]
    [case.sweep]                 # the cartesian product, named resnet_3x3/s1_pSAME, ...
    stride = [1, 2]
    padding = ["SAME", "VALID"]

Bad input (unknown key, wrong type, impossible geometry, duplicate name, a sweep that expands
to nothing) raises :class:`CatalogError` naming the file, the case and the field.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import numbers
import re
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .case import DEFAULT_DERIVATIVES, DERIVATIVES, SUITES, Case
from .rng import DEFAULT_BITS, GRIDS

__all__ = ["CatalogError", "Catalog", "load_catalog", "parse_catalog", "catalog_hash", "dump_toml",
           "ENCODINGS", "REQUIRED", "BUILTIN_NAME", "FIELDS", "ABBREVIATIONS"]

ENCODINGS = ("float64", "compact")
BUILTIN_NAME = "builtin"          # the built-in catalog's name; a catalog file may not use it
REQUIRED = object()
_TOP_KEYS = ("name", "description", "bits", "derivatives", "encoding", "case")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.,+=-]+(/[A-Za-z0-9_.,+=-]+)*$")


class CatalogError(ValueError):
    """Bad catalog input; the message names the file, the case and the field."""

    def __init__(self, source: str, message: str, case: str | None = None, field_: str | None = None) -> None:
        where = source + (f": case {case}" if case else "") + (f": field {field_!r}" if field_ else "")
        super().__init__(f"{where}: {message}")
        self.source, self.case, self.field = source, case, field_


# --- field types: each checks a JSON value and returns it normalized (tuples -> lists) -------

class _Bad(Exception):
    """A field's value is of the wrong type (the message says what was expected)."""


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _int(minimum=None):
    def check(v):
        if not _is_int(v) or (minimum is not None and v < minimum):
            raise _Bad(f"expected an int{f' >= {minimum}' if minimum is not None else ''}, got {v!r}")
        return int(v)
    return check


def _ints(minimum=None):
    """An int, or a list of ints (one per spatial dimension)."""
    one = _int(minimum)

    def check(v):
        if isinstance(v, (list, tuple)):
            if not v:
                raise _Bad("expected an int or a non-empty list of ints, got []")
            try:
                return [one(e) for e in v]
            except _Bad as exc:
                raise _Bad(f"expected an int or a list of ints: {exc}") from None
        return one(v)
    return check


def _shape(v):
    if not isinstance(v, (list, tuple)) or not all(_is_int(e) and e >= 0 for e in v):
        raise _Bad(f"expected a list of sizes (ints >= 0), got {v!r}")
    return [int(e) for e in v]


def _bool(v):
    if not isinstance(v, bool):
        raise _Bad(f"expected true or false, got {v!r}")
    return v


def _str(v):
    if not isinstance(v, str):
        raise _Bad(f"expected a string, got {v!r}")
    return v


def _choice(*values):
    def check(v):
        if v not in values or isinstance(v, bool):
            raise _Bad(f"expected one of {list(values)}, got {v!r}")
        return v
    return check


def _number(v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
        raise _Bad(f"expected a positive number, got {v!r}")
    return float(v)


def _conv_padding(v):
    """``"SAME"`` and other strings, an int, ints per dimension, or ``[lo, hi]`` pairs."""
    if isinstance(v, str) or _is_int(v):
        return v
    if isinstance(v, (list, tuple)) and v:
        if all(_is_int(e) for e in v):
            return [int(e) for e in v]
        if all(isinstance(e, (list, tuple)) and len(e) == 2 and all(_is_int(i) for i in e) for e in v):
            return [[int(lo), int(hi)] for lo, hi in v]
    raise _Bad(f"expected a string (SAME, SAME_LOWER, VALID), an int, ints per dimension or [lo, hi] "
               f"pairs, got {v!r}")


def _json_value(v):
    """Any JSON value (a layer constructor argument; the layer checks it)."""
    if isinstance(v, tuple):
        return [_json_value(e) for e in v]
    if isinstance(v, list):
        return [_json_value(e) for e in v]
    if isinstance(v, dict):
        return {str(k): _json_value(e) for k, e in v.items()}
    if v is None or isinstance(v, (bool, str)) or (isinstance(v, numbers.Real) and math.isfinite(v)):
        return v
    raise _Bad(f"expected a JSON value, got {v!r}")


def _optional(check):
    def wrapped(v):
        return None if v is None else check(v)
    return wrapped


_WS_SPECS = ("brainstate", "nfnets", "elektronn3", "qiao", "timm_std", "timm_scaled", "bit")

#: Per suite: field -> (check, default). Order = the order of ``params`` (as the Python API's).
FIELDS = {
    "conv": dict(x_shape=(_shape, REQUIRED), w_shape=(_shape, REQUIRED), stride=(_ints(1), 1),
                 padding=(_conv_padding, "SAME"), lhs_dilation=(_ints(1), 1), rhs_dilation=(_ints(1), 1),
                 groups=(_int(1), 1), channel_first=(_bool, False), note=(_str, "")),
    "conv_transpose": dict(x_shape=(_shape, REQUIRED), w_shape=(_shape, REQUIRED), stride=(_ints(1), 1),
                           padding=(_ints(0), 0), output_padding=(_ints(0), 0), dilation=(_ints(1), 1),
                           groups=(_int(1), 1), output_size=(_optional(_shape), None), bias=(_bool, True),
                           channel_first=(_bool, False)),
    "ws": dict(w_shape=(_shape, REQUIRED), spec=(_choice(*_WS_SPECS), REQUIRED), out_axis=(_int(), -1),
               gain=(_bool, True), regime=(_choice("off_clamp", "tiny", "constant"), "off_clamp"),
               eps=(_optional(_number), None)),
}
_LAYER_FIELDS = dict(cls=(_str, REQUIRED), x_shape=(_shape, REQUIRED), mask=(_bool, False))
_LAYER_CLASSES = {
    "brainstate": ("Conv1d", "Conv2d", "Conv3d", "ScaledWSConv1d", "ScaledWSConv2d", "ScaledWSConv3d",
                   "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear", "ScaledWSLinear"),
    "elektronn3": ("WSConv1d", "WSConv2d", "WSConv3d", "WSConvTranspose2d", "WSConvTranspose3d"),
}
# constructor arguments a catalog cannot give: initial values come from the grid, the mask from `mask`
_NOT_ARGUMENTS = {"w_init", "w_mask", "name", "rng", "num_spatial_dims", "behaviour"}
def _bits(v):
    if not _is_int(v) or v not in GRIDS:
        raise _Bad(f"expected one of {sorted(GRIDS)}, got {v!r}")
    return int(v)


# field -> (check, default); the check of ``derivatives`` is _derivatives (_check_field's first branch).
_COMMON: dict[str, tuple[Any, Any]] = dict(bits=(_bits, None), derivatives=(None, None))

#: Short prefixes of swept parameters in generated names (others use their full name).
ABBREVIATIONS = dict(stride="s", padding="p", lhs_dilation="lhs", rhs_dilation="rhs", dilation="d", groups="g",
                     output_padding="op", output_size="os", channel_first="cf", x_shape="x", w_shape="w",
                     bits="b", out_axis="axis", kernel_size="k", out_channels="cout", in_channels="cin",
                     in_size="in", out_size="out", derivatives="der")


def _derivatives(v):
    if not isinstance(v, (list, tuple)) or any(d not in DERIVATIVES for d in v) or len(set(v)) != len(v):
        raise _Bad(f"expected a list of distinct values among {list(DERIVATIVES)} ([] = forward only), got {v!r}")
    return tuple(d for d in DERIVATIVES if d in v)


def _layer_arguments(suite: str, cls: str) -> dict:
    """Constructor arguments of a layer mirror a catalog may give (``b_init``: true/false)."""
    from .. import nn
    params = inspect.signature(getattr(nn, cls)).parameters
    return {k: (_bool if k == "b_init" else _json_value,
                REQUIRED if p.default is inspect.Parameter.empty else None)
            for k, p in params.items() if k not in _NOT_ARGUMENTS}


# --- one entry -> cases ---------------------------------------------------------------------

@dataclass
class _Entry:
    """Where an entry came from, for error messages."""

    source: str
    index: int
    name: str | None

    @property
    def label(self) -> str:
        return f"#{self.index + 1}" + (f" {self.name!r}" if self.name else "")

    def error(self, message: str, field_: str | None = None) -> CatalogError:
        return CatalogError(self.source, message, self.label, field_)


def _fields_of(suite: str, values: dict, where: _Entry) -> dict:
    """The field checks of a suite (layer suites: their class's constructor arguments too)."""
    if suite in FIELDS:
        return FIELDS[suite]
    cls = values.get("cls")
    if cls is None:
        raise where.error("missing (the layer class, e.g. 'Conv2d')", "cls")
    if cls not in _LAYER_CLASSES[suite]:
        raise where.error(f"expected one of {list(_LAYER_CLASSES[suite])}, got {cls!r}", "cls")
    fields = dict(_LAYER_FIELDS)
    if suite == "elektronn3":
        del fields["mask"]                         # elektronn3's layers have no weight mask
        if "Transpose" in cls:
            fields["output_size"] = (_optional(_shape), None)
    for k, spec in _layer_arguments(suite, cls).items():
        fields.setdefault(k, spec)
    return fields


def _check_field(fields: dict, key: str, value, where: _Entry, label: str | None = None):
    label = label or key
    if key == "derivatives":
        check = _derivatives
    elif key in _COMMON:
        check = _COMMON[key][0]
    elif key in fields:
        check = fields[key][0]
    else:
        known = sorted(set(fields) | set(_COMMON) | {"suite", "name", "sweep"})
        raise where.error(f"unknown key (known keys: {', '.join(known)})", label)
    try:
        return check(value)
    except _Bad as exc:
        raise where.error(str(exc), label) from None


def _params(suite: str, values: dict, fields: dict, where: _Entry) -> dict:
    """``Case.params`` from checked values: every field with its default, as the Python API has them."""
    for k, (_, default) in fields.items():
        if default is REQUIRED and k not in values:
            raise where.error("missing (required)", k)
    if suite in FIELDS:
        params = {k: values.get(k, default) for k, (_, default) in fields.items()}
        if suite == "conv" and not params["note"]:
            del params["note"]
        return params
    library_fields = ("cls", "x_shape", "mask", "output_size")
    params = dict(library=suite, cls=values["cls"], x_shape=values["x_shape"], mask=values.get("mask", False),
                  kwargs={k: v for k, v in values.items() if k not in library_fields})
    if values.get("output_size") is not None:
        params["output_size"] = values["output_size"]
    return params


def _validate_geometry(case: Case) -> None:
    """Raise the operation's ValueError/TypeError if the case cannot be evaluated."""
    p = case.params
    if case.suite in ("conv", "conv_transpose"):
        from .evaluate import output_shape
        output_shape(case)
    elif case.suite == "ws":
        from .evaluate import variant_of
        shape = p["w_shape"]
        if not shape or not -len(shape) <= p["out_axis"] < len(shape):
            raise ValueError(f"out_axis={p['out_axis']}: out of range for w_shape={shape}")
        n = math.prod(shape) // shape[p["out_axis"]] if shape[p["out_axis"]] else 0
        ddof = variant_of(p["spec"], p["eps"]).ddof
        if n - ddof <= 0:
            raise ValueError(f"w_shape={shape}: weight standardization with ddof={ddof} needs more than "
                             f"{ddof} element(s) per output channel, got {n}")
    else:
        _validate_layer(p)


def _validate_layer(p: dict) -> None:
    """Build the layer mirror from the constructor arguments and run its core on zeros."""
    import numpy as np

    from .. import init, nn
    from .layer_cases import layer_math
    kw = dict(p["kwargs"])
    if "b_init" in kw:
        kw["b_init"] = init.ZeroInit() if kw["b_init"] else None
    layer = getattr(nn, p["cls"])(**kw, rng=0)
    m = layer_math(p)
    x_shape = tuple(p["x_shape"])
    if p["library"] == "brainstate":
        in_size = tuple(layer.in_size)
        batch_dims = "any batch sizes" if p["cls"].endswith("Linear") else "optionally a batch size"
        if x_shape[len(x_shape) - len(in_size):] != in_size or (
                not p["cls"].endswith("Linear") and len(x_shape) - len(in_size) not in (0, 1)):
            raise ValueError(f"x_shape={list(x_shape)}: expected in_size {list(in_size)} after {batch_dims}")
    elif len(x_shape) != len(m.weight_shape) or x_shape[1] != layer.in_channels:
        raise ValueError(f"x_shape={list(x_shape)}: expected (N, C_in={layer.in_channels}, *spatial) with "
                         f"{len(m.weight_shape) - 2} spatial sizes")
    m.core(np.zeros(x_shape), np.zeros(m.weight_shape))


def _value_label(v) -> str:
    """A parameter value as a name component: 2, SAME, 2x1, 1,2x0,0 (pairs), 1/0 for booleans."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return "x".join(",".join(_value_label(i) for i in e) if isinstance(e, (list, tuple)) else _value_label(e)
                        for e in v) or "empty"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _expand(raw: dict, where: _Entry, defaults: dict, strict: bool, notes: list) -> list:
    """The cases of one entry: one, or the checked product of its sweep."""
    if not isinstance(raw, dict):
        raise where.error(f"expected a table of fields, got {type(raw).__name__}")
    suite = raw.get("suite")
    if suite not in SUITES:
        raise where.error(f"expected one of {list(SUITES)}, got {suite!r}", "suite")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise where.error(f"expected a name of letters, digits and _ . , + = - (segments joined by /), "
                          f"got {name!r}", "name")
    sweep = raw.get("sweep", {})
    if not isinstance(sweep, dict):
        raise where.error(f"expected a table of lists, got {sweep!r}", "sweep")
    fixed = {k: v for k, v in raw.items() if k not in ("suite", "name", "sweep")}
    layer_cls = fixed.get("cls", next((g.get("cls") for vals in sweep.values() if isinstance(vals, list)
                                       for g in vals if isinstance(g, dict)), None))
    fields = _fields_of(suite, {"cls": layer_cls} if suite not in FIELDS else {}, where)
    if suite not in FIELDS and "cls" in sweep:
        raise where.error("the layer class cannot be swept (give one entry per class)", "sweep.cls")
    values = {k: _check_field(fields, k, v, where) for k, v in fixed.items()}
    axes = []                                   # per sweep key: [(label, {field: value}), ...]
    for key, options in sweep.items():
        if key in values:
            raise where.error("given both as a value and in sweep", f"sweep.{key}")
        if not isinstance(options, list) or not options:
            raise where.error(f"expected a non-empty list of values to sweep over, got {options!r}", f"sweep.{key}")
        if all(isinstance(o, dict) for o in options):          # a group: several fields per value
            axis = []
            for i, group in enumerate(options):
                label = group.get("label", f"{key}{i}")
                if not isinstance(label, str) or not _NAME_RE.match(label) or "/" in label:
                    raise where.error(f"expected a label of letters, digits and _ . , + = -, got {label!r}",
                                      f"sweep.{key}[{i}].label")
                checked = {k: _check_field(fields, k, v, where, f"sweep.{key}[{i}].{k}")
                           for k, v in group.items() if k != "label"}
                clash = sorted(set(checked) & set(values))
                if clash:
                    raise where.error("given both as a value and in sweep", f"sweep.{key}[{i}].{clash[0]}")
                axis.append((label, checked))
        else:
            prefix = ABBREVIATIONS[key] if key in ABBREVIATIONS else key
            axis = [(prefix + _value_label(v), {key: _check_field(fields, key, v, where, f"sweep.{key}")})
                    for v in options]
        axes.append(axis)
    combos = list(itertools.product(*axes)) if axes else [()]
    cases, skipped = [], []
    for combo in combos:
        merged = dict(values)
        for _, chosen in combo:
            merged.update(chosen)
        case_name = name + ("/" + "_".join(label for label, _ in combo) if combo else "")
        if not _NAME_RE.match(case_name):
            raise where.error(f"a swept value gives the name {case_name!r}, which has characters other than "
                              "letters, digits and _ . , + = -", "sweep")
        bits = merged.pop("bits", None) or defaults["bits"]
        derivatives = merged.pop("derivatives", None)
        derivatives = defaults["derivatives"] if derivatives is None else derivatives
        case = Case(f"{suite}/{case_name}", suite, _params(suite, merged, fields, where), bits, derivatives)
        try:
            _validate_geometry(case)
        except (ValueError, TypeError) as exc:
            if not combo or strict:
                what = "" if not combo else f" (combination {case_name!r}; --strict refuses invalid combinations)"
                raise where.error(f"impossible case{what}: {exc}") from None
            skipped.append((case_name, str(exc)))
            continue
        cases.append(case)
    if skipped:
        reasons: dict[str, list[str]] = {}
        for n, why in skipped:
            reasons.setdefault(why, []).append(n.rsplit("/", 1)[-1])
        detail = "; ".join(f"{', '.join(ns)}: {why}" for why, ns in reasons.items())
        notes.append(f"{where.source}: case {where.label}: skipped {len(skipped)} of {len(combos)} "
                     f"combinations ({detail})")
    if not cases:
        raise where.error(f"the sweep expands to nothing: all {len(combos)} combinations are invalid "
                          f"({skipped[0][1]})", "sweep")
    return cases


# --- the catalog ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Catalog:
    """Expanded, validated cases (sorted by name) and catalog-wide settings."""

    cases: tuple
    source: str
    name: str = ""
    description: str = ""
    encoding: str = "float64"
    notes: tuple = field(default=(), compare=False)

    @property
    def sha256(self) -> str:
        return catalog_hash(self.cases, self.encoding)

    def by_name(self) -> dict:
        return {c.name: c for c in self.cases}


def catalog_hash(cases: Iterable[Case], encoding: str = "float64") -> str:
    """SHA-256 of the canonical JSON of what determines the store's bytes: every case's name,
    suite, parameters, grid and derivatives (sorted by name) and the encoding. Comments, key
    order, TOML vs JSON and the order of entries do not change it."""
    doc = dict(encoding=encoding, cases=[dict(name=c.name, suite=c.suite, params=c.params, bits=c.bits,
                                              derivatives=list(c.derivatives))
                                         for c in sorted(cases, key=lambda c: c.name)])
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def parse_catalog(doc: dict, source: str, strict: bool = False) -> Catalog:
    """Expand and validate a parsed catalog document (the TOML/JSON data model)."""
    top = _Entry(source, -1, None)
    if not isinstance(doc, dict):
        raise CatalogError(source, f"expected a table at the top level, got {type(doc).__name__}")
    for key in doc:
        if key not in _TOP_KEYS:
            raise CatalogError(source, f"unknown top-level key (known: {', '.join(_TOP_KEYS)})", None, key)
    for key in ("name", "description"):
        if not isinstance(doc.get(key, ""), str):
            raise CatalogError(source, f"expected a string, got {doc[key]!r}", None, key)
    encoding = doc.get("encoding", "float64")
    if encoding not in ENCODINGS:
        raise CatalogError(source, f"expected one of {list(ENCODINGS)}, got {encoding!r}", None, "encoding")
    defaults = dict(bits=DEFAULT_BITS, derivatives=DEFAULT_DERIVATIVES)
    if "bits" in doc:
        defaults["bits"] = _check_field({}, "bits", doc["bits"], top)
    if "derivatives" in doc:
        defaults["derivatives"] = _check_field({}, "derivatives", doc["derivatives"], top)
    entries = doc.get("case", [])
    if not isinstance(entries, list) or not entries:
        raise CatalogError(source, "expected at least one [[case]] entry", None, "case")
    cases: list[Case] = []
    notes: list[str] = []
    seen: dict[str, str] = {}
    for i, raw in enumerate(entries):
        where = _Entry(source, i, raw.get("name") if isinstance(raw, dict) else None)
        for case in _expand(raw, where, defaults, strict, notes):
            if case.name in seen:
                raise where.error(f"duplicate case name {case.name!r} (also produced by case {seen[case.name]})",
                                  "name")
            seen[case.name] = where.label
            cases.append(case)
    return Catalog(tuple(sorted(cases, key=lambda c: c.name)), source, doc.get("name", ""),
                   doc.get("description", ""), encoding, tuple(notes))


def load_catalog(path: str | os.PathLike[str], strict: bool = False) -> Catalog:
    """Read a catalog file (``.toml`` with :mod:`tomllib`, or ``.json``) and expand it."""
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CatalogError(source, f"cannot be read ({exc.strerror or exc})") from None
    try:
        if path.suffix == ".toml":
            doc = tomllib.loads(data.decode("utf-8"))
        elif path.suffix == ".json":
            doc = json.loads(data.decode("utf-8"))
        else:
            raise CatalogError(source, "expected a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(source, f"not valid {path.suffix[1:].upper()}: {exc}") from None
    if isinstance(doc, dict) and doc.get("name") == BUILTIN_NAME:
        raise CatalogError(source, f"{BUILTIN_NAME!r} is reserved for the built-in catalog", None, "name")
    catalog = parse_catalog(doc, source, strict)
    if not catalog.name:
        catalog = Catalog(catalog.cases, source, path.stem, catalog.description, catalog.encoding, catalog.notes)
    return catalog


# --- writing a catalog back as TOML (one entry per case) ------------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)                     # a TOML basic string is a JSON string for our names
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(e) for e in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(e)}" for k, e in v.items()) + "}"
    return str(v)


def _entry_of(case: Case) -> dict:
    """The fields of one case as a catalog entry (defaults and ``None`` left out: TOML has no null)."""
    p = dict(case.params)
    if case.suite in FIELDS:
        values = {k: v for k, v in p.items() if v is not None and FIELDS[case.suite][k][1] != v}
        for k, (_, default) in FIELDS[case.suite].items():
            if default is REQUIRED:
                values[k] = p[k]
    else:
        values = dict(cls=p["cls"], x_shape=p["x_shape"])
        if p.get("mask"):
            values["mask"] = True
        if p.get("output_size") is not None:
            values["output_size"] = p["output_size"]
        values.update({k: v for k, v in p["kwargs"].items() if v is not None})
    return values


def dump_toml(catalog: Catalog) -> str:
    """The catalog as a TOML catalog file, one ``[[case]]`` per case (no sweeps); loading it gives
    the same cases and the same :func:`catalog_hash`."""
    lines = []
    if catalog.name:
        lines.append(f"name = {_toml_value(catalog.name)}")
    if catalog.encoding != "float64":
        lines.append(f"encoding = {_toml_value(catalog.encoding)}")
    for case in catalog.cases:
        suite, name = case.name.split("/", 1)
        lines += ["", "[[case]]", f"suite = {_toml_value(suite)}", f"name = {_toml_value(name)}"]
        if case.bits != DEFAULT_BITS:
            lines.append(f"bits = {case.bits}")
        if tuple(case.derivatives) != DEFAULT_DERIVATIVES:
            lines.append(f"derivatives = {_toml_value(list(case.derivatives))}")
        lines += [f"{k} = {_toml_value(v)}" for k, v in _entry_of(case).items()]
    return "\n".join(lines) + "\n"
