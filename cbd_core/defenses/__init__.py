"""The defense registry: `DEFENSES[name]` is a `Defense`; `get_defense(name)` checks the name."""

from __future__ import annotations

from ..errors import UserInputError
from .abl import ABL
from .base import Defense, DefenseContext, DefenseResult, ModelView
from .cbd import CBD
from .nonlinearity import NONE
from .undefended import Undefended

DEFENSES: dict[str, Defense] = {d.name: d for d in (Undefended(), CBD(), ABL(), NONE())}


def get_defense(name: str) -> Defense:
    if name not in DEFENSES:
        raise UserInputError(f"defense: unknown '{name}' (choose from {', '.join(DEFENSES)})", "defense")
    return DEFENSES[name]


def defense_or_none(name: str | None) -> Defense | None:
    """The registered defense called `name`, or None (a hand-edited or future run's config)."""
    return DEFENSES.get(name or "")


__all__ = ["DEFENSES", "Defense", "DefenseContext", "DefenseResult", "ModelView", "get_defense", "defense_or_none"]
