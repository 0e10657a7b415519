"""The base of every method config: validation errors, JSON round trips, composition.

A method's config says *what* to train; the model's own shape (layers, heads, head size) comes
from the wrapped model and is recorded separately in the saved adapter. Method configs live in
:mod:`prefixtune.methods`, one module per method.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


def init_fields(cls: type) -> list[dataclasses.Field]:
    """The dataclass fields of ``cls`` that its constructor takes."""
    return [f for f in dataclasses.fields(cls) if f.init]


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its own help text (``metadata["help"]``, which ``--help`` shows):
    ``steps: int = option(300, "optimizer steps")``; ``factory`` for mutable defaults."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help})


@dataclass(frozen=True)
class Option:
    """One option of a config: a constructor keyword (a ``--set`` key for method configs).

    Fields: ``name``; ``type``, the resolved annotation (``int``, ``str | None``,
    ``Literal["mlp", "direct"]``, ``tuple[int, ...]``); ``default``; ``help``; ``part``, the
    sub-config a flat option of a composed config goes to ("" for the config's own fields);
    ``optional_part``: that sub-config is absent unless one of its options is given.
    """

    name: str
    type: Any
    default: Any
    help: str
    part: str = ""
    optional_part: bool = False


def config_options(cls: type) -> dict[str, Option]:
    """The options of dataclass ``cls``: its constructor's fields with type, default and help."""
    hints = typing.get_type_hints(cls)
    return {f.name: Option(f.name, hints[f.name], _default(f), f.metadata.get("help", "")) for f in init_fields(cls)}


def check_range(name: str, value: float, low: float, high: float | None = None, low_open: bool = False,
                hint: str = "") -> None:
    """A ConfigError unless ``value`` is a finite number (an int or a float, not a bool) within
    ``[low, high]`` (``(low, ...`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    below = value <= low if low_open else value < low
    if not math.isfinite(value) or below or (high is not None and value > high):
        bounds = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise ConfigError(f"{name} must be a finite number {bounds}, got {value}" + (f" ({hint})" if hint else ""))


def check_count(name: str, value: int, low: int = 1) -> None:
    """A ConfigError unless ``value`` is an int (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")


def unknown_option(key: str, known: list[str], what: str) -> ConfigError:
    """The error for a key ``what`` does not have, with the closest known key (a typo) and all of them."""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{what} has no option {key!r}{hint}; its options: {', '.join(sorted(known))}")


def type_name(tp: Any) -> str:
    """``int`` -> "an int", ``list[str]`` -> "a list of str", ``Literal["a", "b"]`` -> "one of a, b"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (list, tuple):
        return f"a list of {getattr(args[0], '__name__', args[0])}" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return {bool: "true or false", int: "an int", float: "a float", str: "a string",
            type(None): "none"}.get(tp, f"a {getattr(tp, '__name__', tp)}")


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as read from JSON or YAML) is of type ``tp``; an int fits a float."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args and type(value) in {type(a) for a in args}
    if origin in (list, tuple):
        inner = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_fits(v, inner) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is type(None):
        return value is None
    return isinstance(value, tp) if isinstance(tp, type) else True


def check_type(value: Any, tp: Any, where: str) -> None:
    """Raise a ConfigError naming ``where`` unless ``value`` is of type ``tp`` (see :func:`_fits`)."""
    if _fits(value, tp):
        return
    hint = ""
    if isinstance(value, str) and _fits(1.0, tp) and not _fits("x", tp):
        try:
            float(value)
            hint = " (a number in quotes, or YAML's 1e-3, which it reads as text: write 1.0e-3)"
        except ValueError:
            pass
    raise ConfigError(f"{where} must be {type_name(tp)}, got {value!r}{hint}")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ConfigError(f"missing required option {f.name!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigIO):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


class ConfigIO:
    """JSON round trip for config dataclasses (tuples are stored as lists, sub-configs as objects)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def _own_method(cls) -> str | None:
        return next((f.default for f in dataclasses.fields(cls) if f.name == "method"), None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        if not isinstance(data, dict):
            raise ConfigError(f"a {cls.__name__} must be a mapping of options, got {type(data).__name__}")
        data = dict(data)
        own = cls._own_method()
        method = data.pop("method", own)
        if method != own:
            raise ConfigError(f"not a {cls.__name__} (method={method!r}, expected {own!r})")
        known = set(inspect.signature(cls).parameters) - {"options"}
        extra = sorted(set(data) - known) if "options" not in inspect.signature(cls).parameters else []
        if extra:
            raise ConfigError(f"unknown {cls.__name__} fields {extra}; known fields are {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"{cls.__name__}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def options(cls) -> dict[str, Option]:
        """What the constructor takes, by name: a config's ``--set`` keys."""
        return config_options(cls)


class ComposedConfig(ConfigIO):
    """A config made of sub-configs (a prefix config, a head config, ...).

    ``SUBCONFIGS`` maps a field to its config class; the constructor takes each sub-config as an
    object (or a mapping), or its fields flat, routed by name to the first sub-config that has
    such a field (``ALIASES`` renames: flat name -> (sub-config field, its field name)). The
    config's own fields take precedence over the sub-configs'. ``SUB_DEFAULTS`` holds each
    sub-config's defaults within this method. A sub-config whose field defaults to None is
    optional: it exists when given or when any of its flat fields is.

    Subclasses are ``@dataclass(init=False)`` and define ``validate()`` for cross-field checks.
    """

    SUBCONFIGS: ClassVar[dict[str, type]] = {}
    ALIASES: ClassVar[dict[str, tuple[str, str]]] = {}
    SUB_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, **options: Any) -> None:
        fields = {f.name: f for f in init_fields(type(self))}
        own = {name: f for name, f in fields.items() if name not in self.SUBCONFIGS}
        routed: dict[str, dict[str, Any]] = {name: {} for name in self.SUBCONFIGS}
        for key, value in options.items():
            if key in fields:
                continue
            target = self.ALIASES.get(key) or next(
                ((name, key) for name, sub in self.SUBCONFIGS.items() if key in {f.name for f in init_fields(sub)}), None)
            if target is None:
                known = sorted([*own, *self.SUBCONFIGS, *self.ALIASES,
                                *(f.name for sub in self.SUBCONFIGS.values() for f in init_fields(sub))])
                raise ConfigError(f"unknown {type(self).__name__} option {key!r}; known options are {known}")
            if value is not None:  # None means "the default"
                routed[target[0]][target[1]] = value
        for name, f in own.items():
            setattr(self, name, options[name] if name in options else _default(f))
        for name, sub_cls in self.SUBCONFIGS.items():
            setattr(self, name, self._sub(name, sub_cls, options.get(name), routed[name], fields[name]))
        if "method" in {f.name for f in dataclasses.fields(self)}:
            self.method = self._own_method()
        self.validate()

    def _sub(self, name: str, sub_cls: type, given: Any, flat: dict[str, Any], f: dataclasses.Field) -> Any:
        if isinstance(given, dict):
            given = sub_cls.from_dict(given)
        if given is not None and not isinstance(given, sub_cls):
            raise ConfigError(f"{type(self).__name__}.{name} must be a {sub_cls.__name__}, got {type(given).__name__}")
        if flat:
            if given is not None:
                raise ConfigError(f"give {type(self).__name__} either {name}= or its fields {sorted(flat)}, not both")
            return sub_cls(**{**self.SUB_DEFAULTS.get(name, {}), **flat})
        if given is None and _default(f) is None:
            return None  # an optional part that is absent
        return given if given is not None else sub_cls(**self.SUB_DEFAULTS.get(name, {}))

    @classmethod
    def options(cls) -> dict[str, Option]:
        """The flat options, routed as the constructor routes them: the config's own fields, then
        ``ALIASES``, then each sub-config's fields (the first sub-config that has a name takes it),
        with this method's ``SUB_DEFAULTS``. A flat option may be None: the sub-config's default."""
        fields = {f.name: f for f in init_fields(cls)}
        out = {name: opt for name, opt in config_options(cls).items() if name not in cls.SUBCONFIGS}

        def routed(part: str, name: str, key: str) -> Option:
            opt = cls.SUBCONFIGS[part].options()[key]
            default = cls.SUB_DEFAULTS.get(part, {}).get(key, opt.default)
            return Option(name, opt.type | None, default, opt.help, part, _default(fields[part]) is None)

        for name, (part, key) in cls.ALIASES.items():
            out.setdefault(name, routed(part, name, key))
        for part, sub_cls in cls.SUBCONFIGS.items():
            for key in sub_cls.options():
                if key not in out:
                    out[key] = routed(part, key, key)
        rank = {"": 0, **{part: i + 1 for i, part in enumerate(cls.SUBCONFIGS)}}  # listed: own, then each part
        return dict(sorted(out.items(), key=lambda item: (rank[item[1].part], item[0] in cls.ALIASES)))

    def validate(self) -> None:
        """Cross-field checks of the composed config (sub-configs validate themselves)."""
