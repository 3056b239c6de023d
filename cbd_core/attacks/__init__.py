"""The attack registry: `ATTACKS[name]` is an `Attack`; `get_attack(name)` checks the name.

    >>> data = get_attack("badnets").poison(train, test, poison_rate=0.1, target_label=0, seed=0)
"""

from __future__ import annotations

from ..errors import UserInputError
from .badnets import BadNets
from .base import Attack, Param, PoisonedData, TriggerPreview
from .blend import Blend
from .sig import SIG
from .trojan import Trojan
from .wanet import WaNet

ATTACKS: dict[str, Attack] = {a.name: a for a in (BadNets(), Blend(), Trojan(), SIG(), WaNet())}


def get_attack(name: str) -> Attack:
    if name not in ATTACKS:
        raise UserInputError(f"attack: unknown '{name}' (choose from {', '.join(ATTACKS)})", "attack")
    return ATTACKS[name]


__all__ = ["ATTACKS", "Attack", "Param", "PoisonedData", "TriggerPreview", "get_attack"]
