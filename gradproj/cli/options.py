"""Command-line options generated from settings dataclasses (gradproj.core.settings).

``@settings_options(TrainSettings)`` adds one click option per field — its name, default,
choices and help read from the field — and ``settings_from(TrainSettings, kw)`` takes those
values back out of the command's keyword arguments and builds the dataclass (which checks
them). A nested settings field (``ModelSettings.lora``) becomes options with the field's name
as prefix (``--lora-r``). Nothing about a setting is written here.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import MISSING, fields

import click

from gradproj.core.errors import BadInput
from gradproj.core.settings import Settings, field_choices, option_name


def _is_settings(kind) -> bool:
    return isinstance(kind, type) and issubclass(kind, Settings)


def _selected(cls, only, exclude):
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if not f.metadata.get("cli", True) or f.name in exclude:
            continue
        if only is not None and f.name not in only:
            continue
        yield f, hints[f.name]


def _nested_prefix(f, prefix: str) -> str:
    """Options of a nested settings field carry its name (``--lora-r``), unless the field's
    ``option`` is "" (its options stand as they are: ``--nlist``)."""
    sub = f.metadata.get("option")
    return prefix + (f"{f.name}_" if sub is None else sub)


def _default(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def _click_type(kind):
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind if kind in (int, float, str) else str


def _option(f, kind, prefix: str):
    meta = f.metadata
    default = _default(f)
    name = option_name(prefix + (meta.get("option") or f.name))
    param = prefix + f.name
    help_text = meta.get("help", "")
    if kind is bool:
        return click.option(name, param, is_flag=True, default=bool(default), help=help_text)
    if meta.get("multiple"):
        return click.option(name, param, multiple=True, metavar=meta.get("metavar"),
                            help=help_text)
    if meta.get("parse") is not None and isinstance(default, tuple):
        default = ",".join(map(str, default))
    choices = field_choices(f)
    ctype = click.Choice([str(c) for c in choices]) if choices else _click_type(kind)
    return click.option(name, param, type=ctype, default=default,
                        show_default=default is not None, metavar=meta.get("metavar"),
                        help=help_text)


def settings_options(cls: type[Settings], *, prefix: str = "", only=None, exclude=()):
    """Decorator: the click options of ``cls``'s fields (``only``/``exclude`` field names;
    nested settings fields recurse with their name as prefix)."""
    def decorate(fn):
        for f, kind in reversed(list(_selected(cls, only, exclude))):
            if _is_settings(kind):
                fn = settings_options(kind, prefix=_nested_prefix(f, prefix))(fn)
            else:
                fn = _option(f, kind, prefix)(fn)
        return fn
    return decorate


def settings_from(cls: type[Settings], kw: dict, *, prefix: str = "", only=None, exclude=(),
                  **given):
    """Pop ``cls``'s option values out of ``kw`` and build ``cls`` (``given`` fields win)."""
    values = {}
    for f, kind in _selected(cls, only, exclude):
        if f.name in given:
            continue
        if _is_settings(kind):
            values[f.name] = settings_from(kind, kw, prefix=_nested_prefix(f, prefix))
            continue
        key = prefix + f.name
        if key not in kw:
            continue
        value = kw.pop(key)
        parse = f.metadata.get("parse")
        if parse is not None and value is not None and (
                isinstance(value, str) or f.metadata.get("multiple")):
            try:
                value = parse(value)
            except BadInput as err:
                raise BadInput(f"{option_name(key, f)}: {err}") from None
        values[f.name] = value
    try:
        return cls(**values, **given)
    except BadInput as err:
        raise BadInput(_with_prefix(str(err), cls, prefix)) from None


def _with_prefix(message: str, cls, prefix: str) -> str:
    """A nested class's check names its own field (``--r``): name the option (``--lora-r``)."""
    if prefix:
        for f, _ in _selected(cls, None, ()):
            own = option_name(f.name, f)
            if message.startswith(own + " "):
                return option_name(prefix + (f.metadata.get("option") or f.name)) + \
                    message[len(own):]
    return message


def flatten(*decorators):
    """One decorator applying ``decorators`` in order (the first is the outermost option)."""
    def decorate(fn):
        return functools.reduce(lambda acc, d: d(acc), reversed(decorators), fn)
    return decorate
