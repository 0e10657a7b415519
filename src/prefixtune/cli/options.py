"""Command-line options generated from the typed configs.

Flags (``--batch-size 8``, ``--gate false``) come from a config's fields through transformers'
:class:`~transformers.HfArgumentParser`: each field's ``metadata["help"]``, its default, the
choices of a ``Literal`` type, ``true``/``false`` for booleans, ``--a-b`` and ``--a_b`` spellings.
A flag that is not given is absent from the parsed namespace (its default is
``argparse.SUPPRESS``), so a config file's value is overridden only by flags actually given.

``--set KEY=VALUE`` takes a method's options (:meth:`ConfigIO.options`): the key must be one of
the chosen method's, and the value is read as that option's type: ``true``/``false`` (also
``yes``/``no``, ``1``/``0``), ints, floats, ``none`` for None where the option may be None, one
of the choices for a fixed set, and lists as ``[0,1]`` or ``0,1`` (items split on commas; ``[]``
is the empty list). Text options take the text as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import textwrap
import types
import typing
from typing import Any, Literal, Union

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from prefixtune.core.config import ConfigError, Option, type_name, unknown_option


class UsageError(Exception):
    """A command line that does not parse; ``prefixtune`` prints it as one line and exits with 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are raised (as :class:`UsageError`) instead of printed with
    the usage, so that every bad input ends the same way: one ``prefixtune: error: ...`` line."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default and keeps the line breaks of descriptions and epilogs."""


