"""One settings tree: every setting is a dataclass field declared once, with its help and check.

A field made with :func:`setting` carries, in its metadata, everything the command line needs:
the help text, the allowed choices, a check and how to parse a command-line string. The CLI
(``gradproj.cli.options``) generates its options from these fields, so a default, a choice
list or a help text exists in exactly one place. Settings objects validate themselves once, at
construction (``__post_init__``); the code below them never re-checks.

    @dataclass(frozen=True)
    class StoreSettings(Settings):
        proj_dim: int = setting(8192, "k, the projected dimension.", check=at_least_one)

Every settings object serialises to JSON (``to_dict``) and back (``from_dict``), so a run's
settings are written beside its outputs and can be read again.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from gradproj.core.errors import BadInput

Check = tuple[Callable[[Any], bool], str]


def setting(default: Any = MISSING, help: str = "", *, choices: tuple | Callable | None = None,
            check: Check | None = None, parse: Callable[[str], Any] | None = None,
            metavar: str | None = None, cli: bool = True, multiple: bool = False,
            option: str | None = None,
            default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with the metadata the CLI and the checks read.

    ``choices``: allowed values (or a callable giving them); ``check``: (predicate, message) run on the value;
    ``parse``: turns one command-line string into the value (for tuples, bands, maps);
    ``multiple``: a repeatable option whose strings are given to ``parse`` as a tuple;
    ``option``: the command-line name when it is not the field's (``kind`` → ``index``);
    ``cli=False``: set from Python only.
    """
    meta = {"help": help, "choices": choices, "check": check, "parse": parse,
            "metavar": metavar, "cli": cli, "multiple": multiple, "option": option}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def field_choices(f) -> tuple | None:
    """A field's allowed values; ``choices`` may be a callable read when asked (a registry
    that grows, such as the objectives)."""
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def option_name(name: str, f=None) -> str:
    """The command-line spelling of a field: ``max_length`` → ``--max-length``."""
    if f is not None and f.metadata.get("option"):
        name = f.metadata["option"]
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Settings:
    """Base of every settings dataclass: checks fields at construction, round-trips JSON."""

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            choices = field_choices(f)
            if choices is not None and value not in choices:
                raise BadInput(f"{option_name(f.name, f)} must be one of "
                               f"{', '.join(map(str, choices))}, got {value!r}")
            check = f.metadata.get("check")
            if check is not None and value is not None and not check[0](value):
                raise BadInput(f"{option_name(f.name, f)} {check[1]}, got {value!r}")

    def to_dict(self) -> dict:
        """Plain JSON-ready values (tuples become lists, nested settings become dicts)."""
        return json_ready(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict):
        """The inverse of ``to_dict``; unknown keys are refused, missing ones take defaults."""
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise BadInput(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}")
        kwargs = {}
        for name, value in data.items():
            kind = hints.get(name)
            if isinstance(kind, type) and issubclass(kind, Settings) and isinstance(value, dict):
                value = kind.from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)


def json_ready(value):
    """Tuples → lists, recursively, so that a settings dict compares equal after a JSON trip."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


# Checks and parsers shared by many settings.
positive: Check = (lambda v: v > 0, "must be > 0")
at_least_one: Check = (lambda v: v >= 1, "must be >= 1")
non_negative: Check = (lambda v: v >= 0, "must be >= 0")
fraction: Check = (lambda v: 0 < v <= 1, "must be in (0, 1]")
unit_interval: Check = (lambda v: 0 <= v < 1, "must be in [0, 1)")
band: Check = (lambda v: len(v) == 2 and 0 <= v[0] < v[1] <= 1,
               "must be two quantiles LOW,HIGH with 0 <= LOW < HIGH <= 1")


def parse_floats(text: str) -> tuple[float, ...]:
    """``"0.2,0.84"`` → ``(0.2, 0.84)``."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise BadInput(f"expected comma-separated numbers, got {text!r}") from None


def parse_names(text: str) -> tuple[str, ...]:
    """``"q_proj, v_proj"`` → ``("q_proj", "v_proj")``."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def parse_assignments(items: tuple[str, ...]) -> dict[str, float]:
    """``("delta=1.0", "gamma=0.5")`` → ``{"delta": 1.0, "gamma": 0.5}``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise BadInput(f"expected NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise BadInput(f"{name.strip()}: expected a number, got {value!r}") from None
    return out
