"""Names a .dcz file can use to say which model its tensors belong to.

A file stores its architecture as ``{"name": ..., "kwargs": {...}}``; loading it without a model
instance builds one from this registry. A file is untrusted input, so nothing it names is
imported, downloaded or executed: the name must be registered here (``register_architecture``)
or by an installed package through the ``dcsweep.architectures`` entry-point group (dcsweep's
runner provides its models there, so a file it wrote loads in a fresh interpreter from
``dcsweep.compression`` alone), and the keyword arguments must be ones the registration allows,
with integer values only (no strings, so no ``weights="DEFAULT"`` and no paths). Anything else
asks for a model instance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

Builder = Callable[..., nn.Module]
#: Installed packages list ``name = "module:function"`` here; the function returns a mapping
#: from architecture name to Architecture. Read only when a file names an unregistered name.
ENTRY_POINT_GROUP = "dcsweep.architectures"
#: The largest magnitude of an integer keyword argument a file may pass (and of a list's length).
MAX_KWARG = 1 << 31


@dataclass(frozen=True)
class Architecture:
    """A builder and the keyword arguments a file may pass it (integers or lists of them)."""

    builder: Builder
    kwargs: tuple[str, ...] = ()


_REGISTRY: dict[str, Architecture] = {}


def register_architecture(name: str, builder: Builder | None = None, *, kwargs: tuple[str, ...] = ()) -> Any:
    """Register ``builder(**kw) -> nn.Module`` under ``name``; usable as a decorator.

    ``kwargs`` names the keyword arguments a file may give the builder; their values must be
    integers or lists of integers (a file can never pass a string, such as a weights name).
    The builder must also work under ``torch.device("meta")``: a file's tensors are checked
    against the model built there before any memory is given to them."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"architecture names must be non-empty strings; got {name!r}")
    if isinstance(kwargs, str) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"kwargs must be a tuple of keyword names; got {kwargs!r}")

    def add(fn: Builder) -> Builder:
        _REGISTRY[name] = Architecture(fn, tuple(kwargs))
        return fn

    return add(builder) if builder is not None else add


def list_architectures() -> list[str]:
    return sorted(_REGISTRY)


def check_arch(arch: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A JSON-safe ``{"name", "kwargs"}`` record, or None."""
    if arch is None:
        return None
    if not isinstance(arch, Mapping) or not isinstance(arch.get("name"), str):
        raise ValueError(f"arch must be a mapping with a string 'name' and optional 'kwargs'; got {arch!r}")
    unknown = sorted(set(arch) - {"name", "kwargs"})
    if unknown:
        raise ValueError(f"arch has unknown key(s) {unknown}; valid keys are ['kwargs', 'name']")
    kwargs = arch.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"arch kwargs must be a mapping; got {type(kwargs).__name__}")
    record = {"name": arch["name"], "kwargs": dict(kwargs)}
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"arch kwargs must be plain JSON values: {exc}") from None
    return record


def model_arch(model: nn.Module, arch: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The architecture record a file of ``model`` holds: ``arch``, else ``model.dcz_arch``."""
    return check_arch(arch if arch is not None else getattr(model, "dcz_arch", None))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -MAX_KWARG <= v <= MAX_KWARG


def _allowed_kwargs(name: str, entry: Architecture, kwargs: Any) -> dict[str, Any]:
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"architecture {name!r}: kwargs must be a mapping; got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        if key not in entry.kwargs:
            raise ValueError(f"architecture {name!r} takes no keyword {str(key)[:64]!r} from a file; "
                             f"allowed: {list(entry.kwargs)}")
        ok = _is_int(value) or (isinstance(value, list) and len(value) <= 64 and all(map(_is_int, value)))
        if not ok:
            raise ValueError(f"architecture {name!r}: keyword {key!r} must be an integer or a list of at "
                             f"most 64 integers; got {str(value)[:64]}")
    return dict(kwargs)


def lookup_architecture(arch: Mapping[str, Any] | None) -> tuple[Builder, dict[str, Any]]:
    """The registered builder of a file's architecture record and the kwargs it may pass;
    ValueError for anything else. Builds nothing."""
    if arch is None:
        raise ValueError("the file names no architecture; pass model= to load it into")
    if not isinstance(arch, Mapping) or not isinstance(arch.get("name"), str):
        raise ValueError(f"the file's architecture record is not valid: {str(arch)[:200]}")
    name = arch["name"]
    if name not in _REGISTRY:
        _load_providers()
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name[:100]!r}; registered: {list_architectures()}; "
                         f"register it with register_architecture, or pass model=")
    entry = _REGISTRY[name]
    return entry.builder, _allowed_kwargs(name, entry, arch.get("kwargs") or {})


def build_architecture(arch: Mapping[str, Any] | None, device: torch.device | str | None = None) -> nn.Module:
    """The model a file's architecture record names, built by its registered builder (on
    ``device``, e.g. ``"meta"`` to see its tensors without memory)."""
    builder, kwargs = lookup_architecture(arch)
    if device is None:
        return builder(**kwargs)
    with torch.device(device):
        return builder(**kwargs)


def _load_providers() -> None:
    """Register what installed packages provide in ENTRY_POINT_GROUP (names already registered
    in this process keep their builder)."""
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            provided = point.load()()
        except Exception as exc:  # a broken provider must not hide which one it was
            raise ValueError(f"architecture provider {point.name} ({point.value}) failed to load: {exc}") from exc
        for name, entry in provided.items():
            if not isinstance(entry, Architecture):
                raise ValueError(f"architecture provider {point.name} gave {name!r} a "
                                 f"{type(entry).__name__}; providers give Architecture(builder, kwargs)")
            _REGISTRY.setdefault(name, entry)
