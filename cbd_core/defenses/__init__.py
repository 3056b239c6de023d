"""The defense registry: `DEFENSES[name]` is a `Defense`; `get_defense(name)` checks the name. A new
defense is a new module here (see `registry.discover`)."""

from __future__ import annotations

from ..errors import UserInputError
from ..registry import discover
from .base import Defense, DefenseContext, DefenseResult, ModelView, SampleView

# Every Defense subclass with a name in a module of this package, in menu order (`Defense.menu_order`).
DEFENSES: dict[str, Defense] = discover(__name__, __path__, Defense)


def get_defense(name: str) -> Defense:
    if name not in DEFENSES:
        raise UserInputError(f"defense: unknown '{name}' (choose from {', '.join(DEFENSES)})", "defense")
    return DEFENSES[name]


def defense_or_none(name: str | None) -> Defense | None:
    """The registered defense called `name`, or None (a hand-edited or future run's config)."""
    return DEFENSES.get(name or "")


def model_order(defense: str | None, names) -> list[str]:
    """A run's model names in the order every page, map and report shows them: the order its defense
    declares (`Defense.model_names`), by name for a defense this version does not know. The one place
    that decides it."""
    registered = defense_or_none(defense)
    return registered.model_order(names) if registered else sorted(names)


__all__ = ["DEFENSES", "Defense", "DefenseContext", "DefenseResult", "ModelView", "SampleView", "get_defense",
           "defense_or_none", "model_order"]
