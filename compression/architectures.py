"""Names a .dcz file can use to say which model its tensors belong to.

A file stores its architecture as ``{"name": ..., "kwargs": {...}}``; loading it without a model
instance builds one from this registry. Nothing is imported or executed by a name the file
gives: a name either is registered here (``register_architecture``), or is provided by an
installed package through the ``dcsweep.architectures`` entry-point group (dcsweep's runner
provides its models there, so a file it wrote loads in a fresh interpreter from
``dcsweep.compression`` alone), or is ``torchvision:<model>`` for a torchvision model builder
(built without pretrained weights); otherwise loading asks for a model instance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import torch.nn as nn

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}
TORCHVISION_PREFIX = "torchvision:"
#: Installed packages list ``name = "module:function"`` here; the function returns a mapping
#: from architecture name to builder. Read only when a file names an unregistered architecture.
ENTRY_POINT_GROUP = "dcsweep.architectures"


def register_architecture(name: str, builder: Builder | None = None) -> Any:
    """Register ``builder(**kwargs) -> nn.Module`` under ``name``; usable as a decorator."""
    if not isinstance(name, str) or not name or name.startswith(TORCHVISION_PREFIX):
        raise ValueError(f"architecture names must be non-empty and not start with "
                         f"{TORCHVISION_PREFIX!r}; got {name!r}")

    def add(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
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
    record = {"name": arch["name"], "kwargs": dict(arch.get("kwargs") or {})}
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"arch kwargs must be plain JSON values: {exc}") from None
    return record


def model_arch(model: nn.Module, arch: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The architecture record a file of ``model`` holds: ``arch``, else ``model.dcz_arch``."""
    return check_arch(arch if arch is not None else getattr(model, "dcz_arch", None))


def build_architecture(arch: Mapping[str, Any] | None) -> nn.Module:
    if arch is None:
        raise ValueError("the file names no architecture; pass model= to load it into")
    name, kwargs = arch["name"], dict(arch.get("kwargs") or {})
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        short = name[len(TORCHVISION_PREFIX):]
        if short not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision model {short!r}; see torchvision.models.list_models()")
        return torchvision.models.get_model(short, weights=None, **kwargs)
    if name not in _REGISTRY:
        _load_providers()
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown architecture {name!r}; registered: {list_architectures()} "
            f"(or '{TORCHVISION_PREFIX}<model>'); register it with register_architecture, or pass model="
        )
    return _REGISTRY[name](**kwargs)


def _load_providers() -> None:
    """Register what installed packages provide in ENTRY_POINT_GROUP (names already registered
    in this process keep their builder)."""
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            provided = point.load()()
        except Exception as exc:  # a broken provider must not hide which one it was
            raise ValueError(f"architecture provider {point.name} ({point.value}) failed to load: {exc}") from exc
        for name, builder in provided.items():
            _REGISTRY.setdefault(name, builder)
