"""The attack registry: `ATTACKS[name]` is an `Attack`; `get_attack(name)` checks the name. A new
attack is a new module here (see `registry.discover`).

    >>> data = get_attack("badnets").poison(train, test, poison_rate=0.1, target_label=0, seed=0)
"""

from __future__ import annotations

from ..errors import UserInputError
from ..registry import discover
from .base import Attack, AttackPreset, Param, PoisonedData, TriggerPreview

# Every Attack subclass with a name in a module of this package, in menu order (`Attack.menu_order`).
ATTACKS: dict[str, Attack] = discover(__name__, __path__, Attack)


def get_attack(name: str) -> Attack:
    if name not in ATTACKS:
        raise UserInputError(f"attack: unknown '{name}' (choose from {', '.join(ATTACKS)})", "attack")
    return ATTACKS[name]


__all__ = ["ATTACKS", "Attack", "AttackPreset", "Param", "PoisonedData", "TriggerPreview", "get_attack"]
