"""The configuration's vocabulary: keys declared once, with their kind, bounds and default.

A :class:`Group` lists the keys of one config group (``faults``, ``sim``, ...); each
:class:`Key` names the :class:`Kind` of value it takes (number, vector, choice, ...), its
default (usually read off the library Module it configures, see :func:`default_of`) and a
line of documentation. From these declarations come the validation of a composed
configuration (:meth:`Group.read`: one :class:`ConfigError` line naming the key), the
defaults Hydra composes (:func:`defaults_tree`, stored in Hydra's ConfigStore) and the key
reference (:func:`key_reference`). The groups themselves are declared in
:mod:`descent_opt.config`, next to the builders of the Modules they configure.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """A configuration value that is not allowed; ``str()`` is one line naming the key."""

    def __init__(self, key: str, allowed: str, value: Any = None):
        self.key = key
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{key}: must be {allowed}{shown}")


REQUIRED = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()


def default_of(cls: type, field: str) -> Any:
    """The default of ``cls``'s dataclass field ``field`` (a library Module): the value a
    key configuring that field takes when the configuration leaves it out."""
    (f,) = (f for f in dataclasses.fields(cls) if f.name == field)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


def _listed(value):
    return list(value) if isinstance(value, tuple) else value


def yaml_text(value: Any) -> str:
    """``value`` as it is written in a YAML file or on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_text(x) for x in value) + "]"
    if isinstance(value, str):
        return value or "''"
    return repr(value)


class Kind:
    """What a key accepts: :meth:`check` returns the value in library form or raises
    :class:`ConfigError`; :meth:`show` gives a library value in configuration form."""

    allowed = "any value"

    def check(self, key: str, value: Any) -> Any:
        return value

    def show(self, value: Any) -> Any:
        return _listed(value)


