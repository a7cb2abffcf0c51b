"""Frozen config dataclasses that round-trip through plain dicts, and per-layer rules.

Every config of the library (``MagnitudePrune``, ``KMeansShare``) is a frozen dataclass built on
:class:`Config`: ``Config.from_dict(cfg.to_dict()) == cfg`` holds, unknown keys are refused with
the list of valid ones, and values are validated with exceptions that name the field, the value
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import torch.nn as nn

C = TypeVar("C", bound="Config")
V = TypeVar("V")

#: Module types whose ``weight`` the library prunes and shares by default.
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
FC_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,)
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
)


class Config:
    """Mixin for frozen dataclasses: dict round trip and validation helpers."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if field.name == "layers":
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict needs a mapping; got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; valid fields are {valid}")
        return cls(**data)

    # -- helpers for __post_init__ of frozen subclasses --------------------------------------
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _fail(self, name: str, value: Any, allowed: str) -> None:
        raise ValueError(f"{type(self).__name__}.{name} must be {allowed}; got {value!r}")


def freeze_rules(rules: Mapping[str, V] | Iterable[tuple[str, V]] | None) -> tuple[tuple[str, V], ...]:
    """Per-layer rules as an ordered tuple of (name or glob pattern, value) pairs."""
    if rules is None:
        return ()
    items = rules.items() if isinstance(rules, Mapping) else rules
    out = []
    for item in items:
        pattern, value = item
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"layer patterns must be non-empty strings; got {pattern!r}")
        out.append((pattern, value))
    return tuple(out)


_MISSING = object()


def match_rule(name: str, rules: tuple[tuple[str, V], ...], default: Any = _MISSING) -> Any:
    """The value for module ``name``: an exact name wins, else the first matching glob."""
    for pattern, value in rules:
        if pattern == name:
            return value
    for pattern, value in rules:
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return default


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(p == name or fnmatch.fnmatchcase(name, p) for p in patterns)


def layer_kind(module: nn.Module) -> str | None:
    """``"conv"`` or ``"fc"`` for the layers whose weights Deep Compression targets."""
    if isinstance(module, CONV_TYPES):
        return "conv"
    if isinstance(module, FC_TYPES):
        return "fc"
    return None


def unmatched_rules(rules: Iterable[str], names: Iterable[str]) -> list[str]:
    """Patterns that select no module: almost always a typo the user wants to hear about."""
    names = list(names)
    return [p for p in rules if not any(p == n or fnmatch.fnmatchcase(n, p) for n in names)]
