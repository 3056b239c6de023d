"""The data-and-attack choice the Attack lab hands to the Train page, as one typed object.

The Attack lab saves its last *valid* choice with `AttackSettings.save()`; the Train page starts its form
from `AttackSettings.current()`. A value of another shape in session state (an older version of the app
in a long-lived session) reads as the defaults rather than raising.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import streamlit as st

SESSION_KEY = "attack_settings"


@dataclass(frozen=True)
class AttackSettings:
    dataset: str = "mnist5k"
    attack: str = "badnets"
    poison_rate: float = 0.1  # a fraction of the whole training set, as in RunConfig
    target_label: int = 0
    attack_params: dict[str, Any] = field(default_factory=dict)  # only the values that differ from defaults
    npz_path: str | None = None  # the stored upload, when dataset is "npz"

    @classmethod
    def current(cls) -> "AttackSettings":
        """The Attack lab's last valid choice in this session, or the defaults."""
        saved = st.session_state.get(SESSION_KEY)
        return saved if isinstance(saved, cls) else cls()

    @classmethod
    def was_saved(cls) -> bool:
        """Whether the Attack lab has saved a choice in this session."""
        return isinstance(st.session_state.get(SESSION_KEY), cls)

    def save(self) -> None:
        st.session_state[SESSION_KEY] = self