def bounded(cast: type, low: float, *, name: str, high: float | None = None) -> Any:
    """An argparse type: ``cast(text)``, finite, ``>= low`` and (if given) ``<= high``; anything
    else is refused naming the value and the bounds (``--limit 0`` must not silently score
    nothing, nor ``--temperature nan`` silently decode greedily)."""
    bounds = f">= {low:g}" + (f" and <= {high:g}" if high is not None else "")

    def convert(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected a finite {name} {bounds}, got {text!r}")
        return value

    convert.__name__ = name
    return convert


def _or_none(cast: type) -> Any:
    """``cast``, or None for ``none``/``null``: the flag type of an ``X | None`` field."""

    def convert(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null") else cast(text)

    convert.__name__ = cast.__name__  # argparse names the type in its error: "invalid int value"
    return convert


def _members(tp: Any) -> tuple[Any, ...]:
    """The types a union holds without None (``(tp,)`` for anything else)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)


def _unwrap(tp: Any) -> Any:
    """``X`` for ``X | None``; any other type as it is."""
    members = _members(tp)
    return members[0] if len(members) == 1 else tp


def _flag_type(opt: Option) -> tuple[Any, dict[str, Any]]:
    """The field type HfArgumentParser gets for ``opt`` (and extra ``add_argument`` keywords):
    tuples become lists (``nargs="+"``), lists of choices lists of text with those choices, and
    ``int | None`` (``float``, ``str``) a converter that also takes ``none``; a union with ``bool``
    (``bool | Literal["auto"]``) is also a flag alone, which means true."""
    tp = _unwrap(opt.type)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        if typing.get_origin(args[0]) is Literal:
            return list[str], {"choices": list(typing.get_args(args[0]))}
        return list[args[0]], {}
    if tp in (int, float, str) and tp is not opt.type:
        return _or_none(tp), {}
    if len(_members(opt.type)) > 1:  # e.g. float | Literal["auto"]: --lr 1e-3 or --lr auto
        alone = {"nargs": "?", "const": True} if bool in _members(opt.type) else {}  # --bf16 = --bf16 true
        return _union_of(opt), alone
    return tp, {}


def _union_of(opt: Option) -> Any:
    """The flag type of a field that is one of several types: the text read as the first that fits."""

    def convert(text: str) -> Any:
        try:
            return parse_text(text, opt.type, f"--{opt.name.replace('_', '-')}")
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = type_name(opt.type)
    return convert


def show(value: Any) -> str:
    """A value as the command line writes it: ``[0,1]``, ``none``-free text, ``'\\n'`` quoted."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, str) and (not value or not value.isprintable() or value != value.strip()):
        return repr(value)
    return str(value)


def _help(opt: Option, text: str | None = None) -> str:
    return f"{text or opt.help} (default: {show(opt.default)})".replace("%", "%%")


def flags_parser(options: dict[str, Option], helps: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """A parent parser with one flag per option, generated by HfArgumentParser from a dataclass of
    the options (``helps`` replaces an option's help). Flags not given stay out of the namespace."""
    helps = helps or {}
    fields = []
    for opt in options.values():
        tp, extra = _flag_type(opt)
        metadata = {"help": _help(opt, helps.get(opt.name)), "default": argparse.SUPPRESS, **extra}
        fields.append((opt.name, tp, dataclasses.field(default=argparse.SUPPRESS, metadata=metadata)))
    parser = HfArgumentParser(dataclasses.make_dataclass("Flags", fields), add_help=False)
    for action in parser._actions:  # --batch-size first (usage, docs), --batch_size still accepted
        action.option_strings.sort(key=lambda s: "_" in s)
    return parser


# ------------------------------------------------------------------------------------ --set KEY=VALUE


def parse_text(text: str, tp: Any, where: str) -> Any:
    """``text`` read as a value of type ``tp`` (see the module docstring); a ConfigError naming
    ``where`` when it is not one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        for member in _members(tp):
            try:
                return parse_text(text, member, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {type_name(tp)}, got {text!r}")
    if origin is Literal:
        for choice in args:
            if str(choice) == text.strip():
                return choice
        raise ConfigError(f"{where}: expected {type_name(tp)}, got {text!r}")
    if origin in (list, tuple):
        inner = text.strip()
        if inner.startswith("[") and inner.endswith("]"):
            inner = inner[1:-1]
        items = [item.strip() for item in inner.split(",")] if inner.strip() else []
        items = [i[1:-1] if len(i) > 1 and i[0] == i[-1] and i[0] in "'\"" else i for i in items]
        return [parse_text(item, args[0], where) for item in items]
    try:
        if tp is bool:
            return string_to_bool(text.strip())
        if tp in (int, float):
            return tp(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise ConfigError(f"{where}: expected {type_name(tp)}, got {text!r}") from None
    if tp in (str, Any):
        return text
    raise ConfigError(f"{where}: {type_name(tp)} cannot be given on the command line; use a --config file")


def parse_set(items: list[str], options: dict[str, Option], what: str) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` as typed values of ``options`` (``what`` names their owner in errors,
    e.g. "method prefix")."""
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in options:
            raise unknown_option(key, list(options), f"--set {key}: {what}")
        values[key] = parse_text(text, options[key].type, f"--set {key}")
    return values


def _metavar(tp: Any) -> str:
    tp = _unwrap(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "{" + ",".join(map(str, args)) + "}"
    if origin in (list, tuple):
        return f"[{_metavar(args[0])},...]"
    return {bool: "{true,false}", int: "INT", float: "FLOAT", str: "TEXT"}.get(tp, "VALUE")


def describe_options(options: dict[str, Option], heading: str) -> str:
    """The options as ``KEY=TYPE  help (default: ...)`` lines under ``heading``, grouped by the
    sub-config they go to (an epilog for ``--help``)."""
    width = max(60, min(shutil.get_terminal_size().columns, 120) - 2)
    lines = textwrap.wrap(heading, width) + textwrap.wrap(
        "Values: true/false, none for None, lists as [0,1] or 0,1; text is taken as it is.", width)
    part = ""
    for opt in options.values():
        if opt.part != part:
            part = opt.part
            adds = f" (any of them adds the {part})" if opt.optional_part else ""
            lines.append(f"{part} options{adds}:")
        key = f"  {opt.name}={_metavar(opt.type)}"
        text = textwrap.wrap(_help(opt).replace("%%", "%"), width - 32)
        if len(key) > 30:
            lines += [key] + [" " * 32 + t for t in text]
        else:
            lines += [key.ljust(32) + text[0]] + [" " * 32 + t for t in text[1:]]
    return "\n".join(lines)
