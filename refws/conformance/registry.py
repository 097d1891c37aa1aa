"""Finding a backend: the built-in adapters by name, anyone's by ``module:attribute``."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from collections.abc import Iterable
from typing import Any

from ..tolerance import PrecisionLike
from .protocol import Adapter

__all__ = ["BUILTIN", "load_backend", "parse_options", "BackendLoadError"]

# The one table of built-in adapters: name -> "module:factory". Each imports its framework lazily.
BUILTIN = {
    "torch": "refws.backends.torch:TorchBackend",
    "jax": "refws.backends.jax:JaxBackend",
    "onnxruntime": "refws.backends.onnx:OnnxRuntimeBackend",
    "onnx-reference": "refws.backends.onnx:OnnxReferenceBackend",
    "tensorflow": "refws.backends.tensorflow:TensorflowBackend",
    "lax-reference": "refws.backends.lax_reference:LaxReferenceBackend",
    "elektronn3": "refws.backends.elektronn3:Elektronn3Backend",
    "brainstate": "refws.backends.brainstate:BrainstateBackend",
    "timm": "refws.backends.timm:TimmBackend",
}


class BackendLoadError(Exception):
    """The backend cannot be found, imported or constructed (the message says which and why)."""


def parse_options(items: Iterable[str] | None) -> dict[str, Any]:
    """``["device=cuda", "lax_precision=default"]`` -> dict; values parsed as JSON where they parse."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--opt {item!r}: expected KEY=VALUE with KEY a Python identifier")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load_backend(spec: str, precision: PrecisionLike | None = None, **options: Any) -> Adapter:
    """An adapter from a built-in name (:data:`BUILTIN`) or ``"package.module:attribute"``.

    A class or other callable is called with ``precision=`` (when given) and ``options``; an
    object that is already an adapter is returned as it is (then neither may be given). The
    current directory is importable, so ``refws check my_backend:Backend`` finds ``./my_backend.py``.
    """
    target = BUILTIN.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise BackendLoadError(f"backend {spec!r}: expected one of {sorted(BUILTIN)} or 'package.module:Attribute'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendLoadError(f"backend {spec!r}: cannot import {module_name!r} ({exc})") from exc
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise BackendLoadError(f"backend {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    kwargs = dict(options)
    if precision is not None:
        kwargs["precision"] = precision
    if inspect.isclass(obj) or (callable(obj) and not _looks_like_adapter(obj)):
        try:
            return obj(**kwargs)
        except ImportError as exc:
            raise BackendLoadError(f"backend {spec!r}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise BackendLoadError(f"backend {spec!r}: cannot construct it with {kwargs}: {exc}") from exc
    if kwargs:
        raise BackendLoadError(
            f"backend {spec!r} is an adapter object, not a factory: it takes no options ({sorted(kwargs)} given)"
        )
    return obj


def _looks_like_adapter(obj: object) -> bool:
    from .protocol import METHODS

    return any(callable(getattr(obj, m, None)) for m in METHODS)
