"""Frozen config dataclasses that round-trip through plain dicts, and per-layer rules.

Every config of the library (``MagnitudePrune``, ``KMeansShare``) is a frozen dataclass built on
:class:`Config`: ``Config.from_dict(cfg.to_dict()) == cfg`` holds, unknown keys are refused with
the list of valid ones, and values are validated with exceptions that name the field, the value
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NoReturn, TypeVar, cast

import torch.nn as nn

C = TypeVar("C", bound="Config")
_MISSING: Any = object()
V = TypeVar("V")

#: Module types whose ``weight`` the library prunes and shares by default: convolutions
#: (transposed ones too), fully connected layers and embedding tables. Each reads its weight
#: through ``self.weight`` in forward, which is what a parametrization needs.
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd,)
FC_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,)
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
)


class Config:
    """Mixin for frozen dataclasses: dict round trip and validation helpers.

    Subclasses outside this package (the runner's ``CycleConfig``) reuse the machinery with their
    own error type, noun and message shape, so a setting is validated once, with one set of
    limits, wherever it is given.
    """

    error: ClassVar[type[ValueError]] = ValueError
    noun: ClassVar[str] = "field"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cast(Any, self)):
            value = getattr(self, f.name)
            if f.name == "layers":
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        if not isinstance(data, Mapping):
            raise cls.error(f"{cls.__name__}.from_dict needs a mapping; got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cast(Any, cls))]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise cls.error(f"{cls._owner()}unknown {cls.noun}(s) {unknown}; valid {cls.noun}s are {valid}")
        return cls(**data)

    @classmethod
    def _owner(cls) -> str:
        return f"{cls.__name__}: "

    # -- helpers for __post_init__ of frozen subclasses --------------------------------------
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _describe(self, name: str, value: Any, allowed: str) -> str:
        return f"{type(self).__name__}.{name} must be {allowed}; got {value!r}"

    def _fail(self, name: str, value: Any, allowed: str) -> NoReturn:
        raise self.error(self._describe(name, value, allowed))

    def _integer(self, name: str, lo: int, hi: int | None = None, value: Any = _MISSING) -> None:
        """``value`` (default: the field ``name``) is an int in [lo, hi] (no upper bound if None)."""
        v = getattr(self, name) if value is _MISSING else value
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            self._fail(name, v, f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}")

    def _number(self, name: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
        v = getattr(self, name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            self._fail(name, v, f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")

    def _choice(self, name: str, choices: Sequence[str]) -> None:
        if getattr(self, name) not in choices:
            self._fail(name, getattr(self, name), f"one of {list(choices)}")


class Rules(Mapping[str, V]):
    """Per-layer rules: an ordered, immutable, hashable mapping from module name or glob pattern
    to a value. Order matters: the first matching pattern wins."""

    __slots__ = ("_items",)

    def __init__(self, rules: Mapping[str, V] | Iterable[tuple[str, V]] | None = None) -> None:
        items = rules.items() if isinstance(rules, Mapping) else (rules or ())
        checked = []
        for pattern, value in items:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"layer patterns must be non-empty strings; got {pattern!r}")
            checked.append((pattern, value))
        self._items: tuple[tuple[str, V], ...] = tuple(checked)

    def __getitem__(self, key: str) -> V:
        for pattern, value in self._items:
            if pattern == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (pattern for pattern, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and list(self.items()) == list(other.items())

    def __repr__(self) -> str:
        return repr(dict(self._items))


def match_rule(name: str, rules: Mapping[str, V], default: Any = _MISSING) -> Any:
    """The value for module ``name``: an exact name wins, else the first matching glob."""
    if name in rules:
        return rules[name]
    for pattern, value in rules.items():
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return default


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(p == name or fnmatch.fnmatchcase(name, p) for p in patterns)


def layer_kind(module: nn.Module) -> str | None:
    """``"conv"``, ``"fc"`` or ``"embedding"`` for the layers whose weights Deep Compression
    targets; None for every other module."""
    if isinstance(module, CONV_TYPES):
        return "conv"
    if isinstance(module, FC_TYPES):
        return "fc"
    if isinstance(module, EMBEDDING_TYPES):
        return "embedding"
    return None


def unmatched_rules(rules: Iterable[str], names: Iterable[str]) -> list[str]:
    """Patterns that select no module: almost always a typo the user wants to hear about."""
    names = list(names)
    return [p for p in rules if not matches_any_name(p, names)]


def matches_any_name(pattern: str, names: Iterable[str]) -> bool:
    return any(pattern == n or fnmatch.fnmatchcase(n, pattern) for n in names)


def require_matches(owner: str, field: str, patterns: Iterable[str], names: Sequence[str]) -> None:
    """Raise ValueError naming every pattern of ``field`` that selects none of ``names``."""
    unmatched = unmatched_rules(patterns, names)
    if unmatched:
        raise ValueError(f"{owner}.{field} pattern(s) {unmatched} match no layer of the model; "
                         f"its layers are {list(names)}")
