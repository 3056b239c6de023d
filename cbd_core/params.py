"""Typed, range-checked parameters for attacks and defenses, validated once at the edge.

Each owner (an attack or a defense) declares its parameters as `Param`s; `resolve_params` merges a
user's overrides into the defaults and turns any bad value into one `UserInputError` that names
the field (`badnets.size`, `cbd.lr`) and its allowed range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UserInputError


@dataclass(frozen=True)
class Param:
    """One parameter of an attack or a defense: its name, type and allowed range (its default comes from
    the owner's `defaults(image_shape)`, which may depend on the image's size)."""

    name: str
    kind: type  # int, float or str
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    # A path the user gives by uploading a file of one of these types (pages show an uploader for it).
    upload: tuple[str, ...] | None = None
    # What a run that predates this parameter did, as a value of it (None: not known, or the same as
    # today's default): how a grid labels an older run's config that does not name the parameter.
    before: Any = None

    def check(self, value: Any, attack: str) -> Any:
        label = f"{attack}.{self.name}"
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                allowed = f" (choose from {', '.join(self.choices)})" if self.choices else ""
                raise UserInputError(f"{label}: invalid value {value!r}{allowed}", label)
            return value
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            raise UserInputError(f"{label}: expected a number, got {value!r}", label) from None
        if self.kind is int and float(value) != number:
            raise UserInputError(f"{label}: expected a whole number, got {value!r}", label)
        if not np.isfinite(number) or (self.low is not None and number < self.low) or \
                (self.high is not None and number > self.high):
            raise UserInputError(f"{label}: {value!r} is outside [{self.low}, {self.high}]", label)
        return number


def resolve_params(owner: str, declared: tuple[Param, ...], defaults: dict[str, Any],
                   overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`defaults` updated by `overrides`; unknown names and out-of-range values raise UserInputError."""
    known = {p.name: p for p in declared}
    values = dict(defaults)
    for key, value in (overrides or {}).items():
        if key not in known:
            raise UserInputError(f"{owner}: unknown parameter '{key}' (known: {', '.join(known) or 'none'})",
                                 f"{owner}.{key}")
        values[key] = value
    return {k: (known[k].check(v, owner) if k in known and v is not None else v) for k, v in values.items()}
