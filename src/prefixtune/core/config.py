"""The base of every method config: validation errors, JSON round trips, composition.

A method's config says *what* to train; the model's own shape (layers, heads, head size) comes
from the wrapped model and is recorded separately in the saved adapter. Method configs live in
:mod:`prefixtune.methods`, one module per method.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


def init_fields(cls: type) -> list[dataclasses.Field]:
    """The dataclass fields of ``cls`` that its constructor takes."""
    return [f for f in dataclasses.fields(cls) if f.init]


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

    def validate(self) -> None:
        """Cross-field checks of the composed config (sub-configs validate themselves)."""
