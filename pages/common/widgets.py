"""One widget for one declared `Param`, the same on every page that sets parameters (the Attack lab's
attack parameters, the Train page's defense parameters).

The widget starts blank, its placeholder naming the default, and blank means "the default for this
dataset's image size" (some defaults depend on it: a patch's position, Blend's pattern size). It is not
clamped to the allowed range: a value outside it reaches the config's validation, which names the
field and the range in one clear message, as the CLI does; the help text states the range up front.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from cbd_core.params import Param


def range_text(param: Param) -> str:
    """'allowed 1 to 500', 'one of a, b', or '' when the parameter has no range."""
    if param.choices:
        return f"one of {', '.join(param.choices)}"
    if param.low is None and param.high is None:
        return ""
    return f"allowed {param.low:g} to {param.high:g}"


def number_step(param: Param) -> int | float:
    """1 for whole numbers; else about a hundredth of the allowed range, rounded to a power of ten."""
    if param.kind is int:
        return 1
    span = (param.high or 1.0) - (param.low or 0.0)
    return float(10 ** np.round(np.log10(max(span / 100, 1e-3))))


def number_format(step: int | float) -> str:
    if isinstance(step, int):
        return "%d"
    decimals = max(1, int(-np.floor(np.log10(step))))
    return f"%.{decimals}f"


def param_widget(param: Param, default: Any, key: str, initial: Any = None, label: str | None = None) -> Any:
    """Draw the input for `param` and return what the user chose, or None for "the default".

    `initial` (a value carried over from elsewhere, e.g. the Attack lab's saved choice) fills the widget
    the first time it is drawn in this session; afterwards the widget keeps its own state."""
    label = label or param.name.replace("_", " ")
    help_text = " ".join(filter(None, [param.help[0].upper() + param.help[1:] + ".",
                                       (range_text(param) + ".") if range_text(param) else ""]))
    if param.kind is str and param.choices:
        if key not in st.session_state:
            st.session_state[key] = initial if initial in param.choices else \
                (default if default in param.choices else param.choices[0])
        return st.selectbox(label, list(param.choices), key=key, help=help_text)
    if param.kind is str:
        if key not in st.session_state:
            st.session_state[key] = initial or ""
        return st.text_input(label, key=key, help=help_text, placeholder="default") or None
    if key not in st.session_state:
        st.session_state[key] = None if initial is None else param.kind(initial)
    step = number_step(param)
    return st.number_input(label, value=None, step=step, format=number_format(step), key=key,
                           help=help_text + (" Leave blank for automatic." if default is None else
                                             " Leave blank for the default."),
                           placeholder="automatic" if default is None else f"default {default:g}")


def changed_values(chosen: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The chosen values that are set and differ from the defaults: what a config needs to carry."""
    return {name: value for name, value in chosen.items() if value is not None and value != defaults.get(name)}
