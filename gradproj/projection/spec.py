"""What determines a projection matrix R: the projector spec and the parameter layout.

A gradient is the concatenation, in *layout* order, of named parameter pieces: the layout is an
ordered tuple of ``(name, numel)`` and ``P = Σ numel``. A :class:`ProjectorSpec` (kind, k, seed,
sjlt_s, dtype, version, and the sha256 of the layout) together with the layout fixes R; the
spec is stored beside the projected gradients so that a store can be queried with the same R.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from gradproj.core.errors import GradprojError
from gradproj.projection.counter_hash import MAX_K, MAX_NUMEL

PROJECTION_VERSION = 1
KINDS = ("rademacher", "gaussian", "sjlt", "trak-basic", "trak-cuda")
HASH_KINDS = ("rademacher", "gaussian", "sjlt")
DTYPES = {"float32": torch.float32, "float64": torch.float64,
          "bfloat16": torch.bfloat16, "float16": torch.float16}
Layout = Sequence[tuple[str, int]]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise GradprojError(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_layout(layout: Layout) -> tuple[tuple[str, int], ...]:
    """The layout as a tuple of ``(name, numel)``; raises GradprojError on an empty layout, a
    repeated or empty name, or a numel outside [1, 2³²]."""
    out: dict[str, int] = {}
    for item in layout:
        _require(isinstance(item, (tuple, list)) and len(item) == 2,
                 f"layout entries must be (name, numel) pairs, got {item!r}")
        name, numel = item
        _require(isinstance(name, str) and name != "", f"bad layout name {name!r}")
        _require(_is_int(numel) and 1 <= numel <= MAX_NUMEL,
                 f"parameter '{name}' has numel {numel!r}; expected an int in [1, 2^32]")
        _require(name not in out, f"parameter '{name}' appears twice in the layout")
        out[name] = numel
    _require(bool(out), "the parameter layout is empty")
    return tuple(out.items())


def layout_hash(layout: Layout) -> str:
    """sha256 (hex) of the JSON list ``[[name, numel], ...]`` in layout order."""
    text = json.dumps([list(p) for p in check_layout(layout)], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ProjectorSpec:
    """Everything that determines R (with the layout); stored beside the projected gradients."""

    kind: str
    k: int
    seed: int = 0
    layout_hash: str = ""
    sjlt_s: int = 4
    dtype: str = "float32"
    version: int = PROJECTION_VERSION

    def __post_init__(self) -> None:
        _require(self.kind in KINDS, f"unknown projection kind '{self.kind}' "
                                     f"(expected one of {', '.join(KINDS)})")
        _require(_is_int(self.k) and 1 <= self.k <= MAX_K,
                 f"projection dimension k must be an int in [1, {MAX_K}], got {self.k!r}")
        _require(_is_int(self.seed), f"projection seed must be an int, got {self.seed!r}")
        _require(_is_int(self.sjlt_s) and self.sjlt_s >= 1,
                 f"sjlt_s must be an int >= 1, got {self.sjlt_s!r}")
        _require(self.dtype in DTYPES, f"unknown projection dtype '{self.dtype}' "
                                       f"(expected one of {', '.join(DTYPES)})")
        _require(isinstance(self.layout_hash, str) and _is_int(self.version),
                 "projector spec has a malformed layout_hash or version")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProjectorSpec:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        _require(not unknown, f"projector spec has unknown field(s): {', '.join(unknown)}")
        missing = [n for n in ("kind", "k") if n not in d]
        _require(not missing, f"projector spec lacks field(s): {', '.join(missing)}")
        return cls(**dict(d))

    def diff(self, other: ProjectorSpec) -> list[str]:
        """Names of the fields whose values differ, in declaration order."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]
