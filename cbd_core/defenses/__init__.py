"""The defense registry: `DEFENSES[name]` is a `Defense`; `get_defense(name)` checks the name."""

from __future__ import annotations

from ..errors import UserInputError
from .abl import ABL
from .base import Defense, DefenseContext, DefenseResult
from .cbd import CBD
from .nonlinearity import NONE
from .undefended import Undefended

DEFENSES: dict[str, Defense] = {d.name: d for d in (Undefended(), CBD(), ABL(), NONE())}


def get_defense(name: str) -> Defense:
    if name not in DEFENSES:
        raise UserInputError(f"defense: unknown '{name}' (choose from {', '.join(DEFENSES)})", "defense")
    return DEFENSES[name]


__all__ = ["DEFENSES", "Defense", "DefenseContext", "DefenseResult", "get_defense"]