@dataclasses.dataclass(frozen=True)
class Number(Kind):
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    integer: bool = False
    hi_open: bool = False

    @property
    def _upper(self) -> str:
        return f"< {self.hi}" if self.hi_open else f"<= {self.hi}"

    @property
    def allowed(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.lo is None:
            return kind if self.hi is None else f"{kind} {self._upper}"
        bound = f"> {self.lo}" if self.lo_open else f">= {self.lo}"
        return f"{kind} {bound}" + (f" and {self._upper}" if self.hi is not None else "")

    def check(self, key, v):
        kind = "an integer" if self.integer else "a number"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(key, kind, v)
        if self.integer and int(v) != v:
            raise ConfigError(key, kind, v)
        if not math.isfinite(v):
            raise ConfigError(key, "a finite " + ("integer" if self.integer else "number"), v)
        lo, hi = self.lo, self.hi
        if lo is not None and (v <= lo if self.lo_open else v < lo):
            raise ConfigError(key, self.allowed, v)
        if hi is not None and (v >= hi if self.hi_open else v > hi):
            raise ConfigError(key, self.allowed if self.hi_open else f"{kind} <= {hi}", v)
        return int(v) if self.integer else float(v)


@dataclasses.dataclass(frozen=True)
class Vector(Kind):
    length: int = 3
    lo: float | None = None

    @property
    def allowed(self) -> str:
        bound = "" if self.lo is None else f" >= {self.lo}"
        return f"a list of {self.length} numbers{bound}"

    def check(self, key, v):
        n = self.length
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != n:
            raise ConfigError(key, f"a list of {n} numbers", v)
        out = []
        for x in v:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise ConfigError(key, f"a list of {n} finite numbers", v)
            if self.lo is not None and x < self.lo:
                raise ConfigError(key, f"a list of {n} numbers >= {self.lo}", v)
            out.append(float(x))
        return tuple(out)


@dataclasses.dataclass(frozen=True)
class Range(Kind):
    """``[low, high]``: the span a fault parameter is drawn from."""

    lo: float = 0.0
    hi: float | None = None

    @property
    def allowed(self) -> str:
        return "[low, high] with low <= high" + (f" <= {self.hi}" if self.hi else "")

    def check(self, key, v):
        a, b = Vector(2, self.lo).check(key, v)
        if a > b or (self.hi is not None and b > self.hi):
            raise ConfigError(key, self.allowed, [a, b])
        return (a, b)


@dataclasses.dataclass(frozen=True)
class Choice(Kind):
    options: tuple[str, ...]

    @property
    def allowed(self) -> str:
        return "one of " + ", ".join(self.options)

    def check(self, key, v):
        if isinstance(v, bool) or v not in self.options:
            raise ConfigError(key, self.allowed, v)
        return v


class Flag(Kind):
    allowed = "true or false"

    def check(self, key, v):
        if not isinstance(v, bool):
            raise ConfigError(key, self.allowed, v)
        return v


@dataclasses.dataclass(frozen=True)
class Names(Kind):
    """A list of distinct names, each one of ``options`` (null: none)."""

    options: tuple[str, ...]
    what: str

    @property
    def allowed(self) -> str:
        return f"a list of {self.what}, each one of " + ", ".join(self.options)

    def check(self, key, v):
        if v is None:
            return ()
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
            raise ConfigError(key, self.allowed, v)
        if any(n not in self.options for n in v) or len(set(v)) != len(v):
            raise ConfigError(key, self.allowed + " (no repeats)", list(v))
        return tuple(v)


@dataclasses.dataclass(frozen=True)
class OrNone(Kind):
    """``kind``, or one of ``words`` (and null) for None; None is shown as ``words[0]``."""

    kind: Kind
    words: tuple[Any, ...] = (None,)

    @property
    def allowed(self) -> str:
        words = [yaml_text(w) for w in self.words if w != ""]
        return f"{self.kind.allowed}, or {' or '.join(words)}"

    def check(self, key, v):
        if v is None or any(v == w and type(v) is type(w) for w in self.words):
            return None
        return self.kind.check(key, v)

    def show(self, value):
        return self.words[0] if value is None else self.kind.show(value)


@dataclasses.dataclass(frozen=True)
class Key:
    """One configuration key: its kind, its default (in library form; :data:`REQUIRED`: no
    default) and what it means."""

    name: str
    kind: Kind
    default: Any = REQUIRED
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class Group:
    """The keys of one config group (``name`` "" for the top level)."""

    name: str
    keys: tuple[Key, ...]
    doc: str = ""

    def key(self, k: str) -> str:
        return f"{self.name}.{k}" if self.name else k

    def read(self, cfg: Mapping, groups: Sequence[str] = ()) -> dict[str, Any]:
        """This group's values in ``cfg`` (a composed configuration), checked, in library
        form; missing keys take their defaults; an unknown key is refused (at the top level,
        names in ``groups`` are known)."""
        data = cfg.get(self.name, {}) if self.name else cfg
        if not isinstance(data, Mapping) and data is not None:
            raise ConfigError(self.name, "a group of keys")
        data = dict(data or {})
        out = {}
        for k in self.keys:
            if k.name not in data:
                if k.default is REQUIRED:
                    raise ConfigError(self.key(k.name), "set (it is required)")
                out[k.name] = k.default
            else:
                out[k.name] = k.kind.check(self.key(k.name), data[k.name])
        extra = sorted(set(data) - {k.name for k in self.keys} - set(groups))
        if extra:
            raise ConfigError(self.key(extra[0]), "a known key (unknown key)")
        return out

    def defaults(self) -> dict[str, Any]:
        """The declared defaults in configuration form (required keys left out)."""
        return {k.name: k.kind.show(k.default) for k in self.keys if k.default is not REQUIRED}

    def shown(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` (as :meth:`read` returns them) in configuration form, by dotted key."""
        return {self.key(k.name): k.kind.show(values[k.name]) for k in self.keys}


def defaults_tree(groups: Sequence[Group]) -> dict[str, Any]:
    """Every declared default as one nested mapping: what Hydra composes before the group
    options and the command line's overrides."""
    tree: dict[str, Any] = {}
    for g in groups:
        if g.name:
            tree[g.name] = g.defaults()
        else:
            tree.update(g.defaults())
    return tree


def key_reference(groups: Sequence[Group]) -> str:
    """A Markdown table of every key: default, what it accepts, what it means."""
    rows = ["| key | default | accepts | meaning |", "|---|---|---|---|"]
    for g in groups:
        for k in g.keys:
            text = "(required)" if k.default is REQUIRED else yaml_text(k.kind.show(k.default))
            accepts = k.kind.allowed.replace("|", "/")
            rows.append(f"| `{g.key(k.name)}` | `{text}` | {accepts} | {k.doc} |")
    return "\n".join(rows) + "\n"
